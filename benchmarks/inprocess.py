"""In-process benchmark: every row of ``benchmarks.rows`` driven by a hand-made ASGI
loop (no server, no network), side by side, in one asyncio event loop.

    python -m benchmarks.inprocess [--rounds N] [--requests N] [--quick]
                                   [--only ROWS] [--scenarios KEYS]
                                   [--markdown-out FILE] [--strict-bars]
                                   [--redis-url URL] [--profile ROW:SCENARIO ...]

Method: a *cell* is one (row, scenario) pair; a *sample* times ``--requests``
back-to-back requests of one cell with ``time.perf_counter_ns``. Each round takes
one sample of every cell: the scenarios in a shuffled order and, within a scenario,
the rows back to back in a shuffled order, so drift and bursts of load from other
processes hit every row alike and a row is always timed within a fraction of a
second of the ``bare`` floor it is compared with. A cell's µs is the median over
rounds of each sample's mean; its ratio (and overhead) is the median over rounds of
the sample divided by (minus) the same round's ``bare`` sample. ``gc.collect()``
runs before each sample, never inside one, and ``gc.freeze()`` then parks the
survivors so no collection rescans a heap that other cells grew (the memory
backend's sessions). A sample during which the process lost the CPU is retaken.

Redis rows (DESIGN §6: ours and starsessions on Redis, and the floors: the bare app
plus one raw GET, or a GET and a SET) talk to a private ``redis-server`` that the
harness starts on a free loopback port and stops by its PID at the end, or to
``--redis-url``; without either they are skipped with a note. Their samples time a
quarter of ``--requests`` (a Redis request costs 10 to 40 bare ones), and a sample
counts as contended when this thread and the server waited for a CPU (schedstat)
rather than by this process's CPU share, since such a row waits on the server. Their
Redis commands per request are counted per scenario over an untimed batch, from
``MONITOR`` (round trips) and ``INFO commandstats`` (every command executed,
including those a Lua script runs); see ``benchmarks.redis_server``.

Correctness is checked outside the timed region, before the first sample and again
after every sample: the scenario really happened (the read saw the stored value,
the write emitted a Set-Cookie whose value reads back, untouched sessions sent no
Set-Cookie unless the row is known to always re-send it) and the asgi_sessions
logger stayed silent. Any misbehaviour marks the row BROKEN and exits 1, so
``python -m benchmarks.inprocess --quick`` doubles as a CI smoke check.

Exit status: 0 fine, 1 a row misbehaved, 2 a DESIGN §6 bar failed (only with
``--strict-bars``). Rows that cannot run here (e.g. a backend that does not import)
are skipped with a note and do not change the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import gc
import io
import logging
import pstats
import random
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from starlette.types import ASGIApp, Message

from benchmarks.redis_server import (
    CommandCount,
    PrivateRedis,
    RedisStartError,
    count_commands,
    redis_server_binary,
    schedstat_wait_ns,
)
from benchmarks.report import environment_lines, git_revision, source_digest, spinners
from benchmarks.rows import (
    ROWS,
    SCENARIOS,
    USER,
    Row,
    RowUnavailable,
    Scenario,
    configure_redis,
    make_app,
)

MODULE = "benchmarks.inprocess"
FULL = (80, 400)  # rounds, requests per sample: 1.5 to 2.5 minutes on 2 cores
QUICK = (8, 200)

# The same request line and headers for every row; only the Cookie header differs.
BASE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"bench.example"),
    (b"user-agent", b"asgi-sessions-benchmark/1.0"),
    (b"accept", b"text/plain,*/*;q=0.8"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"accept-language", b"en-US,en;q=0.5"),
]
# The floor carries a cookie of typical size in the cookie scenarios; nothing reads it.
BARE_COOKIE = b"session=" + b"x" * 160

# A sample during which this process ran less than this share of the wall time
# (another process had the CPU) is taken again, at most RETAKES times.
CPU_SHARE = 0.95
RETAKES = 2

# The JWT read bar is checked for the default backend (a returning browser's token
# is a cache hit) and for one that verifies every request (a token seen first).
JWT_READ_ROWS = ("ours-jwt", "ours-jwt-nocache")
S1_RATIO_BAR = 1.2

# The Redis bars: ours-redis against the raw-Redis floor of the same round, and the
# commands it may send per request (round trips) in each scenario.
REDIS_ROW = "ours-redis"
REDIS_RIVAL = "starsessions-redis"
REDIS_FLOORS = {"s2": "bare+GET", "s5": "bare+GET", "s3": "bare+GET+SET"}
REDIS_RATIO_BAR = 1.15
REDIS_COMMAND_BARS: dict[str, tuple[int, int, str]] = {  # key -> (least, most, wording)
    "s1": (0, 0, "none"),
    "s2": (1, 1, "exactly 1"),
    "s3": (0, 2, "at most 2"),
    "s5": (1, 1, "exactly 1"),
}
# The hybrid bar: a read with a valid access token against the JWT backend's read of
# the same round, and no Redis command at all where the access token answers.
HYBRID_ROW = "ours-hybrid"
HYBRID_RIVAL = "ours-jwt"
HYBRID_RATIO_BAR = 1.2
HYBRID_SILENT = ("s2", "s5")
# Requests per cell in the untimed batch whose Redis commands are counted.
COUNT_REQUESTS = 50
# A Redis request costs 10 to 40 times a bare one, so a Redis row's sample times
# this share of --requests: its samples last about as long as the others', and the
# full run stays within about four minutes. Ratios are per request, so the pairs
# (ours-redis with its floor, both Redis rows) are unaffected.
REDIS_SAMPLE_SHARE = 0.25


def redis_sample_size(requests: int) -> int:
    return max(10, round(requests * REDIS_SAMPLE_SHARE))


def sample_size(cell: Cell, requests: int) -> int:
    """Requests per sample of ``cell`` when ``--requests`` is ``requests``."""
    return redis_sample_size(requests) if cell.talks_to_redis else requests


# -- the ASGI loop -----------------------------------------------------------------

_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> Message:
    return _REQUEST


async def _discard(message: Message) -> None:
    return None


def make_scope(
    path: str, cookie: bytes | None, session: dict[str, Any] | None = None
) -> dict[str, Any]:
    headers = list(BASE_HEADERS)
    if cookie is not None:
        headers.append((b"cookie", cookie))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii"),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    if session is not None:
        scope["session"] = session
    return scope


async def timed(app: ASGIApp, template: dict[str, Any], requests: int) -> int:
    """Nanoseconds for ``requests`` requests; each gets a shallow copy of the scope
    (the app adds keys to it), the headers list is shared and never mutated."""
    copy = template.copy
    receive = _receive
    send = _discard
    start = time.perf_counter_ns()
    for _ in range(requests):
        await app(copy(), receive, send)
    return time.perf_counter_ns() - start


@dataclass(slots=True)
class Response:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def set_cookies(self) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == b"set-cookie"]


async def call(app: ASGIApp, scope: dict[str, Any]) -> Response:
    response = Response()

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")

    await app(scope, _receive, capture)
    return response


def cookie_header(response: Response, name: str) -> bytes | None:
    """The Cookie header a browser would send back for the session cookie (or its
    chunks) set by ``response``; ``None`` if none was set."""
    prefix = name.encode("latin-1")
    pairs = []
    for value in response.set_cookies():
        pair, _, attributes = value.partition(b";")
        key, eq, content = pair.strip().partition(b"=")
        lowered = attributes.lower()
        if not eq or b"max-age=0" in lowered or b"expires=thu, 01 jan 1970" in lowered:
            continue
        if key == prefix or key.startswith(prefix + b"."):
            pairs.append(key + b"=" + content)
    return b"; ".join(pairs) if pairs else None


# -- cells and checks --------------------------------------------------------------


class Misbehaviour(Exception):
    """A row did not do what the scenario needs."""


class LogWatch(logging.Handler):
    """Counts warnings of the asgi_sessions logger: a healthy run emits none."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.last = record.getMessage()


@dataclass(slots=True)
class Cell:
    name: str
    row: Row
    scenario: Scenario
    cookie: bytes | None
    template: dict[str, Any]
    samples: dict[int, float] = field(default_factory=dict)  # round -> µs per request
    commands: CommandCount | None = None  # Redis rows: counted over an untimed batch
    retaken: int = 0  # samples taken again for contention

    @property
    def talks_to_redis(self) -> bool:
        """A Redis row in a scenario where it sends commands (ours-redis without a
        cookie sends none: that cell is timed like any CPU-bound one)."""
        if self.row.redis_url is None:
            return False
        return self.commands is None or self.commands.round_trips > 0


def expects_set_cookie(row: Row, scenario: Scenario) -> bool:
    if row.plain_session:
        return False
    return scenario.writes or (scenario.cookie and row.resaves_unchanged)


async def check(cell: Cell, watch: LogWatch) -> list[str]:
    """What is wrong with this cell's behaviour (empty when it does what it says)."""
    try:
        return await _check(cell, watch)
    except Exception as exc:
        return [f"raised {exc!r}"]


async def _check(cell: Cell, watch: LogWatch) -> list[str]:
    row, scenario = cell.row, cell.scenario
    problems = []
    warnings_before = watch.count
    response = await call(row.app, cell.template.copy())
    body = response.body.decode("utf-8", "replace")
    if response.status != 200:
        problems.append(f"status {response.status}")
    if scenario.reads:
        if body != USER:
            problems.append(f"read saw {body!r}, expected the stored {USER!r}")
    elif scenario.writes:
        if not body.isdigit():
            problems.append(f"write handler answered {body!r}")
    elif body != "ok":
        problems.append(f"answered {body!r}")

    set_cookies = response.set_cookies()
    if expects_set_cookie(row, scenario):
        if not set_cookies:
            problems.append("no Set-Cookie")
    elif set_cookies:
        problems.append(f"unexpected Set-Cookie {set_cookies[0][:60]!r}")

    if scenario.writes and body.isdigit():
        if row.plain_session:
            stored = cell.template["session"].get("n")
            if str(stored) != body:
                problems.append(f"write stored {stored!r}, handler wrote {body}")
        else:
            cookie = cookie_header(response, row.cookie_name)
            if cookie is None:
                problems.append("the write's Set-Cookie carries no session cookie")
            else:
                peek = await call(row.app, make_scope("/peek", cookie))
                seen = peek.body.decode("utf-8", "replace")
                if seen != body:
                    problems.append(f"wrote {body}, its cookie reads back {seen!r}")
    if watch.count != warnings_before:
        problems.append(f"asgi_sessions logged a warning: {watch.last!r}")
    return problems


async def login(row: Row) -> bytes:
    """A real cookie for ``row``: one /login request through the row itself."""
    response = await call(row.app, make_scope("/login", None))
    cookie = cookie_header(response, row.cookie_name)
    if response.status != 200 or cookie is None:
        raise Misbehaviour(f"login answered {response.status} without a session cookie")
    return cookie


async def build_cells(
    names: Sequence[str],
    scenarios: Sequence[Scenario],
    notes: list[str],
    broken: dict[str, list[str]],
) -> tuple[list[Cell], list[Row]]:
    """Build every row (skipping those unavailable here) and log each one in."""
    cells = []
    rows = []
    for name in names:
        spec = ROWS[name]
        try:
            row = await spec.factory(make_app())
        except RowUnavailable as exc:
            notes.append(f"**{name} skipped**: {exc}")
            print(f"note: row {name} skipped: {exc}", file=sys.stderr)
            continue
        rows.append(row)
        cookie = None
        if not row.plain_session and any(s.cookie for s in scenarios):
            try:
                cookie = await login(row)
            except Exception as exc:
                broken.setdefault(name, []).append(f"login: {exc}")
        for scenario in scenarios:
            if row.scenarios is not None and scenario.key not in row.scenarios:
                continue
            if row.plain_session:
                data: dict[str, Any] | None = {"user": USER, "n": 0} if scenario.cookie else {}
                sent = BARE_COOKIE if scenario.cookie else None
            else:
                data = None
                sent = cookie if scenario.cookie else None
            template = make_scope(scenario.path, sent, data)
            cells.append(Cell(name, row, scenario, sent, template))
    return cells, rows


# -- the run -----------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    cells: list[Cell]
    broken: dict[str, list[str]]  # row name -> problems
    notes: list[str]
    seconds: float
    revision: str = "unknown"
    redis: str = ""  # which Redis server the Redis rows used, for the report header
    busy: int = 0  # spinning processes meanwhile (--busy)


def _run_queue_wait(redis_pid: int | None) -> int:
    """Nanoseconds this thread (and the private redis-server, when there is one) spent
    runnable but without a CPU, so far."""
    waited = schedstat_wait_ns() or 0
    if redis_pid is not None:
        waited += schedstat_wait_ns(redis_pid) or 0
    return waited


async def sample(cell: Cell, requests: int, redis_pid: int | None = None) -> tuple[int, bool]:
    """One timed sample: nanoseconds, and whether this process had the CPU.

    A row that uses no Redis is CPU-bound: it had the CPU when this process ran for
    at least ``CPU_SHARE`` of the wall time. A Redis row spends much of its time
    waiting for the server, so there the test is the time this thread and the
    server spent runnable but waiting for a CPU (``/proc/*/schedstat``): at most
    ``1 - CPU_SHARE`` of the wall time."""
    if not cell.talks_to_redis:
        cpu_start = time.process_time_ns()
        elapsed = await timed(cell.row.app, cell.template, requests)
        return elapsed, time.process_time_ns() - cpu_start >= CPU_SHARE * elapsed
    waited = _run_queue_wait(redis_pid)
    elapsed = await timed(cell.row.app, cell.template, requests)
    waited = _run_queue_wait(redis_pid) - waited
    return elapsed, waited <= (1 - CPU_SHARE) * elapsed


async def count_cells(
    cells: Sequence[Cell],
    skip: Callable[[Cell], bool],
    fail: Callable[[Cell, list[str]], None],
) -> None:
    """Redis commands per request of every Redis cell, over an untimed batch of
    ``COUNT_REQUESTS`` requests (after the warm-up: the scripts are cached and the
    pool is connected, as in the steady state)."""
    from redis.asyncio import Redis

    counters: dict[str, Redis] = {}
    try:
        for cell in cells:
            url = cell.row.redis_url
            if url is None or skip(cell):
                continue
            if url not in counters:
                counters[url] = Redis.from_url(url)
            app, template = cell.row.app, cell.template

            async def batch(app: ASGIApp = app, template: dict[str, Any] = template) -> None:
                await timed(app, template, COUNT_REQUESTS)

            try:
                cell.commands = await count_commands(counters[url], batch, COUNT_REQUESTS)
            except Exception as exc:
                fail(cell, [f"raised {exc!r} while its Redis commands were counted"])
    finally:
        for counter in counters.values():
            await counter.aclose()


async def run(
    names: Sequence[str],
    scenarios: Sequence[Scenario],
    rounds: int,
    requests: int,
    seed: int,
    progress: bool,
    redis_pid: int | None = None,
) -> Outcome:
    started = time.perf_counter()
    watch = LogWatch()
    package_logger = logging.getLogger("asgi_sessions")
    package_logger.addHandler(watch)
    notes: list[str] = []
    broken: dict[str, list[str]] = {}
    retaken = contended = 0
    rows: list[Row] = []

    def fail(cell: Cell, problems: list[str]) -> None:
        for problem in problems:
            broken.setdefault(cell.name, []).append(f"{cell.scenario.key}: {problem}")

    try:
        cells, rows = await build_cells(names, scenarios, notes, broken)
        for cell in cells:
            if cell.name not in broken and (problems := await check(cell, watch)):
                fail(cell, problems)

        # Warm up every cell (imports, caches, specialisation) before measuring.
        for cell in cells:
            if cell.name not in broken:
                try:
                    await timed(cell.row.app, cell.template, max(20, requests // 5))
                except Exception as exc:
                    fail(cell, [f"raised {exc!r} in the warm-up"])
        await count_cells(cells, lambda cell: cell.name in broken, fail)
        if any(c.row.redis_url for c in cells) and schedstat_wait_ns() is None:
            notes.append(
                "/proc/thread-self/schedstat is missing here: samples of the Redis rows "
                "were never retaken for contention"
            )

        # The rows of one scenario run back to back (in a fresh order each round), so
        # a row and the floor it is compared with are timed within a fraction of a
        # second of each other: the paired ratios survive bursts of load from other
        # processes, which on a shared machine slow everything down for seconds.
        groups = [[c for c in cells if c.scenario is s] for s in scenarios]
        rng = random.Random(seed)
        next_report = started + 10
        gc.collect()
        gc.freeze()
        for round_number in range(rounds):
            rng.shuffle(groups)
            for group in groups:
                rng.shuffle(group)
                for cell in group:
                    if cell.name in broken:
                        continue
                    warnings_before = watch.count
                    size = sample_size(cell, requests)
                    for attempt in range(RETAKES + 1):
                        # Collect between samples, never inside one. Freezing what
                        # survives keeps each collection (and any inside a sample)
                        # from scanning the whole heap, such as every session the
                        # memory backend holds by now.
                        gc.collect()
                        gc.freeze()
                        try:
                            elapsed, had_cpu = await sample(cell, size, redis_pid)
                        except Exception as exc:
                            fail(cell, [f"raised {exc!r} while timed"])
                            break
                        if had_cpu:
                            break
                        if attempt < RETAKES:
                            retaken += 1
                            cell.retaken += 1
                        else:
                            contended += 1
                    if cell.name in broken:
                        continue
                    cell.samples[round_number] = elapsed / size / 1000
                    problems = await check(cell, watch)
                    if watch.count != warnings_before and not problems:
                        problems = [f"asgi_sessions logged a warning: {watch.last!r}"]
                    if problems:
                        fail(cell, problems)
            if progress and time.perf_counter() >= next_report:
                next_report += 10
                print(
                    f"round {round_number + 1}/{rounds} ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                )
    finally:
        gc.unfreeze()
        for row in rows:
            if row.aclose is not None:
                with contextlib.suppress(Exception):
                    await row.aclose()
        package_logger.removeHandler(watch)
    if retaken or contended:
        redis_retaken = sum(c.retaken for c in cells if c.talks_to_redis)
        of_redis = f" ({redis_retaken} of them in cells that send Redis commands)"
        notes.append(
            f"{retaken} samples were retaken because another process had the CPU for over "
            f"{100 - 100 * CPU_SHARE:.0f}% of them{of_redis if redis_retaken else ''}; "
            f"{contended} stayed contended after {RETAKES} retakes and were kept"
        )
    return Outcome(cells, broken, notes, time.perf_counter() - started)


async def one_cell(
    name: str, key: str, measure: Callable[[Cell, Scenario], Awaitable[str]]
) -> tuple[str, bool]:
    """Build the cell of row ``name`` in scenario ``key``, check that it behaves, then
    ``measure`` it: the text to print, and whether the cell behaved."""
    scenario = next(s for s in SCENARIOS if s.key == key)
    notes: list[str] = []
    broken: dict[str, list[str]] = {}
    cells, rows = await build_cells([name], [scenario], notes, broken)
    try:
        if broken:
            return f"{name} {key} BROKEN: " + "; ".join(broken[name]) + "\n", False
        if not cells:
            return "\n".join(notes or [f"{name} does not run in {key}"]) + "\n", True
        watch = LogWatch()
        logging.getLogger("asgi_sessions").addHandler(watch)
        try:
            if problems := await check(cells[0], watch):
                return f"{name} {key} BROKEN: " + "; ".join(problems) + "\n", False
            return await measure(cells[0], scenario), True
        finally:
            logging.getLogger("asgi_sessions").removeHandler(watch)
    finally:
        for row in rows:
            if row.aclose is not None:
                await row.aclose()


async def profile(name: str, key: str, requests: int, top: int) -> tuple[str, bool]:
    """cProfile of one cell's hot loop (after a check and a warm-up): the ``top``
    functions by own time, and whether the cell behaved."""

    async def measure(cell: Cell, scenario: Scenario) -> str:
        await timed(cell.row.app, cell.template, max(20, requests // 5))
        gc.collect()
        profiler = cProfile.Profile()
        profiler.enable()
        await timed(cell.row.app, cell.template, requests)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
        overall = stream.getvalue()
        stream.seek(0)
        stream.truncate()
        # The same profile restricted to the package, which the overall list buries
        # under Starlette's own frames.
        stats.print_stats("asgi_sessions", top)
        ours = stream.getvalue()
        ours = ours[ours.find("   ncalls") :] if "   ncalls" in ours else ours
        title = f"## cProfile: {name}, {key} ({scenario.title}), {requests} requests, by tottime"
        return f"{title}\n{overall}\n### only asgi_sessions functions\n\n{ours}"

    return await one_cell(name, key, measure)


async def phases(name: str, key: str, requests: int) -> tuple[str, bool]:
    """One cell's requests timed in phases, from timestamps taken where a command is
    written to its socket and where redis-py's connection has parsed the reply (after
    a check and a warm-up): the medians of each stretch of Python and of each round
    trip, and whether the cell behaved."""

    async def measure(cell: Cell, scenario: Scenario) -> str:
        timings = await _timestamps(cell, requests)
        return _phases_table(
            timings, f"## Phases: {name}, {key} ({scenario.title}), {requests} requests"
        )

    return await one_cell(name, key, measure)


async def _timestamps(cell: Cell, requests: int) -> list[list[int]]:
    """For each of ``requests`` requests (after a warm-up): its start, the time of each
    write of a Redis command and of each parsed reply, and its end."""
    from redis.asyncio.connection import AbstractConnection

    app, template = cell.row.app, cell.template
    marks: list[int] = []
    clock = time.perf_counter_ns
    # Where any Redis client here (our lean path, redis-py's own) hands a command to
    # the socket, and where redis-py's connection has parsed its reply.
    write, writelines = asyncio.StreamWriter.write, asyncio.StreamWriter.writelines
    read_response = AbstractConnection.read_response

    def marked_write(self: asyncio.StreamWriter, data: Any) -> None:
        marks.append(clock())
        write(self, data)

    def marked_writelines(self: asyncio.StreamWriter, data: Any) -> None:
        marks.append(clock())
        writelines(self, data)

    async def marked_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await read_response(self, *args, **kwargs)
        finally:
            marks.append(clock())

    asyncio.StreamWriter.write = marked_write  # type: ignore[method-assign]
    asyncio.StreamWriter.writelines = marked_writelines  # type: ignore[method-assign]
    AbstractConnection.read_response = marked_read  # type: ignore[method-assign]
    timings: list[list[int]] = []
    try:
        await timed(app, template, max(20, requests // 5))
        gc.collect()
        for _ in range(requests):
            marks.clear()
            start = clock()
            await app(template.copy(), _receive, _discard)
            timings.append([start, *marks, clock()])
    finally:
        asyncio.StreamWriter.write = write  # type: ignore[method-assign]
        asyncio.StreamWriter.writelines = writelines  # type: ignore[method-assign]
        AbstractConnection.read_response = read_response  # type: ignore[method-assign]
    return timings


def _phases_table(timings: list[list[int]], title: str) -> str:
    shapes = collections.Counter(len(t) for t in timings)
    size = shapes.most_common(1)[0][0]
    trips = (size - 2) // 2
    if trips == 0:
        return f"{title}\n\nno Redis command\n"
    names = []
    for trip in range(1, trips + 1):
        names.append(
            "Python before command 1" if trip == 1 else f"Python between {trip - 1} and {trip}"
        )
        names.append(f"command {trip}: sent to reply read")
    names.append(f"Python after command {trips}'s reply")
    lines = [
        title,
        "",
        "| stretch | median µs | 25th-75th |",
        "|---|---:|---:|",
    ]
    kept = [t for t in timings if len(t) == size]
    for index, label in enumerate(names):
        values = [(t[index + 1] - t[index]) / 1000 for t in kept]
        low, middle, high = _quartiles(values)
        lines.append(f"| {label} | {middle:.1f} | {low:.1f}-{high:.1f} |")
    low, middle, high = _quartiles([(t[-1] - t[0]) / 1000 for t in kept])
    lines.append(f"| whole request | {middle:.1f} | {low:.1f}-{high:.1f} |")
    lines += [
        "",
        f"{len(kept)} of {len(timings)} requests sent {trips} command(s) and are counted;"
        " a command is timed from its write to the socket to its parsed reply (redis-py's"
        " parser, for our lean path too), which the stretches of Python lie between.",
    ]
    return "\n".join(lines) + "\n"


# -- the report --------------------------------------------------------------------


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclass(slots=True)
class Figures:
    """What the report says about one cell, against the floor of its scenario."""

    micros: float  # median µs per request
    ratios: list[float]  # per round: this cell / bare, same round
    overheads: list[float]  # per round: this cell - bare, same round (µs)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def overhead(self) -> float | None:
        return statistics.median(self.overheads) if self.overheads else None


def figures(outcome: Outcome) -> dict[tuple[str, str], Figures]:
    grid = {(c.name, c.scenario.key): c for c in outcome.cells}
    result = {}
    for (name, key), cell in grid.items():
        if name in outcome.broken or not cell.samples:
            continue
        floor = grid.get(("bare", key))
        floor_samples = floor.samples if floor is not None and "bare" not in outcome.broken else {}
        pairs = [(v, floor_samples[r]) for r, v in cell.samples.items() if r in floor_samples]
        result[(name, key)] = Figures(
            micros=statistics.median(cell.samples.values()),
            ratios=[v / f for v, f in pairs],
            overheads=[v - f for v, f in pairs],
        )
    return result


def render(
    outcome: Outcome,
    names: Sequence[str],
    scenarios: Sequence[Scenario],
    rounds: int,
    requests: int,
) -> tuple[str, bool]:
    """The markdown report, and whether every measured DESIGN §6 bar holds."""
    grid = {(c.name, c.scenario.key): c for c in outcome.cells}
    table = figures(outcome)
    measured = [n for n in names if any(c.name == n for c in outcome.cells)]

    lines = ["# asgi-sessions in-process benchmark", ""]
    lines += environment_lines(MODULE, outcome.revision)
    if outcome.redis:
        lines.append(f"- redis: {outcome.redis}")
    if outcome.busy:
        lines.append(
            f"- load: {outcome.busy} spinning process(es) at nice 19 (`--busy`), so no CPU "
            "goes idle between a command's write and its reply: a diagnostic run (what "
            "waking an idle CPU costs here); the DESIGN §6 bars are judged on a run without"
        )
    redis_size = ""
    if any(c.talks_to_redis for c in outcome.cells):
        redis_size = (
            f" ({redis_sample_size(requests)} where a row sends Redis commands: see the notes)"
        )
    lines += [
        f"- method: {rounds} rounds x {requests} requests per sample{redis_size}; each "
        "round runs the "
        "scenarios in a shuffled order and, within a scenario, every row back to back in a "
        "shuffled order; µs is the median over rounds of each sample's mean; the ratio and "
        "the overhead are medians over rounds of the row paired with `bare` of the same "
        f"round and scenario; the run took {outcome.seconds:.0f} s",
        "",
        "µs per request (ratio to `bare` in the same scenario):",
        "",
    ]
    header = [
        "row",
        *(f"{s.key}: {s.title}" for s in scenarios),
        "Redis cmds/req",
        "commandstats calls/req",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---" + "|---:" * len(scenarios) + "|:---:|:---:|")
    for name in measured:
        texts = []
        for scenario in scenarios:
            fig = table.get((name, scenario.key))
            if name in outcome.broken:
                texts.append("BROKEN")
            elif fig is None:
                texts.append("-")
            elif fig.ratio is None:
                texts.append(f"{fig.micros:.1f} µs")
            else:
                texts.append(f"{fig.micros:.1f} µs ({fig.ratio:.2f}x)")
        cells = [grid.get((name, s.key)) for s in scenarios]
        counts = [None if c is None else c.commands for c in cells]
        if all(c is None for c in counts):
            commands = executed = "-"
        else:
            # One figure per scenario, in column order: "-" where the row did not run.
            commands = "/".join(
                "-" if cell is None else "?" if count is None else count.round_trips_text
                for cell, count in zip(cells, counts, strict=True)
            )
            executed = "/".join(
                "-" if cell is None else "?" if count is None else count.executed_text
                for cell, count in zip(cells, counts, strict=True)
            )
        lines.append(f"| {name} | " + " | ".join(texts) + f" | {commands} | {executed} |")

    lines += [
        "",
        "Noise: the per-round ratio to `bare`, 25th to 75th percentile "
        "(for `bare`: its µs, same percentiles):",
        "",
    ]
    lines.append("| row | " + " | ".join(s.key for s in scenarios) + " |")
    lines.append("|---" + "|---:" * len(scenarios) + "|")
    for name in measured:
        spreads = []
        for scenario in scenarios:
            fig = table.get((name, scenario.key))
            if fig is None:
                spreads.append("-")
            elif name == "bare":
                q1, _, q3 = _quartiles(list(grid[(name, scenario.key)].samples.values()))
                spreads.append(f"{q1:.1f}-{q3:.1f} µs")
            elif fig.ratios:
                q1, _, q3 = _quartiles(fig.ratios)
                spreads.append(f"{q1:.2f}-{q3:.2f}x")
            else:
                spreads.append("-")
        lines.append(f"| {name} | " + " | ".join(spreads) + " |")

    keys = [s.key for s in scenarios if s.key in ("s1", "s2")]
    compared = [n for n in ("starlette", *JWT_READ_ROWS, "ours-memory") if n in measured]
    if keys and compared and "bare" in measured:
        lines += ["", "Overhead over `bare`, µs per request (median of per-round pairs):", ""]
        lines.append("| scenario | " + " | ".join(compared) + " |")
        lines.append("|---" + "|---:" * len(compared) + "|")
        for key in keys:
            texts = []
            for name in compared:
                fig = table.get((name, key))
                overhead = None if fig is None else fig.overhead
                texts.append("-" if overhead is None else f"{overhead:+.2f}")
            lines.append(f"| {key} | " + " | ".join(texts) + " |")

    lines += ["", "DESIGN §6 bars:", ""]
    all_hold = True
    for name in (n for n in measured if n.startswith("ours-")):
        fig = table.get((name, "s1"))
        if fig is None or fig.ratio is None:
            continue
        ok = fig.ratio <= S1_RATIO_BAR
        all_hold &= ok
        q1, _, q3 = _quartiles(fig.ratios)
        lines.append(
            f"- {'PASS' if ok else 'FAIL'}: s1 (no cookie, untouched) {name} is "
            f"{fig.ratio:.2f}x bare (quartiles {q1:.2f}-{q3:.2f}; bar: within {S1_RATIO_BAR}x)"
        )
    star = grid.get(("starlette", "s2"))
    star_fig = table.get(("starlette", "s2"))
    for jwt_name in JWT_READ_ROWS:
        jwt, jwt_fig = grid.get((jwt_name, "s2")), table.get((jwt_name, "s2"))
        if (
            jwt is None
            or star is None
            or jwt_fig is None
            or star_fig is None
            or jwt_fig.overhead is None
            or star_fig.overhead is None
        ):
            if jwt_name in names and "s2" in {s.key for s in scenarios}:
                lines.append(
                    f"- NOT MEASURED: s2 {jwt_name} vs starlette (a row is missing or broken)"
                )
            continue
        # Same round, same scenario: jwt - starlette is their difference in overhead.
        differences = [v - star.samples[r] for r, v in jwt.samples.items() if r in star.samples]
        ok = statistics.median(differences) < 0
        all_hold &= ok
        share = sum(d < 0 for d in differences) / len(differences)
        lines.append(
            f"- {'PASS' if ok else 'FAIL'}: s2 (cookie, read) {jwt_name} overhead "
            f"{jwt_fig.overhead:.2f} µs vs starlette {star_fig.overhead:.2f} µs; {jwt_name} "
            f"was faster in {100 * share:.0f}% of rounds (bar: less overhead than "
            "Starlette's SessionMiddleware)"
        )
    redis_lines, redis_hold = redis_bars(outcome, names, scenarios)
    lines += redis_lines
    all_hold &= redis_hold
    hybrid_lines, hybrid_hold = hybrid_bars(outcome, names, scenarios)
    lines += hybrid_lines
    all_hold &= hybrid_hold
    lines.append("- not measured here: flat memory over a million requests")

    lines += ["", "Rows:", ""]
    lines += [f"- `{n}`: {ROWS[n].description}" for n in names]
    lines += ["", "Scenarios:", ""]
    lines += [f"- {s.key}: {s.title} (`GET {s.path}`)" for s in scenarios]
    lines += [
        "",
        "Notes:",
        "",
        "- `bare` has no session middleware; the harness puts a plain dict into "
        "`scope['session']` so the same handlers run, and sends a dummy cookie of "
        "typical size in the cookie scenarios. `bare+GET` and `bare+GET+SET` are the same "
        "app behind one raw Redis GET (and SET) per request, whatever the scenario.",
        "- starsessions re-signs and re-sends its cookie on every response of a non-empty "
        "session, so its s2/s5 include a Set-Cookie; ours and Starlette's send none there. "
        "With its Redis store that is also a SET on every such request.",
        "- Cookie scenarios reuse one login cookie per row; s3 writes a new value each "
        "request on that same cookie; s4 creates a new session each request (for "
        "`ours-memory` the store keeps growing; past 100,000 sessions it evicts).",
    ]
    if any(c.commands is not None for c in outcome.cells):
        order = "/".join(s.key for s in scenarios)
        lines += [
            f"- Redis cmds/req ({order}): the commands the row's client sent per request "
            "(round trips), from `MONITOR` over an untimed batch of "
            f"{COUNT_REQUESTS} requests per cell after the warm-up (commands a Lua script "
            "runs inside one EVALSHA, and connection set-up, are not round trips). "
            "commandstats calls/req: the sum of `calls` in `INFO commandstats` over the "
            "same batch (the counting's own INFO/MONITOR/ECHO excluded), which also counts "
            "every command run inside a script.",
            "- The Redis rows each have one pooled `redis.asyncio` client made as "
            "`RedisBackend(url)` makes its own (a pool that waits for a free connection, same timeouts and retries). "
            "Where a row sends Redis commands (a non-zero Redis cmds/req), a sample times "
            f"{100 * REDIS_SAMPLE_SHARE:.0f}% of the requests of the others (its requests "
            "cost 10 to 40 bare ones), and it is retaken when this thread and the private "
            f"redis-server together waited for a CPU over {100 - 100 * CPU_SHARE:.0f}% of "
            "its wall time (`/proc/*/schedstat`) rather than by this process's CPU share, "
            "since such a cell waits on the server.",
        ]
    lines += [f"- {note}" for note in outcome.notes]
    for name, problems in outcome.broken.items():
        lines.append(f"- **{name} BROKEN** (not timed further): " + "; ".join(problems[:5]))
    return "\n".join(lines) + "\n", all_hold


def _paired(
    grid: dict[tuple[str, str], Cell], name: str, other: str, key: str
) -> list[tuple[float, float]]:
    """(this row's sample, the other row's sample) for every round both have."""
    mine, theirs = grid.get((name, key)), grid.get((other, key))
    if mine is None or theirs is None:
        return []
    return [(v, theirs.samples[r]) for r, v in mine.samples.items() if r in theirs.samples]


def redis_bars(
    outcome: Outcome, names: Sequence[str], scenarios: Sequence[Scenario]
) -> tuple[list[str], bool]:
    """The DESIGN §6 Redis bar lines, and whether every measured one holds: ours-redis
    against the raw-Redis floor of the same round, its commands per request, and
    against starsessions with its Redis store."""
    if REDIS_ROW not in names:
        return [], True
    grid = {(c.name, c.scenario.key): c for c in outcome.cells if c.name not in outcome.broken}
    if not any(name == REDIS_ROW for name, _ in grid):
        why = "the row is broken" if REDIS_ROW in outcome.broken else "the row did not run"
        return [f"- NOT MEASURED: the Redis bars ({why}; see the notes)"], True
    lines = []
    all_hold = True

    def verdict(ok: bool) -> str:
        nonlocal all_hold
        all_hold &= ok
        return "PASS" if ok else "FAIL"

    for scenario in scenarios:
        key = scenario.key
        floor = REDIS_FLOORS.get(key)
        if floor is None:
            continue
        pairs = _paired(grid, REDIS_ROW, floor, key)
        if not pairs:
            lines.append(
                f"- NOT MEASURED: {key} {REDIS_ROW} vs {floor} (a row is missing or broken)"
            )
            continue
        ratios = [v / f for v, f in pairs]
        ratio = statistics.median(ratios)
        overhead = statistics.median(v - f for v, f in pairs)
        q1, _, q3 = _quartiles(ratios)
        ours = statistics.median(grid[(REDIS_ROW, key)].samples.values())
        base = statistics.median(grid[(floor, key)].samples.values())
        lines.append(
            f"- {verdict(ratio <= REDIS_RATIO_BAR)}: {key} ({scenario.title}) {REDIS_ROW} is "
            f"{ratio:.2f}x {floor} ({ours:.1f} vs {base:.1f} µs, {overhead:+.1f} µs; quartiles "
            f"{q1:.2f}-{q3:.2f}; bar: within {REDIS_RATIO_BAR}x)"
        )
    for scenario in scenarios:
        key = scenario.key
        if key not in REDIS_COMMAND_BARS or (REDIS_ROW, key) not in grid:
            continue
        least, most, wording = REDIS_COMMAND_BARS[key]
        count = grid[(REDIS_ROW, key)].commands
        if count is None:
            lines.append(f"- NOT MEASURED: {key} {REDIS_ROW} Redis commands per request")
            continue
        ok = least * count.requests <= count.round_trips <= most * count.requests
        lines.append(
            f"- {verdict(ok)}: {key} ({scenario.title}) {REDIS_ROW} sends "
            f"{count.round_trips_text} Redis command{'' if count.round_trips == count.requests else 's'} "
            f"per request (bar: {wording})"
        )
    for scenario in scenarios:
        key = scenario.key
        pairs = _paired(grid, REDIS_ROW, REDIS_RIVAL, key)
        if not pairs:
            if REDIS_RIVAL in names:
                lines.append(
                    f"- NOT MEASURED: {key} {REDIS_ROW} vs {REDIS_RIVAL} (a row is missing "
                    "or broken)"
                )
            continue
        differences = [v - r for v, r in pairs]
        share = sum(d < 0 for d in differences) / len(differences)
        ours = statistics.median(grid[(REDIS_ROW, key)].samples.values())
        theirs = statistics.median(grid[(REDIS_RIVAL, key)].samples.values())
        lines.append(
            f"- {verdict(statistics.median(differences) < 0)}: {key} ({scenario.title}) "
            f"{REDIS_ROW} {ours:.1f} µs vs {REDIS_RIVAL} {theirs:.1f} µs; {REDIS_ROW} was "
            f"faster in {100 * share:.0f}% of rounds (bar: faster than starsessions with "
            "its Redis store)"
        )
    return lines, all_hold


def hybrid_bars(
    outcome: Outcome, names: Sequence[str], scenarios: Sequence[Scenario]
) -> tuple[list[str], bool]:
    """The hybrid bar lines (issue 4): ours-hybrid's read with a valid access token
    within 1.2x of ours-jwt's read of the same round, with zero Redis commands."""
    if HYBRID_ROW not in names:
        return [], True
    grid = {(c.name, c.scenario.key): c for c in outcome.cells if c.name not in outcome.broken}
    keys = {s.key for s in scenarios}
    lines = []
    all_hold = True
    if "s2" in keys:
        pairs = _paired(grid, HYBRID_ROW, HYBRID_RIVAL, "s2")
        if not pairs:
            lines.append(f"- NOT MEASURED: s2 {HYBRID_ROW} vs {HYBRID_RIVAL} (a row is missing)")
        else:
            ratios = [v / r for v, r in pairs]
            ratio = statistics.median(ratios)
            q1, _, q3 = _quartiles(ratios)
            ok = ratio <= HYBRID_RATIO_BAR
            all_hold &= ok
            ours = statistics.median(grid[(HYBRID_ROW, "s2")].samples.values())
            theirs = statistics.median(grid[(HYBRID_RIVAL, "s2")].samples.values())
            lines.append(
                f"- {'PASS' if ok else 'FAIL'}: s2 (cookie, read) {HYBRID_ROW} is {ratio:.2f}x "
                f"{HYBRID_RIVAL} ({ours:.1f} vs {theirs:.1f} µs; quartiles {q1:.2f}-{q3:.2f}; "
                f"bar: within {HYBRID_RATIO_BAR}x)"
            )
    for key in HYBRID_SILENT:
        cell = grid.get((HYBRID_ROW, key))
        if key not in keys or cell is None:
            continue
        if cell.commands is None:
            lines.append(f"- NOT MEASURED: {key} {HYBRID_ROW} Redis commands per request")
            continue
        ok = cell.commands.round_trips == 0
        all_hold &= ok
        lines.append(
            f"- {'PASS' if ok else 'FAIL'}: {key} {HYBRID_ROW} sends "
            f"{cell.commands.round_trips_text} Redis commands per request with a valid "
            "access token (bar: none)"
        )
    return lines, all_hold


# -- command line ------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="In-process benchmark of session middlewares (DESIGN §6).",
    )
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL[0]})")
    parser.add_argument("--requests", type=int, help=f"requests per sample (default {FULL[1]})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"fast smoke run: {QUICK[0]} rounds x {QUICK[1]} requests",
    )
    parser.add_argument(
        "--only",
        type=_csv,
        metavar="ROWS",
        help=f"comma-separated rows ({', '.join(ROWS)}); bare is always included",
    )
    parser.add_argument(
        "--scenarios",
        type=_csv,
        metavar="KEYS",
        help=f"comma-separated scenarios ({', '.join(s.key for s in SCENARIOS)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    parser.add_argument("--markdown-out", type=Path, metavar="FILE", help="also write here")
    parser.add_argument(
        "--strict-bars", action="store_true", help="exit 2 when a DESIGN §6 bar fails"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--profile",
        action="append",
        metavar="ROW:SCENARIO",
        help="instead of the benchmark, cProfile one cell's loop (repeatable), e.g. ours-jwt:s2",
    )
    parser.add_argument(
        "--profile-top", type=int, default=15, metavar="N", help="functions to list (15)"
    )
    parser.add_argument(
        "--phases",
        action="append",
        metavar="ROW:SCENARIO",
        help="instead of the benchmark, time one cell's requests in phases (repeatable): "
        "the Python before, between and after its Redis round trips, and the round trips, "
        "e.g. ours-redis:s3",
    )
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="keep N processes spinning at the lowest priority during the run, so no CPU "
        "goes idle: a diagnostic of what idle CPUs' wake-ups cost on this machine (the "
        "bars are judged without it)",
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="the Redis server for the Redis rows (keys under 'bench:', never flushed); "
        "by default the benchmark starts a private redis-server on a free loopback port "
        "and stops it at the end, or skips those rows when redis-server is missing",
    )
    args = parser.parse_args(argv)
    default_rounds, default_requests = QUICK if args.quick else FULL
    args.rounds = default_rounds if args.rounds is None else args.rounds
    args.requests = default_requests if args.requests is None else args.requests
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be at least 1")
    if args.busy < 0:
        parser.error("--busy must not be negative")
    names = list(ROWS)
    if args.only:
        unknown = sorted(set(args.only) - set(ROWS))
        if unknown:
            parser.error(f"unknown rows {', '.join(unknown)}; choose from {', '.join(ROWS)}")
        names = [n for n in ROWS if n == "bare" or n in args.only]
    args.names = names
    scenarios = list(SCENARIOS)
    if args.scenarios:
        known = {s.key for s in SCENARIOS}
        unknown = sorted(set(args.scenarios) - known)
        if unknown:
            parser.error(f"unknown scenarios {', '.join(unknown)}; choose from {sorted(known)}")
        scenarios = [s for s in SCENARIOS if s.key in args.scenarios]
    args.scenario_list = scenarios
    for option in ("profile", "phases"):
        cells = []
        for item in getattr(args, option) or ():
            name, _, key = item.partition(":")
            if name not in ROWS or key not in {s.key for s in SCENARIOS}:
                parser.error(f"--{option} wants ROW:SCENARIO such as ours-redis:s3, got {item!r}")
            cells.append((name, key))
        setattr(args, f"{option}_cells", cells)
    return args


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise at once, wherever the loop is.

    asyncio.run() would turn the first Ctrl-C into a cancellation of the main task,
    and on Python 3.11 redis-py can lose a cancellation (asyncio.wait_for around its
    socket writes returns the result when the cancel lands as the write completes,
    CPython gh-86296), so the run would go on. A handler of our own makes asyncio.run
    leave SIGINT alone."""
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, _raise_keyboard_interrupt),
        signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_system_exit),
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def redis_for(needed: bool, url: str | None) -> Iterator[tuple[int | None, str]]:
    """Point the Redis rows at a server for the duration of the block: ``url``, else
    a private redis-server (stopped by its PID when the block ends, also on an error,
    Ctrl-C or SIGTERM), else none (the rows are skipped with a note). Yields the
    private server's PID (or None) and a line for the report."""
    if not needed:
        configure_redis(None, "not requested")
        yield None, ""
        return
    if url is not None:
        from redis import Redis

        try:
            with Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
                version = client.info("server").get("redis_version", "?")
        except Exception as exc:
            raise SystemExit(f"error: --redis-url {_without_password(url)}: {exc!r}") from None
        configure_redis(url)
        yield None, f"redis-server {version} at {_without_password(url)} (--redis-url)"
        return
    if redis_server_binary() is None:
        why = "redis-server is not on PATH (install it, or pass --redis-url URL)"
        configure_redis(None, why)
        yield None, f"none: {why}"
        return
    with _interruptible():
        try:
            server = PrivateRedis()
            server.__enter__()
        except RedisStartError as exc:
            why = f"the private redis-server did not start: {exc}"
            configure_redis(None, why)
            yield None, f"none: {why}"
            return
        try:
            configure_redis(server.url)
            print(
                f"note: private redis-server {server.version} on {server.url} (pid {server.pid})",
                file=sys.stderr,
            )
            yield (
                server.pid,
                f"a private redis-server {server.version} on a free loopback port, "
                '`--save "" --appendonly no`, started and stopped by the benchmark',
            )
        finally:
            server.stop()
            configure_redis(None, "the private redis-server was stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    special = args.profile_cells + args.phases_cells
    wanted = {name for name, _ in special} if special else args.names
    needs_redis = any(ROWS[name].redis for name in wanted)
    with redis_for(needs_redis, args.redis_url) as (redis_pid, redis_line):
        if special:
            behaved = True
            for name, key in args.profile_cells:
                text, ok = asyncio.run(profile(name, key, args.requests, args.profile_top))
                behaved &= ok
                print(text)
            for name, key in args.phases_cells:
                text, ok = asyncio.run(phases(name, key, args.requests))
                behaved &= ok
                print(text)
            return 0 if behaved else 1
        return _benchmark(args, redis_pid, redis_line)


def _benchmark(args: argparse.Namespace, redis_pid: int | None, redis_line: str) -> int:
    revision, digest = git_revision(), source_digest()
    with spinners(args.busy):
        outcome = asyncio.run(
            run(
                args.names,
                args.scenario_list,
                args.rounds,
                args.requests,
                args.seed,
                progress=not args.quiet,
                redis_pid=redis_pid,
            )
        )
    outcome.busy = args.busy
    outcome.revision = revision
    outcome.redis = redis_line
    if source_digest() != digest:
        outcome.notes.append(
            "**the asgi_sessions sources changed on disk during the run**: the figures "
            f"are for the code as imported at the start ({revision}); run again"
        )
    text, bars_hold = render(outcome, args.names, args.scenario_list, args.rounds, args.requests)
    print(text)
    if args.markdown_out is not None:
        args.markdown_out.write_text(text, encoding="utf-8")
    if outcome.broken:
        print(f"error: misbehaving rows: {', '.join(outcome.broken)}", file=sys.stderr)
        return 1
    if args.strict_bars and not bars_hold:
        print("error: a DESIGN §6 bar failed", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
