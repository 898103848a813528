"""HTTP benchmark: every row of ``benchmarks.rows`` behind a real uvicorn server,
loaded with ``wrk`` over loopback, side by side.

    python -m benchmarks.http [--rounds N] [--duration S] [--connections N]
                              [--warmup S] [--quick] [--only ROWS] [--seed N]
                              [--markdown-out FILE] [--strict-bars] [--quiet]
                              [--redis-url URL]

What runs: each row gets its own server process, ``python -m uvicorn
benchmarks.http_app:app`` with one worker, ``--lifespan on --no-access-log
--log-level warning``, on a free 127.0.0.1 port; the row is built in the server's
lifespan startup (in its event loop: the Redis clients bind to it) and closed at its
shutdown (see ``benchmarks.http_app``). All servers are started at the beginning and
stopped, by their PIDs, at the end (SIGTERM, SIGKILL after a timeout), also after an
error, Ctrl-C or SIGTERM. Each cookie row is logged in once over HTTP (``GET /login``;
its Set-Cookie becomes the Cookie header of every request); rows without session
middleware (``bare`` and the raw-Redis floors) get a plain session dict from the app
and a dummy cookie of typical size from the harness, as in ``benchmarks.inprocess``.

Scenarios: s2 (``GET /read`` with the login cookie: the handler reads the session)
and s3 (``GET /write`` with it: the handler writes a new value on every request).
Every row runs both, except ``bare+GET`` (s2 only) and ``bare+GET+SET`` (s3 only),
the floors of the Redis rows: ``bare`` plus one raw Redis GET (and SET) per request.

Method: a *cell* is one (row, scenario) pair, a *sample* is one ``wrk -t1
-c<connections> -d<duration>s --latency`` run against it. After a warm-up run of
every cell (not recorded), each round takes one sample of every cell, in a freshly
shuffled order (seeded), so drift hits every row alike. Correctness is checked before
the first sample and after every sample, outside the timed region: the server is
alive, ``/read`` answers the logged-in user, ``/write`` answers a number and its
Set-Cookie reads back through ``/peek``, and the ``asgi_sessions`` logger said
nothing. A row that fails any of this, or does not start, is reported FAILED and
timed no further.

Reading the report: one table, a line per (row, scenario). ``req/s``, ``p50 ms`` and
``p99 ms`` are medians over rounds of wrk's Requests/sec and latency percentiles;
``x bare`` is the median over rounds of the cell's req/s divided by ``bare``'s in the
same round and scenario (higher is better; a session middleware is below 1.00), and
``x bare range`` its smallest and largest value over the rounds. ``non-2xx`` and
``socket errors`` are totals over the rounds (wrk's "Non-2xx or 3xx responses" and
connect+read+write+timeout). The bar lines below the table say PASS or FAIL:
ours-redis in s2 at least 0.60x bare's req/s (starsessions-redis shown for
comparison), ours-jwt's s2 ratio at least Starlette's, and no non-2xx response in any
cell; an informational line gives ours-redis against its raw-Redis floor. On this
two-core machine wrk, the server under test and (for the Redis rows) redis-server
share the CPUs, so absolute figures are lower than on a real server; the ratios are
what to compare.

Exit status: 0 fine, 1 a server failed (did not start, died, misbehaved) or a cell
had non-2xx responses, 2 a bar failed (only with ``--strict-bars``). Rows that cannot
run here (no Redis) are skipped with a note and do not change the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.http_app import INFO_ENV, PACKAGE_WARNING, REDIS_ENV, ROW_ENV
from benchmarks.inprocess import (
    BARE_COOKIE,
    Response,
    _csv,
    _interruptible,
    cookie_header,
    redis_for,
)
from benchmarks.redis_server import _die_with_parent
from benchmarks.report import environment_lines, git_revision, package_version, source_digest
from benchmarks.rows import ROWS, SCENARIOS, USER, RowUnavailable, Scenario, redis_url

MODULE = "benchmarks.http"
HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent

ROUNDS, DURATION, CONNECTIONS, WARMUP = 3, 5, 16, 1
QUICK_ROUNDS, QUICK_DURATION = 1, 1
QUICK_ROWS = ("bare", "starlette", "ours-jwt", "ours-redis", "bare+GET")
SCENARIO_KEYS = ("s2", "s3")

STARTUP_TIMEOUT = 60.0  # seconds for every server to answer (they start together)
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
REQUEST_TIMEOUT = 10.0  # seconds for one check request
PORT_TRIES = 5  # a free port may be taken between choosing it and the server binding it

# The bars: ours-redis's read throughput against bare's (starsessions-redis shown for
# comparison), ours-jwt's read ratio against Starlette's.
REDIS_ROW = "ours-redis"
REDIS_RIVAL = "starsessions-redis"
REDIS_BAR = 0.60
REDIS_FLOORS = {"s2": "bare+GET", "s3": "bare+GET+SET"}
JWT_ROW = "ours-jwt"
JWT_RIVAL = "starlette"

UVICORN_OPTIONS = ("--lifespan", "on", "--no-access-log", "--log-level", "warning")


class ServerFailed(Exception):
    """A server did not start, died or misbehaved; the message says how."""


# -- one server per row ------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def fetch(port: int, path: str, cookie: str | None) -> tuple[int, list[str], str]:
    """One GET on a fresh connection: status, Set-Cookie values, body."""
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
        return response.status, response.headers.get_all("set-cookie") or [], body
    finally:
        connection.close()


def session_cookie(set_cookies: Sequence[str], name: str) -> str | None:
    """The Cookie header a browser would send back for the session cookie (or its
    chunks) among these Set-Cookie values (the in-process benchmark's parser)."""
    response = Response(200, [(b"set-cookie", value.encode("latin-1")) for value in set_cookies])
    cookie = cookie_header(response, name)
    return None if cookie is None else cookie.decode("latin-1")


@dataclass(slots=True)
class Server:
    """One uvicorn process serving one row, and what the harness knows about it."""

    name: str
    directory: Path
    redis_url: str | None
    workers: int = 1
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    tries: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    cookie: str = ""  # the Cookie header every request of the cookie scenarios sends
    log_seen: int = 0  # bytes of the log already searched for package warnings
    terminated: bool = False  # SIGTERM sent by stop_all, the process not yet reaped

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def info_path(self) -> Path:
        return self.directory / f"{self.name}.json"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.tries += 1
        self.port = free_port()
        self.info_path.unlink(missing_ok=True)
        env = dict(os.environ)
        env[ROW_ENV] = self.name
        env[INFO_ENV] = str(self.info_path)
        env.pop(REDIS_ENV, None)
        if self.redis_url is not None:
            env[REDIS_ENV] = self.redis_url
        argv = [
            sys.executable, "-m", "uvicorn", "benchmarks.http_app:app",
            "--host", HOST, "--port", str(self.port), *UVICORN_OPTIONS,
            *(("--workers", str(self.workers)) if self.workers > 1 else ()),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                # Its own session: a Ctrl-C in the terminal reaches only the harness,
                # which then stops every server itself.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 12) -> str:
        tail = " | ".join(self.log_text().strip().splitlines()[-lines:])
        return tail or "(it printed nothing)"

    def new_package_warnings(self) -> list[str]:
        """asgi_sessions warnings logged since the last call."""
        text = self.log_text()
        fresh, self.log_seen = text[self.log_seen :], len(text)
        return [line for line in fresh.splitlines() if line.startswith(PACKAGE_WARNING)]

    def wait_ready(self, deadline: float) -> None:
        """Until the server answers HTTP (its lifespan startup, and so the row, is
        done by then); restart on a port taken meanwhile. Raises RowUnavailable for
        a row that cannot run here, ServerFailed otherwise."""
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code is not None:
                info = self._read_info()
                if "unavailable" in info:
                    raise RowUnavailable(str(info["unavailable"]))
                if "address already in use" in self.log_text().lower() and (
                    self.tries < PORT_TRIES
                ):
                    self.start()
                    continue
                raise ServerFailed(f"exited with status {code} at start-up: {self.log_tail()}")
            try:
                fetch(self.port, "/untouched", None)
            except (OSError, http.client.HTTPException):
                if time.monotonic() >= deadline:
                    raise ServerFailed(
                        f"did not answer within {STARTUP_TIMEOUT:.0f} s: {self.log_tail()}"
                    ) from None
                time.sleep(0.05)
                continue
            self.info = self._read_info()
            if "cookie_name" not in self.info:
                raise ServerFailed(f"answers but wrote no row description ({self.info_path})")
            return

    def _read_info(self) -> dict[str, Any]:
        try:
            data = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def plain(self) -> bool:
        return bool(self.info.get("plain_session"))

    def runs(self, key: str) -> bool:
        scenarios = self.info.get("scenarios")
        return scenarios is None or key in scenarios

    def terminate(self) -> None:
        """SIGTERM, unless the process has already exited (stop() reports that)."""
        if self.process is not None and not self.terminated and self.process.poll() is None:
            self.process.terminate()
            self.terminated = True

    def stop(self, timeout: float) -> str | None:
        """SIGTERM (sent by :meth:`terminate`, or now), then SIGKILL after ``timeout``;
        what went wrong, if anything. Safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return None
        if not self.terminated:
            if process.poll() is not None:
                return f"had already exited with status {process.returncode}: {self.log_tail()}"
            process.terminate()
        self.terminated = False
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return f"did not stop within {timeout:.0f} s of SIGTERM and was killed"
        if code not in (0, -signal.SIGTERM):
            return f"exited with status {code} at shutdown: {self.log_tail()}"
        return None


def login(server: Server) -> None:
    """The Cookie header for the cookie scenarios: the row's own login cookie, or a
    dummy cookie of typical size for a row without session middleware."""
    if server.plain:
        server.cookie = BARE_COOKIE.decode("latin-1")
        return
    status, set_cookies, _ = fetch(server.port, "/login", None)
    cookie = session_cookie(set_cookies, str(server.info["cookie_name"]))
    if status != 200 or cookie is None:
        raise ServerFailed(f"GET /login answered {status} without a session cookie")
    server.cookie = cookie


def check(server: Server, scenario: Scenario) -> list[str]:
    """What is wrong with this server in this scenario (empty when it does what the
    scenario says), from one request with the login cookie."""
    try:
        return _check(server, scenario)
    except (OSError, http.client.HTTPException) as exc:
        return [f"{scenario.key}: the check request failed: {exc!r}"]


def _check(server: Server, scenario: Scenario) -> list[str]:
    # Requests wrk left in flight may still commit after wrk returns (last writer
    # wins), in another worker too: a write that does not read back is tried again
    # after a pause before it counts as a problem.
    for attempt in range(3):
        problems = _check_once(server, scenario)
        if not any("reads back" in p for p in problems) or attempt == 2:
            return problems
        time.sleep(0.3)
    return problems


def _check_once(server: Server, scenario: Scenario) -> list[str]:
    key = scenario.key
    status, set_cookies, body = fetch(server.port, scenario.path, server.cookie)
    problems = []
    if status != 200:
        problems.append(f"{key}: GET {scenario.path} answered {status}")
    expects_set_cookie = not server.plain and (
        scenario.writes or bool(server.info.get("resaves_unchanged"))
    )
    if expects_set_cookie and not set_cookies:
        problems.append(f"{key}: no Set-Cookie")
    elif set_cookies and not expects_set_cookie:
        problems.append(f"{key}: unexpected Set-Cookie {set_cookies[0][:60]!r}")
    if scenario.reads and body != USER:
        problems.append(f"{key}: /read answered {body[:60]!r}, expected {USER!r}")
    if scenario.writes:
        if not body.isdigit():
            problems.append(f"{key}: /write answered {body[:60]!r}")
        elif not server.plain:
            cookie = session_cookie(set_cookies, str(server.info["cookie_name"]))
            if cookie is None:
                problems.append(f"{key}: the write's Set-Cookie carries no session cookie")
            else:
                _, _, seen = fetch(server.port, "/peek", cookie)
                if seen != body:
                    problems.append(f"{key}: wrote {body}, its cookie reads back {seen[:60]!r}")
    return problems


# -- wrk ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    requests: int


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_PERCENTILE = r"^\s*{}%\s+([\d.]+)(us|ms|s|m|h)\s*$"
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)


def parse_wrk(output: str) -> WrkResult:
    """The figures of one ``wrk --latency`` report; ValueError when one is missing."""

    def percentile(value: int) -> float:
        match = re.search(_PERCENTILE.format(value), output, re.MULTILINE)
        if match is None:
            raise ValueError(f"no {value}% latency line")
        return float(match[1]) * _UNITS_MS[match[2]]

    rps = _RPS.search(output)
    total = _REQUESTS.search(output)
    if rps is None or total is None:
        raise ValueError("no Requests/sec or request count")
    non_2xx = _NON_2XX.search(output)
    sockets = _SOCKET.search(output)
    return WrkResult(
        requests_per_second=float(rps[1]),
        p50_ms=percentile(50),
        p99_ms=percentile(99),
        non_2xx=0 if non_2xx is None else int(non_2xx[1]),
        socket_errors=0 if sockets is None else sum(int(n) for n in sockets.groups()),
        requests=int(total[1]),
    )


def run_wrk(
    wrk: str, server: Server, scenario: Scenario, duration: int, connections: int
) -> WrkResult:
    """One wrk run against the server; ServerFailed if wrk fails or says nothing."""
    argv = [
        wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
        "-H", f"Cookie: {server.cookie}",
        f"http://{HOST}:{server.port}{scenario.path}",
    ]  # fmt: skip
    # Its own session, so a Ctrl-C reaches only the harness; killed by its PID below.
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=duration + 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = out.decode("utf-8", "replace")
    if process.returncode != 0:
        message = (err.decode("utf-8", "replace") or text).strip()[-300:]
        raise ServerFailed(
            f"{scenario.key}: wrk exited with status {process.returncode}: {message}"
        )
    try:
        return parse_wrk(text)
    except ValueError as exc:
        raise ServerFailed(f"{scenario.key}: wrk output not understood ({exc}): {text!r}") from None


def wrk_version(wrk: str) -> str:
    try:
        result = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "?"
    first = (result.stdout or result.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "?"


# -- the run -----------------------------------------------------------------------


@dataclass(slots=True)
class Cell:
    server: Server
    scenario: Scenario
    samples: dict[int, WrkResult] = field(default_factory=dict)  # round -> result

    @property
    def name(self) -> str:
        return self.server.name


@dataclass(slots=True)
class Outcome:
    cells: list[Cell] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)  # row -> problems
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    revision: str = "unknown"
    redis: str = ""
    wrk: str = "?"


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while the servers are being stopped, so a second
    Ctrl-C cannot leave one running."""
    previous = {
        number: signal.signal(number, signal.SIG_IGN) for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def stop_all(servers: Sequence[Server], outcome: Outcome) -> None:
    """SIGTERM to every server we started, then wait for each (SIGKILL after
    STOP_TIMEOUT); a shutdown problem or a package warning fails the row."""
    with _shielded():
        for server in servers:
            with contextlib.suppress(OSError):
                server.terminate()
        for server in servers:
            problem = server.stop(STOP_TIMEOUT)
            if problem is not None:
                outcome.failed.setdefault(server.name, []).append(f"shutdown: {problem}")
            if warnings := server.new_package_warnings():
                outcome.failed.setdefault(server.name, []).append(warnings[0])


def log_notes(servers: Sequence[Server]) -> list[str]:
    """Anything a server printed (a healthy one at --log-level warning prints nothing)."""
    notes = []
    for server in servers:
        text = server.log_text().strip()
        if text:
            lines = text.splitlines()
            shown = " | ".join(lines[:6]) + (
                f" | ... ({len(lines)} lines)" if len(lines) > 6 else ""
            )
            notes.append(f"the `{server.name}` server printed: `{shown}`")
    return notes


def _no_redis() -> str:
    """Why the Redis rows cannot run (the reason given to configure_redis)."""
    try:
        redis_url()
    except RowUnavailable as exc:
        return str(exc)
    return "no Redis URL was passed to the run"


def run(args: argparse.Namespace, wrk: str, redis: str | None) -> Outcome:
    outcome = Outcome()
    started = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix="asgi-sessions-bench-http-"))
    servers: list[Server] = []
    scenarios = [s for s in SCENARIOS if s.key in SCENARIO_KEYS]

    def fail(server: Server, problems: Sequence[str]) -> None:
        outcome.failed.setdefault(server.name, []).extend(problems)

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    try:
        for name in args.names:
            if ROWS[name].redis and redis is None:
                why = _no_redis()
                outcome.notes.append(f"**{name} skipped**: {why}")
                say(f"note: row {name} skipped: {why}")
                continue
            server = Server(
                name, directory, redis if ROWS[name].redis else None, workers=args.workers
            )
            servers.append(server)  # before start(): a Ctrl-C in between still stops it
            server.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        ready = []
        for server in servers:
            try:
                server.wait_ready(deadline)
                login(server)
            except RowUnavailable as exc:
                outcome.notes.append(f"**{server.name} skipped**: {exc}")
                say(f"note: row {server.name} skipped: {exc}")
                continue
            except (ServerFailed, OSError, http.client.HTTPException) as exc:
                fail(server, [f"start-up: {exc}"])
                continue
            ready.append(server)
            for scenario in scenarios:
                if server.runs(scenario.key):
                    outcome.cells.append(Cell(server, scenario))
        say(f"{len(ready)} servers up in {time.perf_counter() - started:.1f} s")

        def after_sample(cell: Cell) -> None:
            server = cell.server
            if server.process is None or server.process.poll() is not None:
                fail(server, [f"{cell.scenario.key}: the server died: {server.log_tail()}"])
                return
            problems = check(server, cell.scenario)
            problems += server.new_package_warnings()
            if problems:
                fail(server, problems)

        for cell in outcome.cells:
            after_sample(cell)
        if args.warmup > 0:
            for cell in outcome.cells:
                if cell.name in outcome.failed:
                    continue
                try:
                    result = run_wrk(wrk, cell.server, cell.scenario, args.warmup, args.connections)
                except ServerFailed as exc:
                    fail(cell.server, [f"warm-up: {exc}"])
                    continue
                if result.non_2xx:
                    fail(
                        cell.server,
                        [f"{cell.scenario.key}: {result.non_2xx} non-2xx in the warm-up"],
                    )
                after_sample(cell)
            say(f"warm-up done ({time.perf_counter() - started:.0f} s)")

        rng = random.Random(args.seed)
        for round_number in range(args.rounds):
            order = list(outcome.cells)
            rng.shuffle(order)
            for index, cell in enumerate(order, 1):
                if cell.name in outcome.failed:
                    continue
                try:
                    result = run_wrk(
                        wrk, cell.server, cell.scenario, args.duration, args.connections
                    )
                except ServerFailed as exc:
                    fail(cell.server, [str(exc)])
                    continue
                cell.samples[round_number] = result
                after_sample(cell)
                say(
                    f"round {round_number + 1}/{args.rounds} [{index}/{len(order)}] "
                    f"{cell.name} {cell.scenario.key}: {result.requests_per_second:.0f} req/s, "
                    f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                    + (f", {result.non_2xx} non-2xx" if result.non_2xx else "")
                )
    finally:
        stop_all(servers, outcome)
        outcome.notes += log_notes(servers)
        shutil.rmtree(directory, ignore_errors=True)
        outcome.seconds = time.perf_counter() - started
    return outcome


# -- the report --------------------------------------------------------------------


def ratios(cell: Cell, floor: Cell | None) -> list[float]:
    """Per round: this cell's req/s over the floor's in the same round."""
    if floor is None:
        return []
    return [
        result.requests_per_second / floor.samples[r].requests_per_second
        for r, result in cell.samples.items()
        if r in floor.samples and floor.samples[r].requests_per_second > 0
    ]


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(outcome: Outcome, args: argparse.Namespace) -> tuple[str, bool]:
    """The markdown report, and whether every measured bar holds."""
    grid = {(c.name, c.scenario.key): c for c in outcome.cells}
    scenarios = [s for s in SCENARIOS if s.key in SCENARIO_KEYS]
    uvicorn_http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    uvicorn_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"

    lines = ["# asgi-sessions HTTP benchmark", ""]
    lines += environment_lines(MODULE, outcome.revision)
    if outcome.redis:
        lines.append(f"- redis: {outcome.redis}")
    lines += [
        f"- server: uvicorn {package_version('uvicorn')}, one server per row with "
        f"{'one worker' if args.workers == 1 else f'{args.workers} workers (`--workers`)'}, "
        f"`{' '.join(UVICORN_OPTIONS)}`, on a free loopback port; HTTP {uvicorn_http} and "
        f"event loop {uvicorn_loop} (uvicorn's `auto` choice here)",
        f"- load: {outcome.wrk}, `wrk -t1 -c{args.connections} -d{args.duration}s --latency` "
        "with the row's login cookie (a dummy cookie for rows without session middleware)",
        f"- method: {args.rounds} round{'s' if args.rounds != 1 else ''}; each runs every "
        f"(row, scenario) cell once in a shuffled order (seed {args.seed}), after a "
        f"{args.warmup} s warm-up of every cell (not recorded); req/s, p50 and p99 are "
        "medians over rounds; `x bare` is the median over rounds of the cell's req/s "
        "divided by `bare`'s in the same round and scenario (higher is better); non-2xx and "
        f"socket errors are totals over the rounds; the run took {outcome.seconds:.0f} s",
        "",
        "| row | scenario | req/s | x bare | x bare range | p50 ms | p99 ms | non-2xx | socket errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with_cells = {cell.name for cell in outcome.cells}
    for name in args.names:
        if name in outcome.failed and name not in with_cells:  # it never came up
            lines.append(f"| {name} | - | FAILED | | | | | | |")
            continue
        for scenario in scenarios:
            cell = grid.get((name, scenario.key))
            label = f"{scenario.key}: {scenario.title}"
            if cell is None:  # skipped, or a scenario this row does not run
                continue
            if not cell.samples:
                lines.append(f"| {name} | {label} | FAILED | | | | | | |")
                continue
            results = list(cell.samples.values())
            paired = ratios(cell, grid.get(("bare", scenario.key)))
            spread = f"{min(paired):.2f}-{max(paired):.2f}" if paired else "-"
            state = " (FAILED later)" if name in outcome.failed else ""
            lines.append(
                f"| {name} | {label} "
                f"| {statistics.median(r.requests_per_second for r in results):.0f}{state} "
                f"| {_x(_median(paired))} | {spread} "
                f"| {statistics.median(r.p50_ms for r in results):.2f} "
                f"| {statistics.median(r.p99_ms for r in results):.2f} "
                f"| {sum(r.non_2xx for r in results)} | {sum(r.socket_errors for r in results)} |"
            )

    bar_lines, bars_hold = bars(outcome, grid)
    lines += ["", "Bars:", "", *bar_lines]
    lines += ["", "Rows:", ""]
    lines += [f"- `{n}`: {ROWS[n].description}" for n in args.names]
    lines += ["", "Scenarios:", ""]
    lines += [f"- {s.key}: {s.title} (`GET {s.path}`)" for s in scenarios]
    lines += [
        "",
        "Notes:",
        "",
        "- Every cookie request of a row carries the one cookie its `GET /login` set; s3 "
        "writes a new value on every request on that same cookie. starsessions re-signs "
        "and re-sends its cookie on every response, so its s2 also carries a Set-Cookie "
        "(and, with its Redis store, a SET).",
        "- `bare` has no session middleware: the app puts a fresh plain dict into "
        "`scope['session']` per request and the harness sends a dummy cookie of typical "
        "size. `bare+GET`/`bare+GET+SET` are the same behind one raw Redis GET (and SET) "
        "per request, on a client made as `RedisBackend(url)` makes its own.",
        "- wrk, the server under test and (Redis rows) redis-server share this machine's "
        f"{os.cpu_count()} CPUs; the idle servers of the other rows stay up meanwhile.",
    ]
    socket_errors = sum(r.socket_errors for c in outcome.cells for r in c.samples.values())
    if socket_errors:
        lines.append(f"- wrk reported {socket_errors} socket errors in all (see the table).")
    lines += [f"- {note}" for note in outcome.notes]
    for name, problems in outcome.failed.items():
        lines.append(f"- **{name} FAILED**: " + "; ".join(problems[:5]))
    return "\n".join(lines) + "\n", bars_hold


def bars(outcome: Outcome, grid: dict[tuple[str, str], Cell]) -> tuple[list[str], bool]:
    lines = []
    all_hold = True

    def verdict(ok: bool) -> str:
        nonlocal all_hold
        all_hold &= ok
        return "PASS" if ok else "FAIL"

    bare = grid.get(("bare", "s2"))

    # (a) ours-redis's read throughput against bare's.
    ours = grid.get((REDIS_ROW, "s2"))
    ours_ratio = None if ours is None else _median(ratios(ours, bare))
    if ours_ratio is None or ours is None:
        lines.append(f"- NOT MEASURED: s2 {REDIS_ROW} vs bare (a row did not run or failed)")
    else:
        rival = grid.get((REDIS_RIVAL, "s2"))
        rival_ratio = None if rival is None else _median(ratios(rival, bare))
        compare = (
            f"for comparison {REDIS_RIVAL} {rival_ratio:.2f}x"
            if rival_ratio is not None
            else f"{REDIS_RIVAL} was not measured"
        )
        lines.append(
            f"- {verdict(ours_ratio >= REDIS_BAR)}: s2 (cookie, read) {REDIS_ROW} serves "
            f"{ours_ratio:.2f}x bare's req/s (bar: at least {REDIS_BAR:.2f}x; {compare})"
        )

    # (b) ours-jwt's read ratio against Starlette's.
    jwt, star = grid.get((JWT_ROW, "s2")), grid.get((JWT_RIVAL, "s2"))
    jwt_ratio = None if jwt is None else _median(ratios(jwt, bare))
    star_ratio = None if star is None else _median(ratios(star, bare))
    if jwt is None or star is None or jwt_ratio is None or star_ratio is None:
        lines.append(f"- NOT MEASURED: s2 {JWT_ROW} vs {JWT_RIVAL} (a row did not run or failed)")
    else:
        both = [r for r in jwt.samples if r in star.samples]
        ahead = sum(
            jwt.samples[r].requests_per_second >= star.samples[r].requests_per_second for r in both
        )
        lines.append(
            f"- {verdict(jwt_ratio >= star_ratio)}: s2 (cookie, read) {JWT_ROW} {jwt_ratio:.2f}x "
            f"bare vs {JWT_RIVAL} {star_ratio:.2f}x (bar: at least Starlette's "
            f"SessionMiddleware); {JWT_ROW} served more in {ahead} of {len(both)} rounds"
        )

    # (c) no non-2xx anywhere.
    bad = [
        f"{c.name} {c.scenario.key} ({n})"
        for c in outcome.cells
        if (n := sum(r.non_2xx for r in c.samples.values()))
    ]
    total = sum(r.requests for c in outcome.cells for r in c.samples.values())
    unmeasured = sorted(outcome.failed)
    if bad:
        found = f"non-2xx responses in {', '.join(bad)}"
    elif unmeasured:
        found = (
            f"no non-2xx response in the cells measured, but {', '.join(unmeasured)} failed "
            "and was not fully measured"
        )
    else:
        found = "no non-2xx response in any cell"
    lines.append(
        f"- {verdict(not bad and not unmeasured)}: {found} ({total} requests in all; bar: none)"
    )

    # Informational: ours-redis against its raw-Redis floor of the same round.
    for key, floor_name in REDIS_FLOORS.items():
        mine, floor = grid.get((REDIS_ROW, key)), grid.get((floor_name, key))
        ratio = None if mine is None else _median(ratios(mine, floor))
        if mine is None or floor is None or ratio is None:
            lines.append(f"- info: {key} {REDIS_ROW} vs {floor_name}: not measured")
            continue
        ours_rps = statistics.median(r.requests_per_second for r in mine.samples.values())
        floor_rps = statistics.median(r.requests_per_second for r in floor.samples.values())
        lines.append(
            f"- info: {key} {REDIS_ROW} serves {ratio:.2f}x the req/s of its floor {floor_name} "
            f"({ours_rps:.0f} vs {floor_rps:.0f} req/s; median of per-round ratios)"
        )
    return lines, all_hold


# -- command line ------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="HTTP benchmark of session middlewares: uvicorn servers loaded with wrk.",
    )
    parser.add_argument("--rounds", type=int, help=f"rounds (default {ROUNDS})")
    parser.add_argument("--duration", type=int, help=f"seconds per wrk run (default {DURATION})")
    parser.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS,
        help=f"wrk connections (default {CONNECTIONS})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=WARMUP,
        metavar="SECONDS",
        help=f"wrk warm-up per cell before the first round, 0 for none (default {WARMUP})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI smoke run: {QUICK_ROUNDS} round of {QUICK_DURATION} s on {', '.join(QUICK_ROWS)}",
    )
    parser.add_argument(
        "--only",
        type=_csv,
        metavar="ROWS",
        help=f"comma-separated rows ({', '.join(ROWS)}); bare is always included",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    parser.add_argument("--markdown-out", type=Path, metavar="FILE", help="also write here")
    parser.add_argument("--strict-bars", action="store_true", help="exit 2 when a bar fails")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--wrk", default="wrk", metavar="PATH", help="the wrk binary (default: wrk on PATH)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes per server (default 1); with more than one, only "
        "rows whose sessions every worker can read make sense (not ours-memory)",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="the Redis server for the Redis rows (keys under 'bench:', never flushed); "
        "by default the benchmark starts a private redis-server on a free loopback port "
        "and stops it at the end, or skips those rows when redis-server is missing",
    )
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    args.duration = args.duration or (QUICK_DURATION if args.quick else DURATION)
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.warmup < 0:
        parser.error("--rounds, --duration and --connections must be at least 1, --warmup 0")
    wanted = set(QUICK_ROWS) if args.quick else set(ROWS)
    if args.only:
        unknown = sorted(set(args.only) - set(ROWS))
        if unknown:
            parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
        wanted = set(args.only)
    args.names = [n for n in ROWS if n == "bare" or n in wanted]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = shutil.which(args.wrk)
    if wrk is None:
        print(f"error: {args.wrk} not found (install wrk, or pass --wrk PATH)", file=sys.stderr)
        return 1
    revision, digest = git_revision(), source_digest()
    needs_redis = any(ROWS[name].redis for name in args.names)
    with _interruptible(), redis_for(needs_redis, args.redis_url) as (_, redis_line):
        try:
            url: str | None = redis_url()
        except RowUnavailable:
            url = None
        outcome = run(args, wrk, url)
    outcome.revision = revision
    outcome.redis = redis_line
    outcome.wrk = wrk_version(wrk)
    if source_digest() != digest:
        outcome.notes.append(
            "**the asgi_sessions sources changed on disk during the run**: the figures "
            f"are for the code as of the start ({revision}); run again"
        )
    text, bars_hold = render(outcome, args)
    print(text)
    if args.markdown_out is not None:
        args.markdown_out.write_text(text, encoding="utf-8")
    non_2xx = any(r.non_2xx for c in outcome.cells for r in c.samples.values())
    if outcome.failed or non_2xx:
        failed = ", ".join(outcome.failed) or "none"
        print(f"error: failed rows: {failed}; non-2xx responses: {non_2xx}", file=sys.stderr)
        return 1
    if args.strict_bars and not bars_hold:
        print("error: a bar failed", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
