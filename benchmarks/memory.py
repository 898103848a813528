"""Memory over a long run: does any backend keep growing? (``python -m benchmarks.memory``)

Drives the real middleware in-process (the same hand-made ASGI loop as
``benchmarks.inprocess``) with a mixed workload for each backend: a pool of returning
browsers that read and write, plus a steady share of new visitors whose sessions are
then abandoned. An injected clock moves 1 s every ``--requests-per-second`` requests,
so abandoned sessions reach their idle timeout (300 s) during the run and a store that
keeps expired or abandoned sessions, or a cache without a bound, shows as growth.

Each row runs twice, on a fresh backend each time. The first pass runs as an
application does, without tracemalloc, and at every tenth of the run records the
process's resident memory (``/proc/self/statm``) and, on glibc, the C heap's bytes in
use and free (``mallinfo2``). The verdict per backend is this pass's: resident memory
over the last quarter grows less than 5% (issue 6). The second pass repeats the
workload under tracemalloc and adds Python's traced memory and its peak since the
previous mark, which show whether any Python object accumulates. Its resident memory
is shown, not judged: tracemalloc records every allocation in blocks it takes from the
same C heap, and on a row that keeps blocks over 512 bytes (which Python takes from
malloc) while it churns others, those records fill the holes that freed blocks leave
and the heap grows with free space in it (the heap-free column). ``--no-tracemalloc``
runs the first pass only. Redis-backed rows also report the server's ``used_memory``;
its keys expire on Redis's own clock, so it is shown, not judged, and each pass deletes
its keys when it ends.

Rows: ``memory`` (MemoryBackend), ``jwt`` (JWTBackend), ``redis`` (RedisBackend on a
private redis-server or ``--redis-url``), ``hybrid`` (HybridBackend over Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import os
import random
import sys
import time
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.inprocess import _interruptible, make_scope
from benchmarks.redis_server import PrivateRedis, redis_server_binary
from benchmarks.report import environment_lines, git_revision
from benchmarks.rows import SECRET, make_app

MODULE = "benchmarks.memory"
ROW_NAMES = ("memory", "jwt", "redis", "hybrid")
IDLE_TIMEOUT = 300
POOL = 2_000  # returning browsers
NEW_SHARE = 0.05  # requests from a new visitor (then abandoned)
WRITE_SHARE = 0.2  # returning browsers' requests that write
MARKS = 10
GROWTH_BAR = 0.05  # last quarter


@dataclass
class Mark:
    requests: int
    rss_mib: float
    traced_mib: float
    peak_mib: float
    redis_mib: float | None = None
    heap_used_mib: float | None = None
    heap_free_mib: float | None = None


@dataclass
class Pass:
    """One run of a row's workload: its marks, how long it took, its statuses."""

    traced: bool
    marks: list[Mark] = field(default_factory=list)
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    def last_quarter_growth(self) -> float:
        """RSS growth over the last quarter of the run, as a fraction."""
        marks = self.marks
        start = next(m for m in marks if m.requests >= marks[-1].requests * 3 / 4)
        return (marks[-1].rss_mib - start.rss_mib) / start.rss_mib


@dataclass
class Outcome:
    """A row: its pass without tracemalloc (judged) and, unless --no-tracemalloc, its
    pass under tracemalloc (shown)."""

    name: str
    plain: Pass
    traced: Pass | None = None

    @property
    def passes(self) -> list[Pass]:
        return [self.plain] if self.traced is None else [self.plain, self.traced]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def _mallinfo2() -> Any:
    """glibc's mallinfo2() (2.33 and later), or None elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _Mallinfo2
    function.argtypes = []
    return function


_MALLINFO2 = _mallinfo2()


def _heap_mib() -> tuple[float | None, float | None]:
    """The C heap's bytes in use (its arenas' and mmapped blocks) and free in its
    arenas, in MiB; (None, None) without glibc's mallinfo2."""
    if _MALLINFO2 is None:
        return None, None
    info = _MALLINFO2()
    return (info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20


def _backend(name: str, redis_url: str | None, clock: Clock) -> Any:
    from asgi_sessions import HybridBackend, JWTBackend, MemoryBackend, RedisBackend

    prefix = f"bench:memory:{uuid.uuid4().hex[:8]}:"
    if name == "memory":
        return MemoryBackend(clock=clock)
    if name == "jwt":
        return JWTBackend(SECRET)
    if redis_url is None:
        raise SystemExit(f"row {name} needs Redis: redis-server is missing and no --redis-url")
    store = RedisBackend(redis_url, prefix=prefix, clock=clock)
    if name == "redis":
        return store
    return HybridBackend(store, secret=SECRET, clock=clock)


async def _call(app: Any, scope: dict[str, Any]) -> tuple[int, bytes | None]:
    status = 0
    cookie = None

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, cookie
        if message["type"] == "http.response.start":
            status = message["status"]
            for key, value in message.get("headers", ()):
                if (
                    key == b"set-cookie"
                    and value.startswith(b"session=")
                    and b"Max-Age=0" not in value
                ):
                    cookie = value.split(b";", 1)[0]

    await app(scope, receive, send)
    return status, cookie


async def run_pass(
    name: str, requests: int, per_second: int, redis_url: str | None, trace: bool
) -> Pass:
    """One pass of row ``name``'s workload on a fresh backend, under tracemalloc or
    not; a Redis-backed pass deletes its keys when it ends."""
    from asgi_sessions import SessionMiddleware

    clock = Clock()
    backend = _backend(name, redis_url, clock)
    store = backend if name == "redis" else getattr(backend, "store", None)
    app = SessionMiddleware(
        make_app(), backend=backend, idle_timeout=IDLE_TIMEOUT, refresh_after=30, clock=clock
    )
    outcome = Pass(trace)
    rng = random.Random(0)
    pool: list[bytes | None] = [None] * POOL
    step = max(1, requests // MARKS)
    gc.collect()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        for i in range(1, requests + 1):
            if i % per_second == 0:
                clock.now += 1
            if rng.random() < NEW_SHARE:
                status, _ = await _call(app, make_scope("/write", None))  # abandoned
            else:
                slot = rng.randrange(POOL)
                path = "/write" if rng.random() < WRITE_SHARE else "/read"
                status, cookie = await _call(app, make_scope(path, pool[slot]))
                if cookie is not None:
                    pool[slot] = cookie
            outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
            if i % step == 0:
                current, peak = tracemalloc.get_traced_memory() if trace else (0, 0)
                if trace:
                    tracemalloc.reset_peak()
                redis_mib = None
                if store is not None:
                    info = await store.client.info("memory")
                    redis_mib = int(info["used_memory"]) / 2**20
                used, free = _heap_mib()
                mark = Mark(i, _rss_mib(), current / 2**20, peak / 2**20, redis_mib, used, free)
                outcome.marks.append(mark)
                heap = "" if used is None else f"  heap used {used:6.1f} free {free:5.1f} MiB"
                print(
                    f"{name}{' (tracemalloc)' if trace else ''}: {i:>9,} requests  "
                    f"rss {mark.rss_mib:7.1f} MiB{heap}  traced {current / 2**20:6.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if trace:
            tracemalloc.stop()
        outcome.seconds = time.perf_counter() - started
        if store is not None:
            await _delete_keys(store.client, store.prefix)
        await backend.aclose()
    return outcome


async def _delete_keys(client: Any, prefix: str) -> None:
    # So a later pass's used_memory column starts from the keys of its own.
    batch = []
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) == 1000:
            await client.unlink(*batch)
            batch.clear()
    if batch:
        await client.unlink(*batch)


async def run_row(
    name: str, requests: int, per_second: int, redis_url: str | None, trace: bool = True
) -> Outcome:
    """Row ``name``: a pass without tracemalloc and, if ``trace``, one under it."""
    plain = await run_pass(name, requests, per_second, redis_url, False)
    traced = await run_pass(name, requests, per_second, redis_url, True) if trace else None
    return Outcome(name, plain, traced)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(outcomes: Sequence[Outcome], args: argparse.Namespace) -> tuple[str, bool]:
    passes = (
        "each row runs twice: without tracemalloc (judged), then under it (shown)"
        if args.trace
        else "each row runs once, without tracemalloc"
    )
    lines = [
        "# asgi-sessions memory over a long run",
        "",
        *environment_lines(MODULE, args.revision),
        f"- workload: a pool of {POOL:,} returning browsers ({WRITE_SHARE:.0%} of their "
        f"requests write), {NEW_SHARE:.0%} of requests from new visitors whose sessions are "
        f"abandoned; idle timeout {IDLE_TIMEOUT} s on a clock that moves 1 s every "
        f"{args.requests_per_second} requests; {passes}",
        "- heap used / heap free: glibc's mallinfo2(), the C heap's bytes in use (with its "
        "mmapped blocks) and free inside its arenas",
        "",
    ]
    holds = True
    for outcome in outcomes:
        plain = outcome.plain
        growth = plain.last_quarter_growth()
        ok = growth < GROWTH_BAR and all(set(p.statuses) == {200} for p in outcome.passes)
        holds &= ok
        for run in outcome.passes:
            title = "under tracemalloc" if run.traced else "without tracemalloc"
            lines += [
                f"## {outcome.name}, {title} ({run.seconds:.0f} s)",
                "",
                "| requests | RSS MiB | heap used MiB | heap free MiB | traced MiB "
                "| traced peak MiB | Redis used_memory MiB |",
                "|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for mark in run.marks:
                traced = f"{mark.traced_mib:.1f} | {mark.peak_mib:.1f}" if run.traced else "- | -"
                lines.append(
                    f"| {mark.requests:,} | {mark.rss_mib:.1f} | {_mib(mark.heap_used_mib)} | "
                    f"{_mib(mark.heap_free_mib)} | {traced} | {_mib(mark.redis_mib)} |"
                )
            statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(run.statuses.items()))
            if run.traced:
                verdict = (
                    f"- shown, not judged: RSS under tracemalloc grew "
                    f"{run.last_quarter_growth():+.1%} over the last quarter"
                )
            else:
                verdict = (
                    f"- {'PASS' if ok else 'FAIL'}: RSS grew {growth:+.1%} over the last "
                    f"quarter (bar: under {GROWTH_BAR:.0%}; every response a 200)"
                )
            lines += ["", f"{verdict}; statuses {statuses}", ""]
    return "\n".join(lines), holds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="per row (1,000,000)")
    parser.add_argument(
        "--requests-per-second", type=int, default=100, help="requests per simulated second"
    )
    parser.add_argument("--only", help=f"comma-separated rows ({', '.join(ROW_NAMES)})")
    parser.add_argument("--redis-url", help="use this Redis (keys under 'bench:memory:')")
    parser.add_argument("--markdown-out", help="also write the report here")
    parser.add_argument(
        "--no-tracemalloc",
        dest="trace",
        action="store_false",
        help="the pass without tracemalloc only (the judged one): no traced columns",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20,000 requests per row, a smoke run: fails only on a non-200 response",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 20_000
    args.rows = ROW_NAMES if not args.only else tuple(args.only.split(","))
    unknown = set(args.rows) - set(ROW_NAMES)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {ROW_NAMES}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.revision = git_revision()  # at the start: what the rows ran
    with _interruptible():
        if args.redis_url or not any(r in ("redis", "hybrid") for r in args.rows):
            return _run(args, args.redis_url)
        if redis_server_binary() is None:
            print("note: redis-server is missing: Redis rows skipped", file=sys.stderr)
            args.rows = tuple(r for r in args.rows if r not in ("redis", "hybrid"))
            return _run(args, None)
        with PrivateRedis() as server:
            return _run(args, server.url)


def _run(args: argparse.Namespace, redis_url: str | None) -> int:
    outcomes = [
        asyncio.run(run_row(name, args.requests, args.requests_per_second, redis_url, args.trace))
        for name in args.rows
    ]
    report, holds = render(outcomes, args)
    print(report)
    if args.markdown_out:
        with open(args.markdown_out, "w") as out:
            out.write(report + "\n")
    if args.quick:
        # A smoke run (CI): too short for caches to fill, so only errors count.
        statuses = [set(p.statuses) for o in outcomes for p in o.passes]
        return 0 if all(s == {200} for s in statuses) else 1
    return 0 if holds else 1


if __name__ == "__main__":
    raise SystemExit(main())
