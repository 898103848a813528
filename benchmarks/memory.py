"""Memory over a long run: does any backend keep growing? (``python -m benchmarks.memory``)

Drives the real middleware in-process (the same hand-made ASGI loop as
``benchmarks.inprocess``) with a mixed workload for each backend: a pool of returning
browsers that read and write, plus a steady share of new visitors whose sessions are
then abandoned. An injected clock moves 1 s every ``--requests-per-second`` requests,
so abandoned sessions reach their idle timeout (300 s) during the run and a store that
keeps expired or abandoned sessions, or a cache without a bound, shows as growth.

At every tenth of the run it records the process's resident memory (``/proc/self/
statm``) and tracemalloc's current and peak traced memory since the previous mark. The
verdict per backend: resident memory over the last quarter of the run grows less than
5% (issue 6). Redis-backed rows also report the server's ``used_memory``; its keys
expire on Redis's own clock, so it is shown, not judged. ``--no-tracemalloc`` measures
resident memory alone: tracemalloc's own per-allocation records take memory and fragment
the heap, which shows in RSS on a row that churns many objects.

Rows: ``memory`` (MemoryBackend), ``jwt`` (JWTBackend), ``redis`` (RedisBackend on a
private redis-server or ``--redis-url``), ``hybrid`` (HybridBackend over Redis).
"""

from __future__ import annotations

import argparse
import asyncio
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


@dataclass
class Outcome:
    name: str
    marks: list[Mark] = field(default_factory=list)
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    def last_quarter_growth(self) -> float:
        """RSS growth over the last quarter of the run, as a fraction."""
        marks = self.marks
        start = next(m for m in marks if m.requests >= marks[-1].requests * 3 / 4)
        return (marks[-1].rss_mib - start.rss_mib) / start.rss_mib


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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


async def run_row(
    name: str, requests: int, per_second: int, redis_url: str | None, trace: bool = True
) -> Outcome:
    from asgi_sessions import SessionMiddleware

    clock = Clock()
    backend = _backend(name, redis_url, clock)
    app = SessionMiddleware(
        make_app(), backend=backend, idle_timeout=IDLE_TIMEOUT, refresh_after=30, clock=clock
    )
    outcome = Outcome(name)
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
                if name in ("redis", "hybrid"):
                    store = backend if name == "redis" else backend.store
                    info = await store.client.info("memory")
                    redis_mib = int(info["used_memory"]) / 2**20
                outcome.marks.append(Mark(i, _rss_mib(), current / 2**20, peak / 2**20, redis_mib))
                print(
                    f"{name}: {i:>9,} requests  rss {outcome.marks[-1].rss_mib:7.1f} MiB  "
                    f"traced {current / 2**20:6.1f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if trace:
            tracemalloc.stop()
        outcome.seconds = time.perf_counter() - started
        await backend.aclose()
    return outcome


def render(outcomes: Sequence[Outcome], args: argparse.Namespace) -> tuple[str, bool]:
    tracing = "tracemalloc on throughout" if args.trace else "tracemalloc off (RSS only)"
    command = f"python -m {MODULE} --requests {args.requests}"
    if args.only:
        command += f" --only {args.only}"
    if not args.trace:
        command += " --no-tracemalloc"
    lines = [
        "# asgi-sessions memory over a long run",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- python: {sys.version.split()[0]}",
        f"- command: `{command}`",
        f"- workload: a pool of {POOL:,} returning browsers ({WRITE_SHARE:.0%} of their "
        f"requests write), {NEW_SHARE:.0%} of requests from new visitors whose sessions are "
        f"abandoned; idle timeout {IDLE_TIMEOUT} s on a clock that moves 1 s every "
        f"{args.requests_per_second} requests; {tracing}",
        "",
    ]
    holds = True
    for outcome in outcomes:
        growth = outcome.last_quarter_growth()
        ok = growth < GROWTH_BAR and set(outcome.statuses) == {200}
        holds &= ok
        lines += [
            f"## {outcome.name} ({outcome.seconds:.0f} s)",
            "",
            "| requests | RSS MiB | traced MiB | traced peak MiB | Redis used_memory MiB |",
            "|---:|---:|---:|---:|---:|",
        ]
        for mark in outcome.marks:
            redis = "-" if mark.redis_mib is None else f"{mark.redis_mib:.1f}"
            lines.append(
                f"| {mark.requests:,} | {mark.rss_mib:.1f} | {mark.traced_mib:.1f} | "
                f"{mark.peak_mib:.1f} | {redis} |"
            )
        statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(outcome.statuses.items()))
        lines += [
            "",
            f"- {'PASS' if ok else 'FAIL'}: RSS grew {growth:+.1%} over the last quarter "
            f"(bar: under {GROWTH_BAR:.0%}); statuses {statuses}",
            "",
        ]
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
        help="resident memory only: tracemalloc's own per-allocation records take memory "
        "and fragment the heap, which shows in RSS (traced columns read 0)",
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
        return 0 if all(set(o.statuses) == {200} for o in outcomes) else 1
    return 0 if holds else 1


if __name__ == "__main__":
    raise SystemExit(main())
