"""A WebSocket whose session is revoked elsewhere is told so on its next session
access (SessionRevoked), instead of acting on stale data (issue 5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asgi_sessions import MemoryBackend, SessionMiddleware, SessionRevoked
from asgi_sessions.backends.redis import RedisBackend
from tests.asgi import Client, open_socket, session_app

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
    task = asyncio.ensure_future(open_socket(middleware, cookie))
    await asyncio.wait_for(opened.wait(), 5)
    assert await backend.revoke_user("ann") == 1
    revoked.set()
    sent = await asyncio.wait_for(task, 5)
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


async def socket_that_rotates_at_accept(backend: Any, cookie: bytes, interval: float) -> list[Any]:
    """Open a socket on ``cookie`` whose app binds another user before accepting (a
    rotation: the new cookie goes out with the accept), then reads its session after
    a few checks."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        await receive()  # websocket.connect
        session.bind_user("bob")
        await send({"type": "websocket.accept"})
        await asyncio.sleep(interval * 5)
        try:
            seen.append(session["user"])
        except SessionRevoked:
            seen.append("revoked")
        await send({"type": "websocket.close", "code": 1000})

    middleware = SessionMiddleware(app, backend=backend, websocket_check_interval=interval)
    sent = await asyncio.wait_for(open_socket(middleware, cookie), 5)
    (accept,) = [m for m in sent if m["type"] == "websocket.accept"]
    seen.append(any(name == b"set-cookie" for name, _ in accept.get("headers", [])))
    return seen


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_socket_that_rotates_its_session_at_accept_is_not_revoked(
    store: str, request: Any
) -> None:
    """The check follows the session's current ID, not the one it was loaded under:
    the rotation leaves the old ID a grace alias, which is not a live session."""
    backend: Any = MemoryBackend(rotation_grace=1)
    if store == "redis":
        backend = RedisBackend(
            request.getfixturevalue("redis_url"), prefix="ws-rotate-test:", rotation_grace=1
        )
    try:
        http = Client(SessionMiddleware(session_app, backend=backend))
        await http.get("/bind?user=ann")
        cookie = f"session={http.jar['session']}".encode()
        assert await socket_that_rotates_at_accept(backend, cookie, 0.05) == ["ann", True]
    finally:
        await backend.aclose()


async def test_a_socket_opened_on_a_grace_alias_follows_the_session_it_leads_to() -> None:
    """A socket opened with the pre-rotation cookie inside the grace is not revoked
    while the session lives on under its new ID, and is once that session ends."""
    backend = MemoryBackend(rotation_grace=30)
    http = Client(SessionMiddleware(session_app, backend=backend))
    await http.get("/set?user=ann")
    old = f"session={http.jar['session']}".encode()
    await http.get("/rotate")
    opened, checked, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        opened.set()
        await asyncio.sleep(0.25)
        seen.append(session["user"])
        checked.set()
        await ended.wait()
        await asyncio.sleep(0.25)
        try:
            seen.append(session["user"])
        except SessionRevoked:
            seen.append("revoked")
        await send({"type": "websocket.close", "code": 1000})

    middleware = SessionMiddleware(app, backend=backend, websocket_check_interval=0.05)
    task = asyncio.ensure_future(open_socket(middleware, old))
    await asyncio.wait_for(checked.wait(), 5)
    await http.get("/invalidate")
    ended.set()
    await asyncio.wait_for(task, 5)
    assert seen == ["ann", "revoked"]
