"""A WebSocket whose session is revoked elsewhere is told so on its next session
access (SessionRevoked), instead of acting on stale data (issue 5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_sessions import MemoryBackend, SessionMiddleware, SessionRevoked
from asgi_sessions.backends.redis import RedisBackend
from tests.asgi import Client, session_app, websocket_scope

pytestmark = pytest.mark.anyio


async def socket_after_revocation(backend: Any, interval: float | None) -> list[Any]:
    """Log in over HTTP, open a socket, revoke the user meanwhile, and report what
    the socket saw of its session before and after."""
    http = Client(SessionMiddleware(session_app, backend=backend))
    await http.get("/bind?user=ann")
    cookie = f"session={http.jar['session']}".encode()
    revoked = asyncio.Event()
    opened = asyncio.Event()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        seen.append(session.get("user"))
        opened.set()
        await revoked.wait()
        await asyncio.sleep(0.3)
        try:
            seen.append(session["user"])
        except SessionRevoked:
            seen.append("revoked")
            await send({"type": "websocket.close", "code": 4401})
            return
        await send({"type": "websocket.close", "code": 1000})

    middleware = SessionMiddleware(app, backend=backend, websocket_check_interval=interval)
    messages = [{"type": "websocket.connect"}]
    sent: list[Any] = []

    async def receive() -> Any:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = websocket_scope(cookie)
    task = asyncio.ensure_future(middleware(scope, receive, send))
    await asyncio.wait_for(opened.wait(), 5)
    assert await backend.revoke_user("ann") == 1
    revoked.set()
    await asyncio.wait_for(task, 5)
    return [*seen, sent[-1]["code"]]


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_revoked_session_raises_in_an_open_socket(store: str, request: Any) -> None:
    backend: Any = MemoryBackend()
    if store == "redis":
        backend = RedisBackend(request.getfixturevalue("redis_url"), prefix="ws-revoke-test:")
    try:
        assert await socket_after_revocation(backend, 0.05) == ["ann", "revoked", 4401]
    finally:
        await backend.aclose()


async def test_without_the_check_the_socket_keeps_its_snapshot() -> None:
    """websocket_check_interval=None: the documented trade-off (no polling)."""
    assert await socket_after_revocation(MemoryBackend(), None) == ["ann", "ann", 1000]
