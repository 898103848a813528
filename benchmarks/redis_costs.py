"""What one Redis command of the request path costs on this machine
(``python -m benchmarks.redis_costs``).

The in-process benchmark's s3 bar compares a whole request with its floor, the bare
app plus one raw ``GET`` and one raw ``SET``; this tool times the commands alone, so a
gap can be split into the commit's command and the Python around it. Against a private
redis-server (started on a free loopback port and stopped by its PID), one task awaits
one command at a time, as a request does:

* ``SET`` and ``GET`` of a 120-byte string: the floor rows' commands;
* ``HGET`` of a session's view: the read path's one command;
* the save script on a live session, with the arguments of an s3 commit (a delta on
  the view the request loaded), captured from a real request;
* ``EVALSHA`` of a script that only returns: what running any script costs;
* the create script of a new session (s4's commit; here with the s3 commit's fields),
  and for comparison a create of the same fields without a script that still never
  overwrites (``MULTI``, ``HSET`` and ``PEXPIRE`` of a temporary key, ``RENAMENX`` onto
  the session's key, ``EXEC``: five replies to read).

Each goes through the backend's own path (``_Lane``, with its watchdog) and through
redis-py's client. Rounds interleave the commands; the report gives medians of wall
µs, this process's CPU µs and redis-server's CPU µs (``/proc/<pid>/schedstat``) per
command. ``--busy N`` keeps N spinning processes at the lowest priority meanwhile, so
no CPU goes idle between commands: the difference from an idle run is what waking an
idle CPU costs on this machine. The spinners are ours and are stopped by PID.

A last column sends each command 100 at a time on one connection and reads the 100
replies after: redis-server then runs them back to back without going idle, so its CPU
per command is the command's own work, without waking up and without cold caches.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.inprocess import make_scope
from benchmarks.redis_server import PrivateRedis
from benchmarks.report import environment_lines, git_revision, spinners
from benchmarks.rows import configure_redis, make_app

MODULE = "benchmarks.redis_costs"


def _server_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat", encoding="ascii") as stat:
        return int(stat.read().split()[0])


async def _save_arguments(url: str) -> tuple[Any, str, list[Any]]:
    """A backend with one live session, and the key and arguments of the save
    script for an s3 commit on it, captured from a real request. The loaded view in
    them is set to the view they store, so every repeat takes the common path (the
    stored view is the loaded one) and stores the same record."""
    from asgi_sessions import SessionMiddleware
    from asgi_sessions.backends import redis as module

    backend = module.RedisBackend(url, prefix="bench:costs:")
    app = SessionMiddleware(make_app(), backend=backend)
    cookie: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        for name, value in message.get("headers", []):
            if name == b"set-cookie" and not cookie:
                cookie.append(value.split(b";")[0])

    await app(make_scope("/login", None), receive, send)
    captured: list[tuple[str, tuple[Any, ...]]] = []
    real = module._save

    class Spy:
        async def __call__(self, client: Any, key: str, *args: Any) -> Any:
            captured.append((key, args))
            return await real(client, key, *args)

    module._save = Spy()  # type: ignore[assignment]
    try:
        await app(make_scope("/write", cookie[0]), receive, send)
    finally:
        module._save = real
    key, args = captured[-1]
    arguments = list(args)
    pairs = arguments[5 : 5 + 2 * int(arguments[2])]
    arguments[3] = pairs[pairs.index(b"x") + 1]
    return backend, key, arguments


async def measure(url: str, pid: int, rounds: int, requests: int) -> list[tuple[str, Any]]:
    from redis.asyncio import Redis

    from asgi_sessions.backends import redis as module

    backend, key, arguments = await _save_arguments(url)
    client = Redis.from_url(url)
    lane = backend._fast
    trivial = module._Script("return 1")
    await client.set("bench:costs:plain", b"v" * 120)
    plain_set = module._pack(b"SET", "bench:costs:plain", b"v" * 120)
    plain_get = module._pack(b"GET", "bench:costs:plain")
    run = backend._run
    pairs = arguments[5 : 5 + 2 * int(arguments[2])]
    created = iter(range(10**9))

    def create_arguments(new: str) -> tuple[Any, ...]:
        # The save script's arguments for a create of ``new`` with the s3 commit's fields.
        return (new, b"n", arguments[1], len(pairs) // 2, b"", *arguments[4:5], *pairs)

    def multi_create(new: str) -> bytes:
        temporary = "{" + new + "}:tmp"  # the same Cluster slot as ``new``
        return b"".join(
            (
                module._pack(b"MULTI"),
                module._pack(b"HSET", temporary, *pairs),
                module._pack(b"PEXPIRE", temporary, arguments[1]),
                module._pack(b"RENAMENX", temporary, new),
                module._pack(b"EXEC"),
            )
        )

    def create() -> Awaitable[Any]:
        return run(module._save(lane, *create_arguments(f"bench:costs:new:{next(created)}")))

    async def create_without_script() -> Any:
        packed = multi_create(f"bench:costs:new:{next(created)}")
        pool = lane.pool
        connection = await pool.get_connection()
        try:
            if not connection.is_connected:
                await connection.connect()
            connection._writer.write(packed)
            for _ in range(4):
                await connection.read_response(timeout=5)
            return await connection.read_response(timeout=5)
        finally:
            await pool.release(connection)

    commands: dict[str, Callable[[], Awaitable[Any]]] = {
        "SET (lane)": lambda: run(lane.call(plain_set)),
        "GET (lane)": lambda: run(lane.call(plain_get)),
        "HGET view (lane)": lambda: run(lane.hget(key, "x")),
        "EVALSHA return 1 (lane)": lambda: run(trivial(lane, key)),
        "EVALSHA save, s3 commit (lane)": lambda: run(module._save(lane, key, *arguments)),
        "EVALSHA create, s4 commit (lane)": create,
        "MULTI create without a script (lane)": lambda: run(create_without_script()),
        "SET (redis-py)": lambda: client.set("bench:costs:plain", b"v" * 120),
        "GET (redis-py)": lambda: client.get("bench:costs:plain"),
        "HGET view (redis-py)": lambda: client.hget(key, "x"),
        "EVALSHA save, s3 commit (redis-py)": lambda: client.evalsha(
            module._save.sha, 1, key, *arguments
        ),
    }

    # The same commands as packed bytes (index: a distinct key where the command
    # creates one), and how many replies each gets, for the pipelined column.
    hget = module._pack(b"HGET", key, "x")
    empty = module._pack(b"EVALSHA", trivial.sha, 1, key)
    save = module._pack(b"EVALSHA", module._save.sha, 1, key, *arguments)
    piped: dict[str, tuple[Callable[[int], bytes], int]] = {
        "SET (lane)": (lambda index: plain_set, 1),
        "GET (lane)": (lambda index: plain_get, 1),
        "HGET view (lane)": (lambda index: hget, 1),
        "EVALSHA return 1 (lane)": (lambda index: empty, 1),
        "EVALSHA save, s3 commit (lane)": (lambda index: save, 1),
        "EVALSHA create, s4 commit (lane)": (
            lambda index: module._pack(
                b"EVALSHA", module._save.sha, 1, *create_arguments(f"bench:costs:piped:{index}")
            ),
            1,
        ),
        "MULTI create without a script (lane)": (
            lambda index: multi_create(f"bench:costs:piped-multi:{index}"),
            5,
        ),
    }
    batch = 100
    indexes = iter(range(10**9))

    async def pipelined(packed: Callable[[int], bytes], replies: int) -> float:
        data = b"".join(packed(next(indexes)) for _ in range(batch))
        connection = await lane.pool.get_connection()
        try:
            server = _server_cpu_ns(pid)
            connection._writer.write(data)
            for _ in range(batch * replies):
                await connection.read_response(timeout=5)
            return (_server_cpu_ns(pid) - server) / batch / 1000
        finally:
            await lane.pool.release(connection)

    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    piped_results: dict[str, list[float]] = {name: [] for name in piped}
    try:
        await client.script_load(trivial.source)
        for command in commands.values():
            for _ in range(50):
                await command()
        assert await module._save(lane, key, *arguments) == 1, "the save took another path"
        for _ in range(rounds):
            for name, command in commands.items():
                wall = time.perf_counter_ns()
                cpu = time.process_time_ns()
                server = _server_cpu_ns(pid)
                for _ in range(requests):
                    await command()
                results[name].append(
                    (
                        (time.perf_counter_ns() - wall) / requests / 1000,
                        (time.process_time_ns() - cpu) / requests / 1000,
                        (_server_cpu_ns(pid) - server) / requests / 1000,
                    )
                )
            for name, (packed, replies) in piped.items():
                for _ in range(max(1, requests // batch)):
                    piped_results[name].append(await pipelined(packed, replies))
    finally:
        keys = [k async for k in client.scan_iter(match="bench:costs:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await backend.aclose()
    return [
        (
            name,
            [
                *(statistics.median(column) for column in zip(*samples, strict=True)),
                statistics.median(piped_results[name]) if name in piped_results else None,
            ],
        )
        for name, samples in results.items()
    ]


def report(rows: list[tuple[str, Any]], busy: int, revision: str) -> str:
    lines = ["# What one Redis command costs here (`benchmarks.redis_costs`)", ""]
    lines += environment_lines(MODULE, revision)
    lines.append(
        f"- load: {busy} spinning process(es) at nice 19" if busy else "- load: none (idle CPUs)"
    )
    lines += [
        "",
        "| command | wall µs | client CPU µs | redis-server CPU µs | redis-server CPU µs,"
        " pipelined |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (wall, cpu, server, piped) in rows:
        alone = "-" if piped is None else f"{piped:.2f}"
        lines.append(f"| {name} | {wall:.1f} | {cpu:.1f} | {server:.1f} | {alone} |")
    lines += [
        "",
        "Pipelined: 100 commands sent at once, their replies read after; redis-py's rows"
        " send the same commands, which cost the server the same.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500, help="per command per round")
    parser.add_argument("--busy", type=int, default=0, help="spinning processes meanwhile")
    parser.add_argument("--markdown-out", type=Path)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 50: a smoke run")
    args = parser.parse_args(argv)
    rounds, requests = (3, 50) if args.quick else (args.rounds, args.requests)
    revision = git_revision()
    with PrivateRedis() as server, spinners(args.busy):
        assert server.pid is not None
        configure_redis(server.url)
        rows = asyncio.run(measure(server.url, server.pid, rounds, requests))
    text = report(rows, args.busy, revision)
    print(text)
    if args.markdown_out is not None:
        args.markdown_out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
