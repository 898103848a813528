"""RouteGuard and the FastAPI login/role dependencies (issue 5)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
from fastapi import Depends, FastAPI, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from asgi_sessions import ConfigurationError, MemoryBackend, SessionMiddleware
from asgi_sessions.guard import RouteGuard, safe_return_path
from asgi_sessions.integrations.fastapi import SessionAuth, SessionDep, UserDep, require_roles
from tests.asgi import Client, session_app

BASE = "https://app.example"

ATTACKS = [
    "//evil.example",
    "//evil.example/path",
    "https://evil.example",
    "http:evil.example",
    "javascript:alert(1)",
    "/\\evil.example",
    "\\\\evil.example",
    "/%5Cevil.example",
    "%2F%2Fevil.example",
    "/%2F/evil.example",
    "/%2Fevil.example",
    "%252F%252Fevil.example",
    "/%252F/evil.example",
    "/%09/evil.example",
    "/\t/evil.example",
    "///evil.example",
    "https%3A%2F%2Fevil.example",
    "evil.example",
]


def guarded(**options: Any) -> Client:
    guard = RouteGuard(
        session_app,
        protected=["/read", "/set", "/app/*"],
        api=["/api/*"],
        login_path="/bind",
        **options,
    )
    return Client(SessionMiddleware(guard, backend=MemoryBackend()))


def same_origin(location: str) -> bool:
    resolved = urlsplit(urljoin(BASE + "/bind", location))
    return resolved.scheme == "https" and resolved.netloc == "app.example"


@pytest.mark.parametrize("attack", ATTACKS)
def test_safe_return_path_refuses_other_origins(attack: str) -> None:
    target = safe_return_path(attack)
    assert same_origin(target), target
    assert target == "/"


@pytest.mark.parametrize("good", ["/", "/app", "/app/x?tab=2", "/a%20b", "/.well-known/x"])
def test_safe_return_path_keeps_local_paths(good: str) -> None:
    assert safe_return_path(good) == good


@pytest.mark.anyio
async def test_anonymous_pages_redirect_to_login_and_apis_get_401() -> None:
    client = guarded()
    page = await client.get("/read?tab=2")
    assert page.status == 303
    (location,) = page.header_values("location")
    assert location.startswith("/bind?next=")
    assert parse_qs(urlsplit(location).query)["next"] == ["/read?tab=2"]
    api = await client.get("/api/items")
    assert api.status == 401
    assert api.json() == {"detail": "Not authenticated"}
    assert (await client.get("/untouched")).status == 200  # not guarded


@pytest.mark.anyio
@pytest.mark.parametrize("attack", ATTACKS)
async def test_a_logged_in_user_at_the_login_page_never_leaves_the_origin(attack: str) -> None:
    client = guarded()
    from urllib.parse import quote

    await client.get("/bind?user=ann")  # the login page logs in (the app's handler)
    assert client.jar  # logged in
    response = await client.get(f"/bind?next={quote(attack, safe='')}")
    assert response.status == 303
    (location,) = response.header_values("location")
    assert same_origin(location), location
    assert location == "/"


@pytest.mark.anyio
async def test_a_logged_in_user_reaches_protected_pages_and_is_sent_back() -> None:
    client = guarded(home="/app/home")
    await client.get("/bind?user=ann")
    assert (await client.get("/read")).status == 200
    response = await client.get("/bind?next=%2Fread%3Ftab%3D2")
    assert response.header_values("location") == ["/read?tab=2"]
    response = await client.get("/bind")
    assert response.header_values("location") == ["/app/home"]


@pytest.mark.anyio
async def test_a_guarded_response_varies_on_the_cookie() -> None:
    """The guard's decision reads the session: a page it lets through varies on the
    Cookie even when the app never looks at the session (a shared cache must not
    serve it to the anonymous visitors the guard redirects)."""
    guard = RouteGuard(session_app, protected=["/untouched"], login_path="/bind")
    client = Client(SessionMiddleware(guard, backend=MemoryBackend()))
    await client.get("/bind?user=ann")
    response = await client.get("/untouched")
    assert response.status == 200
    assert response.header_values("vary") == ["Cookie"]
    assert (await Client(client.app).get("/untouched")).header_values("vary") == ["Cookie"]


def test_guard_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        RouteGuard(session_app, protected="/app/*")
    with pytest.raises(ConfigurationError):
        RouteGuard(session_app, login_path="//evil.example")
    with pytest.raises(ConfigurationError):
        RouteGuard(session_app, home="https://evil.example")


@pytest.mark.anyio
async def test_guard_without_the_session_middleware_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="SessionMiddleware"):
        await Client(RouteGuard(session_app, protected=["/*"])).get("/read")


# -- FastAPI dependencies ----------------------------------------------------------------


def fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, backend=MemoryBackend())

    @app.post("/login")
    async def login(session: SessionDep, user: str, admin: bool = False) -> dict[str, str]:
        session.bind_user(user)
        session["roles"] = ["admin"] if admin else []
        return {"user": user}

    @app.get("/me")
    async def me(user: UserDep) -> dict[str, str]:
        return {"user": user}

    @app.get("/admin", dependencies=[require_roles("admin")])
    async def admin() -> dict[str, bool]:
        return {"admin": True}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, user: UserDep) -> None:
        await websocket.accept()
        await websocket.send_json({"user": user})
        await websocket.close()

    custom = SessionAuth("session", roles_key="roles")

    @app.get("/custom")
    async def custom_route(user: str = Depends(custom.user)) -> dict[str, str]:
        return {"user": user}

    return app


def test_fastapi_login_and_role_dependencies() -> None:
    client = TestClient(fastapi_app(), base_url=BASE)
    response = client.get("/me")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("wss://app.example/ws"),
    ):
        pass
    assert closed.value.code == 1008
    client.post("/login", params={"user": "ann"})
    assert client.get("/me").json() == {"user": "ann"}
    assert client.get("/custom").json() == {"user": "ann"}
    assert client.get("/admin").status_code == 403
    with client.websocket_connect("wss://app.example/ws") as socket:
        assert socket.receive_json() == {"user": "ann"}
    client.post("/login", params={"user": "root", "admin": True})
    assert client.get("/admin").json() == {"admin": True}


def test_openapi_shows_the_session_cookie_scheme() -> None:
    schema = fastapi_app().openapi()
    assert schema["components"]["securitySchemes"]["SessionCookie"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": "session",
        "description": "The asgi-sessions session cookie, set by logging in.",
    }
    assert schema["paths"]["/me"]["get"]["security"] == [{"SessionCookie": []}]
    assert "security" not in schema["paths"]["/login"]["post"]
