"""Tiny ASGI helpers shared by the middleware and the apps this package ships."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None,
    *extra: tuple[bytes, bytes],
) -> None:
    """A whole small response, never cached: start and body in two messages."""
    headers = [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
    if content_type is not None:
        headers.insert(0, (b"content-type", content_type))
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
