"""RedisBackend on a local three-master Redis Cluster against a single Redis
(``python -m benchmarks.scale``).

Starts a private single redis-server and a private three-master cluster on loopback
ports (the test suite's own fixtures: ``tests/redis_servers.py``), builds one
``RedisBackend`` on each (redis-py's ``Redis`` and ``RedisCluster`` clients with the
same socket timeouts), logs one session in on each, and times the
read (s2) and read-modify-write (s3) scenarios in-process, rows interleaved in a
shuffled order per round. Reports µs per request and the per-round ratio of the
cluster row to the single one (median and quartiles). Both servers are stopped by
PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.inprocess import _interruptible, _quartiles, login, make_scope, timed
from benchmarks.redis_server import PrivateRedis
from benchmarks.rows import Row, make_app

MODULE = "benchmarks.scale"
SCENARIOS = (("s2", "/read"), ("s3", "/write"))


async def _rows(single_url: str, nodes: list[tuple[str, int]]) -> dict[str, tuple[Any, Any]]:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    from asgi_sessions import SessionMiddleware
    from asgi_sessions.backends.redis import RedisBackend

    # Both clients built alike (plain pools, the same socket timeouts), so the ratio
    # is the Cluster's cost, not a difference in pool settings.
    single_client = Redis.from_url(single_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    single = RedisBackend(single_client, prefix="bench:scale:")
    cluster_client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )
    cluster = RedisBackend(cluster_client, prefix="bench:scale:")
    return {
        "single": (SessionMiddleware(make_app(), backend=single), single),
        "cluster": (SessionMiddleware(make_app(), backend=cluster), cluster),
    }


async def run(rounds: int, requests: int, single_url: str, nodes: list[tuple[str, int]]) -> str:
    rows = await _rows(single_url, nodes)
    cells = {}
    for name, (app, _) in rows.items():
        cookie = await login(Row(app))
        for key, path in SCENARIOS:
            cells[(name, key)] = (app, make_scope(path, cookie))
    samples: dict[tuple[str, str], list[float]] = {cell: [] for cell in cells}
    order = list(cells)
    rng = random.Random(0)
    for app, scope in cells.values():
        await timed(app, scope, 50)  # warm-up: connections, script caches
    for _ in range(rounds):
        rng.shuffle(order)
        for cell in order:
            app, scope = cells[cell]
            samples[cell].append(await timed(app, scope, requests) / requests / 1000)
    for _, backend in rows.values():
        await backend.client.aclose()
    lines = [
        "| scenario | single Redis | 3-master Cluster | cluster / single (quartiles) |",
        "|---|---:|---:|---:|",
    ]
    for key, path in SCENARIOS:
        one, many = samples[("single", key)], samples[("cluster", key)]
        ratios = [c / s for c, s in zip(many, one, strict=True)]
        q1, median, q3 = _quartiles(ratios)
        lines.append(
            f"| {key} (`GET {path}`) | {statistics.median(one):.1f} µs | "
            f"{statistics.median(many):.1f} µs | {median:.2f}x ({q1:.2f}-{q3:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--requests", type=int, default=100, help="per sample")
    parser.add_argument("--markdown-out")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.redis_servers import RedisCluster

    with (
        _interruptible(),
        tempfile.TemporaryDirectory() as tmp,
        PrivateRedis() as single,
        RedisCluster(Path(tmp)) as cluster,
    ):
        table = asyncio.run(run(args.rounds, args.requests, single.url, cluster.startup_nodes))
    report = (
        f"`python -m {MODULE} --rounds {args.rounds} --requests {args.requests}`: RedisBackend "
        "on a single private redis-server and on a private three-master Cluster, in-process, "
        "interleaved rounds\n\n" + table
    )
    print(report)
    if args.markdown_out:
        Path(args.markdown_out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
