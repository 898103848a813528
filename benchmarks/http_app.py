"""The ASGI app each server of ``benchmarks.http`` runs: one row of ``benchmarks.rows``.

    ASGI_SESSIONS_BENCH_ROW=ours-jwt [ASGI_SESSIONS_BENCH_REDIS_URL=redis://...] \\
        python -m uvicorn benchmarks.http_app:app --lifespan on --port P ...

The row named in ``ASGI_SESSIONS_BENCH_ROW`` is built in the ASGI lifespan startup,
inside the server's event loop (the Redis rows' clients bind to the loop they are
first used in), and its ``aclose`` runs at the lifespan shutdown. Redis rows use the
server in ``ASGI_SESSIONS_BENCH_REDIS_URL``; without it they are unavailable.

Once the row is built, the startup writes what the harness needs to know about it
(cookie name, plain session, the scenarios it runs) as JSON to the file named in
``ASGI_SESSIONS_BENCH_INFO``. A row that cannot run here
(:class:`benchmarks.rows.RowUnavailable`) writes ``{"unavailable": why}`` there
instead and fails the startup, so the harness can tell "skipped" from "broken"; any
other startup error prints its traceback to stderr. Warnings of the
``asgi_sessions`` logger go to stderr prefixed with :data:`PACKAGE_WARNING` (the
harness treats one as a misbehaving row).

For a row without session middleware (``plain_session``) every HTTP request gets a
fresh ``{"user": USER, "n": 0}`` in ``scope["session"]``, so the same handlers run.
"""

from __future__ import annotations

import asyncio.base_events
import json
import logging
import os
import socket
import sys
import traceback
from typing import Any

from starlette.types import Receive, Scope, Send

from benchmarks.rows import ROWS, USER, Row, RowUnavailable, configure_redis, make_app


def _set_nodelay(sock: socket.socket) -> None:
    # uvicorn --workers N hands each worker the listening socket by file descriptor,
    # and a socket rebuilt that way reports proto 0, so asyncio skips TCP_NODELAY on
    # the connections it accepts: every response then waits on a delayed ACK (about
    # 40 ms a request on this machine, whatever the app). Set it for any TCP socket.
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


asyncio.base_events._set_nodelay = _set_nodelay  # type: ignore[attr-defined]

__all__ = [
    "INFO_ENV",
    "PACKAGE_WARNING",
    "REDIS_ENV",
    "ROW_ENV",
    "BenchmarkServer",
    "app",
    "build_row",
    "describe",
]

ROW_ENV = "ASGI_SESSIONS_BENCH_ROW"
REDIS_ENV = "ASGI_SESSIONS_BENCH_REDIS_URL"
INFO_ENV = "ASGI_SESSIONS_BENCH_INFO"
PACKAGE_WARNING = "asgi_sessions logged:"


def _watch_package_logger() -> None:
    """Send the package's warnings to stderr in a form the harness recognises."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter(f"{PACKAGE_WARNING} %(levelname)s %(message)s"))
    logging.getLogger("asgi_sessions").addHandler(handler)


def _write_info(info: dict[str, Any]) -> None:
    path = os.environ.get(INFO_ENV)
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(info, file)


def describe(row: Row) -> dict[str, Any]:
    """What the harness needs to know about a built row, as JSON-able data."""
    return {
        "cookie_name": row.cookie_name,
        "plain_session": row.plain_session,
        "resaves_unchanged": row.resaves_unchanged,
        "redis": row.redis_url is not None,
        "scenarios": None if row.scenarios is None else sorted(row.scenarios),
    }


async def build_row() -> Row:
    """The row named in the environment, built in the running event loop."""
    name = os.environ.get(ROW_ENV, "")
    if name not in ROWS:
        raise RuntimeError(f"{ROW_ENV}={name!r} names no row; choose from {', '.join(ROWS)}")
    url = os.environ.get(REDIS_ENV) or None
    configure_redis(url, "" if url else f"{REDIS_ENV} is not set")
    return await ROWS[name].factory(make_app())


class BenchmarkServer:
    """ASGI entry point: the lifespan builds and closes the row, HTTP goes to it."""

    def __init__(self) -> None:
        self.row: Row | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        row = self.row
        if row is None:
            raise RuntimeError("no row was built: run the server with --lifespan on")
        if row.plain_session and scope["type"] == "http":
            scope["session"] = {"user": USER, "n": 0}
        await row.app(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.row = await build_row()
                except RowUnavailable as exc:
                    _write_info({"unavailable": str(exc)})
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    traceback.print_exc()
                    await send(
                        {"type": "lifespan.startup.failed", "message": f"building the row: {exc!r}"}
                    )
                    return
                _write_info(describe(self.row))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                row, self.row = self.row, None
                try:
                    if row is not None and row.aclose is not None:
                        await row.aclose()
                except Exception as exc:
                    traceback.print_exc()
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


_watch_package_logger()
app = BenchmarkServer()
