"""Soak over HTTP (issue 7, item 3): mixed traffic against a real uvicorn server for a
fixed time, with its Redis stopped and started again twice during the run.

The server (``tests/soak_app.py``: Starlette, SessionMiddleware, RedisBackend with short
timeouts) runs in a uvicorn process of its own, one worker, access log off, on a free
loopback port, over a private ``redis-server``. Tens of virtual browsers, each with its
own HTTP connection, cookie (kept by hand) and secrets, log in (rotate + bind_user), read,
write their own counter, log out and make untouched requests; a few cookieless visitors
only read. Twice during the run the test stops Redis (SIGTERM: it keeps nothing on disk,
so every session is lost), waits :data:`OUTAGE_SECONDS` and starts it again on the same
port. Nothing restarts the app server.

What every response must be, checked as it arrives:

- outside the outage windows (from the stop to :data:`RECOVERY_SECONDS` after the start):
  a 200 showing only its own browser's data: the session it holds, or an empty one when
  a restart since its login lost its session (anonymous, never someone else's);
- inside them, also the configured fail mode: fail-closed, the generic 503 (body
  ``Service Unavailable``, ``Retry-After: 1``, no Set-Cookie); fail-open, a 200 with an
  empty session that is not saved (no Set-Cookie);
- never a 500 or any other status, a traceback, a transport error, a request over
  :data:`REQUEST_BOUND` seconds, or another browser's user or secret; a cookieless read
  is a 200 even while Redis is down (it needs no Redis at all).

After each start a probe browser must log in and read its own data back within
:data:`RECOVERY_SECONDS`. Resources, sampled with the traffic paused (no request in
flight) after the warm-up, after the first recovery and at the end: the server's RSS
(``/proc/<pid>/status``), its file descriptors split into sockets to Redis, sockets from
clients and everything else (``/proc/<pid>/fd`` matched to ``/proc/net/tcp``), Redis's
``connected_clients``, and the server's gc-tracked objects and asyncio tasks. The
tolerances, and why, are at :data:`RSS_TOLERANCE_KIB` and below. At the end Redis must
hold exactly the sessions the browsers hold (none missing, none that no cookie leads
to), and the server's log no traceback, no asyncio complaint and no cookie value.

The run lasts ``ASGI_SESSIONS_SOAK_SECONDS`` (default :data:`DEFAULT_SECONDS`) per mode;
a long soak is the same test run by hand with a larger value, e.g.
``ASGI_SESSIONS_SOAK_SECONDS=240``. Figures are printed at the end of the pytest run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.cookiejar
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest

from asgi_sessions.backends._tokens import token_id
from tests.figures import report
from tests.redis_servers import RedisServer, _die_with_this_process
from tests.soak_app import FAIL_OPEN_ENV, MAX_CONNECTIONS, OPERATION_TIMEOUT, REDIS_ENV

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform != "linux", reason="reads the server's resources in /proc"),
]

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
COOKIE = "session"
PREFIX = "asgi_sessions:"  # the backend's default key prefix

SECONDS_ENV = "ASGI_SESSIONS_SOAK_SECONDS"
DEFAULT_SECONDS = 24.0
MIN_SECONDS = 20.0
SECONDS = float(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS))
WARMUP_SECONDS = min(5.0, SECONDS / 6)
OUTAGES_AT = (0.25, 0.6)  # when Redis is stopped, as fractions of the run
OUTAGE_SECONDS = 3.0  # Redis down for this long each time
# Every request sent later than this after Redis is back must be a normal 200, and a
# probe must log in and read back within it.
RECOVERY_SECONDS = 3.0
# No request may take longer, outage or not: a load, a commit and a bind each have an
# operation budget of OPERATION_TIMEOUT, plus slack for a loaded two-core machine.
REQUEST_BOUND = 3 * OPERATION_TIMEOUT + 2.0

MEMBERS = 24  # browsers that log in, read, write and log out
VISITORS = 4  # cookieless browsers that only read
THINK = (0.02, 0.1)  # seconds a browser waits between two requests

# Tolerances for the resource checks, end of the run against the warm-up.
# RSS: the package's caches are full after the warm-up (tests/soak_app.py bounds them at
# 256 entries), so what may still grow is CPython's and the allocator's slack: free
# lists, pymalloc arenas kept after the outages' bursts of exceptions, fragmentation.
# Measured here: +0.1 to +0.3 MiB in the CI run, +0.7 MiB over 240 s and 90,000
# requests, most of it by the first outage. 4 MiB is several times that; a leak of
# 1 KiB per request that no gc count sees (bytes, str) passes it within about 4,000
# requests, half the CI run's.
RSS_TOLERANCE_KIB = 4 * 1024
# gc-tracked objects, counted after a full collection. The bounded caches empty and
# refill (by an eighth, or all at once), so a few hundred of their entries come and go
# between two samples (the parsed-cookie cache alone holds up to 256 tracked objects);
# measured: -40 to +650. A leak of one object per request, or per failed request, shows up
# as thousands.
OBJECTS_TOLERANCE = 1500
TASKS_TOLERANCE = 0  # with nothing in flight, the same tasks as after the warm-up
# File descriptors other than sockets to Redis or from clients (the loop's selector, its
# self-pipe, the listening socket, stdio): these do not change at all.
OTHER_FDS_TOLERANCE = 0
# Sockets to Redis are bounded by the pool (MAX_CONNECTIONS), whatever the outages left;
# sockets from clients by the browsers' connections (one each, keep-alive) plus the
# probe's and the sampler's.


# -- the server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class AppServer:
    """``python -m uvicorn --factory tests.soak_app:create_app`` in a process of its own,
    on a free loopback port, importing this checkout's code. Ended by its PID."""

    def __init__(self, directory: Path, redis_url: str, *, fail_open: bool) -> None:
        self.directory = directory
        self.redis_url = redis_url
        self.fail_open = fail_open
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "uvicorn.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(nothing)"

    def start(self, timeout: float = 30.0) -> None:
        for _ in range(5):
            self.port = free_port()
            self._launch()
            if self._wait_ready(timeout):
                return
        raise RuntimeError(f"uvicorn found no free port; log:\n{self.log_tail()}")

    def _launch(self) -> None:
        env = dict(os.environ)
        env[REDIS_ENV] = self.redis_url
        env[FAIL_OPEN_ENV] = "1" if self.fail_open else "0"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        argv = [
            sys.executable, "-m", "uvicorn", "--factory", "tests.soak_app:create_app",
            "--host", HOST, "--port", str(self.port), "--workers", "1",
            "--lifespan", "on", "--no-access-log", "--log-level", "warning",
            # Longer than any pause of the traffic, so no keep-alive connection is closed
            # by the server just as a browser reuses it.
            "--timeout-keep-alive", "120",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_this_process(),
            )

    def _wait_ready(self, timeout: float) -> bool:
        """True once the server answers; False when its port was taken meanwhile."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                if "address already in use" in self.log_text().lower():
                    return False
                raise RuntimeError(f"uvicorn exited with status {code}; log:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as sock:
                    sock.sendall(b"GET /untouched HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return True
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not answer in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout``; the exit status (None if never started)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> AppServer:
        try:
            self.start()
        except BaseException:
            self.stop()  # a server that started but never answered, or a Ctrl-C
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- resources ------------------------------------------------------------------------


@dataclass
class Sample:
    at: str
    rss_kib: int
    fds: int
    redis_sockets: int
    client_sockets: int
    other_fds: int
    redis_clients: int
    objects: int
    tasks: int
    types: dict[str, int] = field(default_factory=dict, repr=False)


def _tcp_table() -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state) for every TCP socket here."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as file:
            next(file)
            for line in file:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                table[inode] = (
                    int(local.rsplit(":", 1)[1], 16),
                    int(remote.rsplit(":", 1)[1], 16),
                    state,
                )
    return table


def fd_counts(pid: int, app_port: int, redis_port: int) -> tuple[int, int, int, int]:
    """(all fds, sockets to Redis, sockets from clients, the rest) of process ``pid``."""
    table = _tcp_table()
    total = to_redis = from_clients = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # closed while we looked
        total += 1
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match is None or match[1] not in table:
            continue
        local, remote, state = table[match[1]]
        if remote == redis_port:
            to_redis += 1
        elif local == app_port and state != "0A":  # 0A: the listening socket
            from_clients += 1
    return total, to_redis, from_clients, total - to_redis - from_clients


def stored_sessions(redis: RedisServer) -> tuple[set[str], int, int]:
    """The IDs of the live sessions in Redis, the number of grace aliases, and the
    number of per-user indexes (a SCAN, bounded: the soak stores a few hundred keys)."""
    live, aliases, indexes = set(), 0, 0
    cursor = "0"
    for _ in range(10_000):
        cursor, keys = redis.command("SCAN", cursor, "COUNT", 1000)
        for key in keys:
            kind, _, rest = key.removeprefix(PREFIX).partition(":")
            if kind == "u":
                indexes += 1
            elif kind == "s":
                # One command: a grace alias may expire between two.
                meta, alias = redis.command("HMGET", key, "m", "a")
                if alias is not None:
                    aliases += 1
                elif meta is not None:
                    live.add(rest)
        if cursor == "0":
            return live, aliases, indexes
    raise RuntimeError("SCAN did not finish")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- the browsers ---------------------------------------------------------------------


@dataclass
class Window:
    """From the moment Redis is stopped to RECOVERY_SECONDS after it answers again."""

    start: float
    down: float = float("inf")  # the server process has exited
    up: float = float("inf")  # the new one answers
    end: float = float("inf")


@dataclass
class Run:
    """What the browsers share: the outage windows, how many stops of Redis have begun
    and ended, the figures and the problems found.

    A session stored by a request sent when ``stopped`` was k lives in a Redis that is
    gone once ``stops`` exceeds k (a request sent while a stop is under way may still
    have reached the old server)."""

    fail_open: bool
    started: float
    deadline: float
    stops: int = 0  # stops of Redis begun
    stopped: int = 0  # stops of Redis completed
    windows: list[Window] = field(default_factory=list)
    resume: asyncio.Event = field(default_factory=asyncio.Event)  # clear: browsers wait
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set: nothing in flight
    in_flight: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)  # problems found, by kind
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    outage_latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)  # every cookie value handed out
    secrets: dict[str, str] = field(default_factory=dict)  # every secret -> its browser
    # Per outage: the latest fail-mode answer after Redis was back, in seconds after.
    last_failure: dict[int, float] = field(default_factory=dict)

    def problem(self, kind: str, text: str, browser: Browser) -> None:
        self.kinds[kind] += 1
        if len(self.problems) < 30:
            history = "\n    ".join(browser.history)
            self.problems.append(f"{kind}: {text}\n  its last requests:\n    {history}")

    def window_of(self, sent: float, received: float) -> int | None:
        for index, window in enumerate(self.windows):
            if sent < window.end and received > window.start:
                return index
        return None


@dataclass
class Exchange:
    """One request of a browser and when it happened."""

    op: str
    params: dict[str, str]
    token: str | None  # the cookie sent
    stopped: int  # Run.stopped when it was sent
    sent: float
    received: float = 0.0
    window: int | None = None  # the outage window it overlaps
    down: bool = False  # sent after Redis had exited, answered before it was back
    where: str = ""

    @property
    def needs_store(self) -> bool:
        """Whether the middleware must reach Redis for it: it carries a cookie (the
        load), or it saves a new session."""
        return self.token is not None or self.op in ("login", "write")


def session_cookies(response: httpx.Response) -> list[str]:
    return [v for v in response.headers.get_list("set-cookie") if v.startswith(f"{COOKIE}=")]


class Browser:
    """One virtual browser: its own connection, its own cookie (kept by hand: the
    client's jar accepts nothing), its own user name and a new secret per login."""

    def __init__(self, run: Run, base_url: str, name: str, *, visitor: bool = False) -> None:
        self.run = run
        self.name = name
        self.visitor = visitor
        self.rng = random.Random(name)
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(2 * REQUEST_BOUND),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            cookies=http.cookiejar.CookieJar(
                policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
            ),
            trust_env=False,
        )
        self.token: str | None = None  # the cookie this browser sends
        # What the server holds for that cookie as far as this browser knows (None:
        # nothing), and Run.stopped when the request that stored it was sent.
        self.expected: dict[str, Any] | None = None
        self.stored_in = 0
        self.counter = 0
        self.history: collections.deque[str] = collections.deque(maxlen=8)

    async def aclose(self) -> None:
        await self.client.aclose()

    def pick(self) -> str:
        roll = self.rng.random()
        if self.visitor:
            return "read" if roll < 0.6 else "untouched"
        if self.expected is None or "user" not in self.expected:
            choices = (("login", 0.7), ("read", 0.85), ("write", 0.95))
        else:
            choices = (("read", 0.5), ("write", 0.78), ("untouched", 0.88), ("logout", 0.95))
            choices += (("login", 1.0),)
        return next((op for op, upto in choices if roll < upto), "untouched")

    async def loop(self) -> None:
        run = self.run
        while time.monotonic() < run.deadline:
            await run.resume.wait()
            if time.monotonic() >= run.deadline:
                break
            await self.step(self.pick())
            await asyncio.sleep(self.rng.uniform(*THINK))

    async def step(self, op: str) -> httpx.Response | None:
        """One request of kind ``op``, checked against everything this browser knows."""
        run = self.run
        params: dict[str, str] = {}
        if op == "login":
            secret = f"{self.name}-{secrets.token_hex(8)}"
            run.secrets[secret] = self.name
            params = {"user": self.name, "secret": secret}
        elif op == "write":
            self.counter += 1
            params = {"n": str(self.counter)}
        headers = {} if self.token is None else {"cookie": f"{COOKIE}={self.token}"}
        sent = Exchange(op, params, self.token, run.stopped, time.monotonic())
        run.in_flight += 1
        run.idle.clear()
        try:
            response = await self.client.get(f"/{op}", params=params, headers=headers)
        except httpx.HTTPError as exc:
            run.problem("transport error", f"{self.name} /{op}: {exc!r}", self)
            return None
        finally:
            run.in_flight -= 1
            if not run.in_flight:
                run.idle.set()
        sent.received = time.monotonic()
        elapsed = sent.received - sent.sent
        sent.window = window = run.window_of(sent.sent, sent.received)
        if window is not None:
            outage = run.windows[window]
            sent.down = sent.sent >= outage.down and sent.received <= outage.up
        sent.where = f"{self.name} /{op} " + (
            "outside the outages"
            if window is None
            else f"while Redis was down {window + 1}"
            if sent.down
            else f"in outage {window + 1}"
        )
        cookies = session_cookies(response)
        self.history.append(
            f"{sent.sent - run.started:7.3f}-{sent.received - run.started:7.3f} s /{op} "
            f"{params} cookie={str(sent.token)[:8]} -> {response.status_code} "
            f"{response.content[:100]!r} {[c[:24] for c in cookies]}"
        )
        run.counts["requests"] += 1
        run.counts[op] += 1
        run.statuses[response.status_code] += 1
        if self.visitor and window is not None and response.status_code == 200:
            run.counts["visitor 200 in an outage"] += 1
        (run.latencies if window is None else run.outage_latencies).append(elapsed)
        if elapsed > REQUEST_BOUND:
            run.problem("slow request", f"{sent.where} took {elapsed:.2f} s", self)
        for value in cookies:
            token = value.split(";", 1)[0].partition("=")[2]
            if token:
                run.tokens.add(token)
        if b"Traceback" in response.content:
            run.problem("traceback", f"{sent.where}: {response.content[:200]!r}", self)
        if sent.down:
            # Only the fail mode: a 503, or fail-open a 200 with no Set-Cookie (its data
            # checked below), for anything that needs Redis; the rest goes on as usual.
            run.counts["sent while Redis was down"] += 1
            fail_closed = sent.needs_store and not run.fail_open
            if response.status_code != (503 if fail_closed else 200) or (
                sent.needs_store and cookies
            ):
                run.problem("not the fail mode while Redis was down", sent.where, self)
        if response.status_code == 503:
            self.check_503(response, sent)
        elif response.status_code != 200:
            run.problem(f"status {response.status_code}", sent.where, self)
        elif op == "untouched":
            if response.content != b"ok" or cookies:
                run.problem("untouched changed", sent.where, self)
        else:
            self.check_200(response, cookies, sent)
        return response

    def check_503(self, response: httpx.Response, sent: Exchange) -> None:
        run = self.run
        if run.fail_open or sent.window is None or self.visitor:
            run.problem("503 outside a fail-closed outage", sent.where, self)
        if (
            response.content != b"Service Unavailable"
            or response.headers.get("retry-after") != "1"
            or response.headers.get_list("set-cookie")
        ):
            run.problem("non-generic 503", f"{sent.where}: {dict(response.headers)}", self)
        self.note_failure(sent)

    def note_failure(self, sent: Exchange) -> None:
        """A fail-mode answer: note how long after Redis was back it came."""
        if sent.window is not None:
            up = self.run.windows[sent.window].up
            if sent.received > up:
                latest = self.run.last_failure.get(sent.window, 0.0)
                self.run.last_failure[sent.window] = max(latest, sent.received - up)

    def check_200(self, response: httpx.Response, cookies: list[str], sent: Exchange) -> None:
        run = self.run
        op, where = sent.op, sent.where
        try:
            data = response.json()["data"]
            assert isinstance(data, dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            run.problem("bad body", f"{where}: {response.content[:200]!r}", self)
            return
        # Crosstalk: a user or secret that is not this browser's, whatever else.
        owner = run.secrets.get(str(data.get("secret")), self.name)
        if owner != self.name or data.get("user", self.name) != self.name:
            run.problem("crosstalk", f"{where}: {data}", self)
            return
        # What the handler shows on the session this browser holds (continuing), and
        # on an empty one (fresh: no cookie, a session lost to a restart, or the store
        # down in fail-open mode).
        if op == "login":
            fresh = {"user": self.name, "secret": sent.params["secret"], "n": 0}
            continuing: dict[str, Any] | None = fresh
        elif op == "write":
            fresh = {"n": int(sent.params["n"])}
            continuing = None if self.expected is None else {**self.expected, **fresh}
        elif op == "logout":
            fresh = continuing = {}
        else:
            fresh = {}
            continuing = self.expected
        # Lost to a restart: a stop of Redis has begun since the request that stored it.
        lost_ok = self.expected is None or self.stored_in < run.stops
        # The fail-open answer: an empty session, not saved.
        unsaved_ok = run.fail_open and sent.window is not None
        if data == continuing and not (sent.down and sent.needs_store and continuing != fresh):
            shown = "continuing"
        elif data == fresh and (lost_ok or unsaved_ok):
            shown = "fresh"
        elif data == fresh:
            run.problem("session lost", f"{where}: {data}, held {self.expected}", self)
            return
        else:
            kind = "lost update" if op == "read" and self.expected else "wrong data"
            run.problem(kind, f"{where}: {data}, expected {continuing} or {fresh}", self)
            return
        if len(cookies) > 1:
            run.problem("several cookies", f"{where}: {cookies}", self)
            return
        value = cookies[0].split(";", 1)[0].partition("=")[2] if cookies else None
        if cookies and (not value or "max-age=0" in cookies[0].lower()):
            if op != "logout":
                run.problem("cookie deleted", f"{where}: {cookies}", self)
            self.token = None
            self.expected = None
            run.counts["logged out"] += 1
            return
        saves = op in ("login", "write")
        if value is not None:
            # A new session (a login, or a write without one): a new cookie value, never
            # the one sent (an unknown ID is never adopted). A write on the session this
            # browser holds: the same value again (its Max-Age slides).
            new = (
                op == "login"
                or self.expected is None
                or shown == "fresh"
                or (value != sent.token and data == fresh and lost_ok)
            )
            if not saves:
                run.problem("unexpected Set-Cookie", f"{where}: {cookies[0][:60]}", self)
            elif new and value == sent.token:
                kind = "cookie not rotated" if op == "login" else "unknown ID adopted"
                run.problem(kind, where, self)
            elif not new and value != sent.token:
                run.problem("cookie changed on a write", where, self)
            elif new:
                run.counts["logins" if op == "login" else "sessions created"] += 1
            self.token = value
            self.expected = data
            self.stored_in = sent.stopped
            return
        # No Set-Cookie.
        if saves or (op == "logout" and self.expected and not lost_ok):
            if unsaved_ok:
                run.counts["unsaved (fail-open)"] += 1
                self.note_failure(sent)
            else:
                run.problem("not saved", f"{where}: {data}", self)
            return
        if shown == "fresh" and self.expected:
            window = None if sent.window is None else run.windows[sent.window]
            if lost_ok and (not run.fail_open or window is None or sent.sent >= window.up):
                # Redis is back, empty (fail-closed never shows an empty session for a
                # failed load): this browser is anonymous now, and keeps its stale
                # cookie, as a browser would.
                run.counts["lost to a restart"] += 1
                self.expected = None
            else:
                run.counts["empty (fail-open)"] += 1
                self.note_failure(sent)


# -- the soak -------------------------------------------------------------------------


async def sample(
    run: Run, at: str, server: AppServer, redis: RedisServer, probe: httpx.AsyncClient
) -> Sample:
    """Pause the browsers, wait until nothing is in flight, then measure."""
    run.resume.clear()
    with anyio.fail_after(30):
        if run.in_flight:
            await run.idle.wait()
    await asyncio.sleep(0.5)  # responses written, connections back in the pool
    try:
        state = (await probe.get("/_soak/state")).json()
        total, to_redis, from_clients, other = fd_counts(server.pid, server.port, redis.port)
        clients = int(redis.info("clients")["connected_clients"]) - 1  # less the asker
        return Sample(
            at, rss_kib(server.pid), total, to_redis, from_clients, other, clients,
            state["objects"], state["tasks"], state["types"],
        )  # fmt: skip
    finally:
        run.resume.set()


async def recover(run: Run, probe: Browser, window: Window) -> float:
    """Seconds from Redis answering to a probe's login and read-back succeeding."""
    while True:
        login = await probe.step("login")
        if login is not None and login.status_code == 200 and probe.token is not None:
            read = await probe.step("read")
            if (
                read is not None
                and read.status_code == 200
                and read.json()["data"] == probe.expected
            ):
                return time.monotonic() - window.up
        if time.monotonic() > window.up + RECOVERY_SECONDS:
            return float("inf")
        await asyncio.sleep(0.05)


async def soak(redis: RedisServer, directory: Path, *, fail_open: bool, test: str) -> None:
    if SECONDS < MIN_SECONDS:
        pytest.fail(f"{SECONDS_ENV}={SECONDS} leaves no room for two outages: use >= {MIN_SECONDS}")
    redis_port = redis.port
    with AppServer(directory, redis.url, fail_open=fail_open) as server:
        started = time.monotonic()
        run = Run(fail_open=fail_open, started=started, deadline=started + SECONDS)
        run.resume.set()
        browsers = [Browser(run, server.url, f"member{i:02d}") for i in range(MEMBERS)]
        browsers += [Browser(run, server.url, f"visitor{i}", visitor=True) for i in range(VISITORS)]
        probe = Browser(run, server.url, "probe")
        sampler = httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False)
        samples: list[Sample] = []
        recoveries: list[float] = []
        restarts: list[float] = []
        try:
            tasks = [asyncio.ensure_future(browser.loop()) for browser in browsers]
            try:
                await asyncio.sleep(started + WARMUP_SECONDS - time.monotonic())
                samples.append(await sample(run, "warm", server, redis, sampler))
                for number, fraction in enumerate(OUTAGES_AT, 1):
                    await asyncio.sleep(max(0.0, started + fraction * SECONDS - time.monotonic()))
                    window = Window(start=time.monotonic())
                    run.windows.append(window)
                    run.stops += 1
                    await anyio.to_thread.run_sync(redis.stop)
                    run.stopped += 1
                    window.down = time.monotonic()
                    await asyncio.sleep(OUTAGE_SECONDS)
                    # restart() of a stopped server starts it on its port (start() would
                    # pick a new one), from this, the main, thread: a server started from
                    # a worker thread would not die with pytest (see RedisServer).
                    old_pid = redis.pid
                    redis.restart()
                    assert redis.port == redis_port, "Redis came back on another port"
                    assert redis.pid != old_pid
                    window.up = time.monotonic()
                    window.end = window.up + RECOVERY_SECONDS
                    restarts.append(window.up - window.start)
                    recoveries.append(await recover(run, probe, window))
                    if number == 1:
                        await asyncio.sleep(max(0.0, window.end - time.monotonic()))
                        samples.append(await sample(run, "after outage 1", server, redis, sampler))
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            samples.append(await sample(run, "end", server, redis, sampler))
            # Redis holds exactly the sessions the browsers hold (those stored since the
            # last restart): none missing, and none that no cookie leads to.
            live, aliases, indexes = await anyio.to_thread.run_sync(stored_sessions, redis)
            held = {
                token_id(b.token)
                for b in [*browsers, probe]
                if b.token is not None and b.expected is not None and b.stored_in == run.stops
            }
        finally:
            for browser in [*browsers, probe]:
                await browser.aclose()
            await sampler.aclose()
        alive = server.process is not None and server.process.poll() is None
        exit_status = server.stop()
    elapsed = time.monotonic() - started
    log = server.log_text()

    # -- the figures, then the assertions --
    warm, after_first, end = samples
    counts = run.counts
    latencies = sorted(run.latencies)
    outage_latencies = sorted(run.outage_latencies) or [0.0]
    logged_tokens = set(re.findall(r"[A-Za-z0-9_-]{40,}", log)) & run.tokens
    log_problems = {
        phrase: log.count(phrase)
        for phrase in (
            "Traceback",
            "Exception in ASGI application",
            "Task exception was never retrieved",
            "Task was destroyed",
            "Unclosed",
            "Warning:",
        )
    }
    grown = Counter(end.types)
    grown.subtract(warm.types)
    other_statuses = sum(n for status, n in run.statuses.items() if status not in (200, 503))

    def ms(values: list[float], q: float) -> str:
        return f"{1000 * values[min(len(values) - 1, int(q * len(values)))]:.1f}"

    report(
        test,
        mode="fail-open" if fail_open else "fail-closed",
        seconds=f"{elapsed:.0f}",
        browsers=f"{MEMBERS}+{VISITORS} visitors",
        requests=counts["requests"],
        per_second=f"{counts['requests'] / elapsed:.0f}",
        ops="/".join(str(counts[op]) for op in ("login", "read", "write", "logout", "untouched")),
        ops_key="login/read/write/logout/untouched",
        status_200=run.statuses[200],
        status_503=run.statuses[503],
        unsaved_fail_open=counts["unsaved (fail-open)"] + counts["empty (fail-open)"],
        visitor_200_in_outages=counts["visitor 200 in an outage"],
        sent_while_down=counts["sent while Redis was down"],
        other_statuses=other_statuses,
        sessions_lost_to_restarts=counts["lost to a restart"],
        crosstalk=run.kinds["crosstalk"],
        lost_updates=run.kinds["lost update"],
        sessions_lost_without_restart=run.kinds["session lost"],
        transport_errors=run.kinds["transport error"],
        problems=sum(run.kinds.values()),
        redis_down_s="/".join(f"{s:.1f}" for s in restarts),
        probe_recovery_s="/".join(f"{s:.2f}" for s in recoveries),
        last_failure_after_up_s="/".join(
            f"{run.last_failure.get(i, 0.0):.2f}" for i in range(len(run.windows))
        ),
        p50_ms=ms(latencies, 0.5),
        p99_ms=ms(latencies, 0.99),
        max_ms=ms(latencies, 1.0),
        outage_p99_ms=ms(outage_latencies, 0.99),
        outage_max_ms=ms(outage_latencies, 1.0),
        rss_kib=f"{warm.rss_kib}/{after_first.rss_kib}/{end.rss_kib}",
        fds=f"{warm.fds}/{after_first.fds}/{end.fds}",
        redis_sockets=f"{warm.redis_sockets}/{after_first.redis_sockets}/{end.redis_sockets}",
        client_sockets=f"{warm.client_sockets}/{after_first.client_sockets}/{end.client_sockets}",
        other_fds=f"{warm.other_fds}/{after_first.other_fds}/{end.other_fds}",
        redis_clients=f"{warm.redis_clients}/{after_first.redis_clients}/{end.redis_clients}",
        gc_objects=f"{warm.objects}/{after_first.objects}/{end.objects}",
        gc_growth_by_type=" ".join(f"{t}:{n:+d}" for t, n in grown.most_common(4)),
        tasks=f"{warm.tasks}/{after_first.tasks}/{end.tasks}",
        samples_key="warm/after outage 1/end",
        log_tracebacks=log_problems["Traceback"],
        tokens_in_log=len(logged_tokens),
        sessions_held=len(held),
        sessions_stored=len(live),
        orphan_sessions=len(live - held),
        missing_sessions=len(held - live),
        grace_aliases=aliases,
        user_indexes=indexes,
    )

    assert not run.problems, f"problems by kind: {dict(run.kinds)}\n" + "\n".join(run.problems)
    assert alive, f"the app server died during the soak:\n{server.log_tail()}"
    # uvicorn shuts down cleanly on SIGTERM, then re-raises it to exit "by" the signal.
    assert exit_status in (0, -signal.SIGTERM), f"uvicorn exited with {exit_status}"
    assert len(run.windows) == 2
    assert other_statuses == 0, run.statuses
    assert counts["requests"] > 20 * SECONDS, "far fewer requests than the browsers make"
    # Both outages were seen, in the configured fail mode, and sessions were lost to them.
    if fail_open:
        assert run.statuses[503] == 0
        assert counts["unsaved (fail-open)"] > 0
    else:
        assert run.statuses[503] > 0
    assert counts["sent while Redis was down"] > 0
    assert counts["visitor 200 in an outage"] > 0  # a cookieless read needs no Redis
    assert counts["lost to a restart"] > 0
    # Recovered: the probe logged in and read back in time, and (checked per request)
    # everything sent later than RECOVERY_SECONDS after each start was a normal 200.
    assert all(r <= RECOVERY_SECONDS for r in recoveries), recoveries
    assert run.deadline > run.windows[-1].end + 1, "no steady traffic after the last outage"
    assert log_problems == dict.fromkeys(log_problems, 0), log_problems
    assert not logged_tokens, "a cookie value appears in the server's log"
    assert held - live == set(), "sessions the browsers hold are missing from Redis"
    assert live - held == set(), "Redis holds sessions that no browser's cookie leads to"
    assert indexes <= MEMBERS + 1  # one per user at most
    # Resources: bounded, and no growth beyond the tolerances above.
    for s in samples:
        assert s.redis_sockets <= MAX_CONNECTIONS, s
        assert s.redis_clients <= MAX_CONNECTIONS, s
        assert s.client_sockets <= MEMBERS + VISITORS + 2, s
    assert end.other_fds - warm.other_fds <= OTHER_FDS_TOLERANCE, samples
    assert end.tasks - warm.tasks <= TASKS_TOLERANCE, samples
    assert end.objects - warm.objects <= OBJECTS_TOLERANCE, grown.most_common(10)
    assert end.rss_kib - warm.rss_kib <= RSS_TOLERANCE_KIB, samples


@pytest.fixture
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


async def test_soak_fail_closed(private_redis: RedisServer, directory: Path) -> None:
    await soak(private_redis, directory, fail_open=False, test="test_soak_fail_closed")


async def test_soak_fail_open(private_redis: RedisServer, directory: Path) -> None:
    await soak(private_redis, directory, fail_open=True, test="test_soak_fail_open")
