"""Store failures: fail closed with a generic 503 by default, or fail open.

The failing store here is a real MemoryBackend whose I/O methods raise the
backend's own "unavailable" error, as the Redis backend does when its timeouts fire.
"""

from __future__ import annotations

from typing import Any

import pytest

from asgi_sessions import BackendUnavailable, Delta, MemoryBackend, SessionMiddleware, SessionRecord
from tests.asgi import Client, open_socket, session_app

pytestmark = pytest.mark.anyio


class Flaky(MemoryBackend):
    down = False

    async def load(self, token: str, *, now: float, **context: Any) -> SessionRecord | None:
        if self.down:
            raise BackendUnavailable("store timed out")
        return await super().load(token, now=now, **context)

    async def save(
        self,
        token: str | None,
        record: SessionRecord,
        delta: Delta,
        *,
        now: float,
        ttl: int,
        rotate: bool,
    ) -> str:
        if self.down:
            raise BackendUnavailable("store timed out")
        return await super().save(token, record, delta, now=now, ttl=ttl, rotate=rotate)


def client(backend: Flaky, **settings: Any) -> Client:
    return Client(SessionMiddleware(session_app, backend=backend, **settings))


async def test_load_failure_is_a_generic_503_by_default() -> None:
    backend = Flaky()
    c = client(backend)
    await c.get("/set?secret=mine")
    backend.down = True
    response = await c.get("/read")
    assert response.status == 503
    assert response.body == b"Service Unavailable"
    assert response.set_cookies == []
    backend.down = False
    assert (await c.get("/read")).json() == {"secret": "mine"}  # recovers by itself


@pytest.mark.parametrize("path", ["/set?k=v", "/login?user=ann"])
async def test_commit_failure_replaces_the_response_and_drops_its_body(path: str) -> None:
    backend = Flaky()
    c = client(backend)
    if path.startswith("/login"):
        await c.get("/set?k=v")  # a stored session: the cookie path
    backend.down = True
    response = await c.get(path)  # the anonymous path when nothing is stored
    assert response.status == 503
    assert response.body == b"Service Unavailable"
    assert response.set_cookies == []


async def test_fail_open_continues_with_an_empty_unsaved_session() -> None:
    backend = Flaky()
    c = client(backend, fail_open=True)
    await c.get("/set?secret=mine")
    backend.down = True
    response = await c.get("/set?k=v")
    assert response.status == 200
    assert response.json() == {"k": "v"}
    assert response.set_cookies == []
    backend.down = False
    assert (await c.get("/read")).json() == {"secret": "mine"}


async def test_fail_open_commit_failure_sends_the_response_without_a_cookie() -> None:
    backend = Flaky()
    c = client(backend, fail_open=True)
    backend.down = True
    response = await c.get("/set?k=v")
    assert response.status == 200
    assert response.set_cookies == []


async def test_a_store_failure_after_a_websocket_closed_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The socket's changes are saved after it closed, when nothing can be sent any
    more: a failing store loses them with a warning, and the server sees a normal
    end of the app instead of an exception and its traceback."""
    backend = Flaky()
    http = client(backend)
    await http.get("/set?k=v")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        scope["session"]["k"] = "changed"
        backend.down = True
        await send({"type": "websocket.close", "code": 1000})

    cookie = f"session={http.jar['session']}".encode()
    await open_socket(SessionMiddleware(app, backend=backend), cookie, then_disconnect=True)
    assert "were not stored" in caplog.text
    backend.down = False
    assert (await http.get("/read")).json() == {"k": "v"}
