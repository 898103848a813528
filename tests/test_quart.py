"""A real Quart app behind the middleware via install() (issue 5): read, write, rotate
on login, logout, permanent, and a WebSocket route; config-driven cookie settings."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import pytest

quart = pytest.importorskip("quart")

from quart import Quart, session, websocket  # noqa: E402

from asgi_sessions import ConfigurationError, MemoryBackend, RedisBackend  # noqa: E402
from asgi_sessions.integrations.quart import (  # noqa: E402
    QuartSession,
    SessionInterface,
    install,
)

pytestmark = pytest.mark.anyio


def make_app(backend: Any = None, https_only: bool = True, **config: Any) -> Quart:
    app = Quart(__name__)
    app.config.update(config)

    @app.get("/read")
    async def read() -> dict[str, Any]:
        return {"data": dict(session), "user": session.user_id, "permanent": session.permanent}

    @app.get("/write")
    async def write() -> dict[str, Any]:
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @app.get("/login")
    async def login() -> dict[str, Any]:
        session.bind_user("ann")  # rotates the ID
        session["user"] = "ann"
        return {"ok": True}

    @app.get("/logout")
    async def logout() -> dict[str, Any]:
        session.invalidate()
        return {"ok": True}

    @app.get("/browser-session")
    async def browser_session() -> dict[str, Any]:
        session.permanent = False
        session["x"] = 1
        return {"ok": True}

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        await websocket.send_json({"user": session.get("user"), "n": session.get("n")})
        session["seen_by_socket"] = True

    install(app, backend or MemoryBackend(), https_only=https_only)
    return app


def set_cookies(response: Any) -> list[str]:
    return response.headers.getlist("set-cookie")


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_read_write_login_logout_and_websocket(store: str, request: Any) -> None:
    backend: Any = MemoryBackend()
    if store == "redis":
        backend = RedisBackend(request.getfixturevalue("redis_url"), prefix="quart-test:")
    app = make_app(backend, https_only=False)
    client = app.test_client()
    assert (await (await client.get("/read")).get_json())["data"] == {}
    first = await client.get("/write")
    assert await first.get_json() == {"n": 1}
    before = set_cookies(first)[0].split(";", 1)[0]
    assert (await (await client.get("/write")).get_json()) == {"n": 2}
    response = await client.get("/login")
    (cookie,) = set_cookies(response)
    assert cookie.split(";", 1)[0] != before  # login rotated the ID
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    body = await (await client.get("/read")).get_json()
    assert body == {"data": {"n": 2, "user": "ann"}, "user": "ann", "permanent": True}
    async with client.websocket("/ws") as socket:
        assert await socket.receive_json() == {"user": "ann", "n": 2}
    assert (await (await client.get("/read")).get_json())["data"]["seen_by_socket"] is True
    response = await client.get("/logout")
    assert any("Max-Age=0" in c for c in set_cookies(response))
    assert (await (await client.get("/read")).get_json())["data"] == {}
    await backend.aclose()


async def test_cookie_settings_come_from_app_config() -> None:
    app = make_app(
        SESSION_COOKIE_NAME="qsid",
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_SECURE=False,  # Quart's default: it does not turn Secure off
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=20),
    )
    client = app.test_client()
    response = await client.get("/write", scheme="https")
    (cookie,) = set_cookies(response)
    assert cookie.startswith("qsid=")
    assert "Secure" in cookie
    assert "SameSite=Strict" in cookie
    assert "Max-Age=1200" in cookie


async def test_permanent_false_is_a_browser_session_cookie() -> None:
    app = make_app(https_only=False)
    client = app.test_client()
    response = await client.get("/browser-session")
    (cookie,) = set_cookies(response)
    assert "Max-Age" not in cookie
    assert (await (await client.get("/read")).get_json())["permanent"] is False


async def test_the_interface_without_the_middleware_says_what_to_do() -> None:
    class Request:
        scope: ClassVar[dict[str, Any]] = {"type": "http"}

    with pytest.raises(RuntimeError, match=r"install\(app, backend\)"):
        await SessionInterface().open_session(Quart(__name__), Request())


def test_install_twice_is_refused() -> None:
    app = Quart(__name__)
    install(app)
    with pytest.raises(ConfigurationError):
        install(app)
    assert issubclass(QuartSession, dict)
