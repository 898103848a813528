"""Real Starlette and FastAPI apps behind the real SessionMiddleware (no mocks).

Cookies are Secure by default, so every client talks https:// (and wss:// for
WebSockets: the test client's cookie jar sends a Secure cookie to neither http://
nor ws://).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import httpx2 as httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket as StarletteWebSocket
from starlette.websockets import WebSocketDisconnect

from asgi_sessions import MemoryBackend, Session, SessionMiddleware
from asgi_sessions.integrations.fastapi import SessionDep, get_session

if TYPE_CHECKING:
    from tests.conftest import FakeClock

BASE = "https://testserver"
WS = "wss://testserver/ws"
Form = Literal["add_middleware", "middleware_list", "constructor"]
FORMS: tuple[Form, ...] = ("add_middleware", "middleware_list", "constructor")


# -- helpers --------------------------------------------------------------------------


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def session_set_cookie(response: httpx.Response, name: str = "session") -> str | None:
    """The Set-Cookie header for our cookie, or None."""
    found = [h for h in set_cookies(response) if h.startswith(f"{name}=")]
    assert len(found) <= 1, found
    return found[0] if found else None


def cookie_value(response: httpx.Response, name: str = "session") -> str:
    header = session_set_cookie(response, name)
    assert header is not None, set_cookies(response)
    return header.split(";", 1)[0].split("=", 1)[1]


def replay(client: TestClient, token: str, path: str = "/read") -> httpx.Response:
    """A request carrying exactly ``token`` as the session cookie (an explicit
    Cookie header takes precedence over the client's cookie jar)."""
    return client.get(path, headers={"cookie": f"session={token}"})


# -- a plain Starlette app using request.session unchanged ---------------------------


async def read(request: StarletteRequest) -> Response:
    session = request.session
    assert isinstance(session, Session)
    return JSONResponse({"data": dict(session), "id": session.id, "new": session.new})


async def write(request: StarletteRequest) -> Response:
    request.session.update(await request.json())
    return JSONResponse(dict(request.session))


async def login(request: StarletteRequest) -> Response:
    session = request.session
    assert isinstance(session, Session)
    session.rotate()
    session["user"] = (await request.json())["user"]
    return JSONResponse({"data": dict(session)})


async def logout(request: StarletteRequest) -> Response:
    session = request.session
    assert isinstance(session, Session)
    session.invalidate()
    return PlainTextResponse("bye")


async def own_headers(request: StarletteRequest) -> Response:
    request.session["theme_seen"] = True
    response = PlainTextResponse("ok", headers={"cache-control": "no-cache", "vary": "Accept"})
    response.set_cookie("theme", "dark", httponly=True)
    return response


async def untouched(request: StarletteRequest) -> Response:
    return PlainTextResponse("ok")


async def fails(request: StarletteRequest) -> Response:
    request.session["doomed"] = True
    return PlainTextResponse("oops", status_code=503)


async def raises(request: StarletteRequest) -> Response:
    request.session["doomed"] = True
    raise RuntimeError("boom")


async def lifespan_state(request: StarletteRequest) -> Response:
    return PlainTextResponse(request.state.greeting)


async def ws_read(websocket: StarletteWebSocket) -> None:
    await websocket.accept()
    session = websocket.session
    await websocket.send_json(
        {"data": dict(session), "same": session is websocket.scope["session"]}
    )
    await websocket.close()


async def ws_write_after_accept(websocket: StarletteWebSocket) -> None:
    await websocket.accept()
    websocket.session["from_socket"] = await websocket.receive_text()
    await websocket.send_text("stored")
    await websocket.close()


async def ws_until_disconnect(websocket: StarletteWebSocket) -> None:
    # The common idiom: loop until the client leaves, and let Starlette's
    # WebSocketDisconnect end the endpoint.
    await websocket.accept()
    while True:
        websocket.session["from_socket"] = await websocket.receive_text()
        await websocket.send_text("stored")


ROUTES = [
    Route("/read", read),
    Route("/write", write, methods=["POST"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/own-headers", own_headers),
    Route("/untouched", untouched),
    Route("/fails", fails),
    Route("/raises", raises),
    Route("/state", lifespan_state),
    WebSocketRoute("/ws", ws_read),
    WebSocketRoute("/ws-write", ws_write_after_accept),
    WebSocketRoute("/ws-loop", ws_until_disconnect),
]


def make_lifespan(
    events: list[str],
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, str]]:
        events.append("startup")
        yield {"greeting": "hello from lifespan"}
        events.append("shutdown")

    return lifespan


def starlette_app(form: Form, events: list[str] | None = None, **options: Any) -> Any:
    lifespan = make_lifespan(events if events is not None else [])
    if form == "middleware_list":
        return Starlette(
            routes=ROUTES, lifespan=lifespan, middleware=[Middleware(SessionMiddleware, **options)]
        )
    app = Starlette(routes=ROUTES, lifespan=lifespan)
    if form == "constructor":
        return SessionMiddleware(app, **options)
    app.add_middleware(SessionMiddleware, **options)
    return app


@pytest.fixture(params=FORMS)
def form(request: pytest.FixtureRequest) -> Form:
    param: Form = request.param
    return param


def client_for(app: Any, **kwargs: Any) -> TestClient:
    return TestClient(app, base_url=BASE, **kwargs)


# -- Starlette: read, write, rotate, invalidate --------------------------------------


def test_read_and_write(form: Form) -> None:
    client = client_for(starlette_app(form))

    first = client.get("/read")
    assert first.json() == {"data": {}, "id": None, "new": True}
    assert set_cookies(first) == []  # empty sessions are never stored
    assert first.headers.get_list("vary") == ["Cookie"]

    written = client.post("/write", json={"cart": 3})
    header = session_set_cookie(written)
    assert header is not None
    attributes = [part.strip() for part in header.split(";")[1:]]
    assert {"HttpOnly", "Secure", "SameSite=Lax", "Path=/"} <= set(attributes)
    assert written.headers["cache-control"] == "private, no-store"
    token = cookie_value(written)

    again = client.get("/read")
    body = again.json()
    assert body["data"] == {"cart": 3}
    assert body["new"] is False
    assert body["id"]
    assert body["id"] != token  # the public id is never the cookie
    assert set_cookies(again) == []  # read only, refresh not due: no write, no cookie


def test_login_rotates_and_the_old_cookie_stops_working(form: Form) -> None:
    client = client_for(starlette_app(form, backend=MemoryBackend(rotation_grace=0)))
    before = cookie_value(client.post("/write", json={"cart": 3}))
    old_id = client.get("/read").json()["id"]

    logged_in = client.post("/login", json={"user": "ada"})
    after = cookie_value(logged_in)
    assert after != before
    assert logged_in.json()["data"] == {"cart": 3, "user": "ada"}  # rotation keeps the data

    current = client.get("/read").json()
    assert current["data"] == {"cart": 3, "user": "ada"}
    assert current["id"] != old_id

    stale = replay(client, before)
    assert stale.json() == {"data": {}, "id": None, "new": True}
    assert session_set_cookie(stale) is None  # the unknown id is never echoed back


def test_old_cookie_is_a_read_only_alias_only_during_the_grace(clock: FakeClock) -> None:
    client = client_for(
        starlette_app("add_middleware", backend=MemoryBackend(rotation_grace=5), clock=clock)
    )
    before = cookie_value(client.post("/write", json={"cart": 3}))
    client.post("/login", json={"user": "ada"})

    clock.advance(2)
    in_grace = replay(client, before)
    # A parallel in-flight request of the same browser still sees the session as it
    # was before the login, and nothing it does is written.
    assert in_grace.json()["data"] == {"cart": 3}
    assert set_cookies(in_grace) == []
    written = client.post("/write", json={"x": 1}, headers={"cookie": f"session={before}"})
    assert set_cookies(written) == []

    clock.advance(4)
    assert replay(client, before).json() == {"data": {}, "id": None, "new": True}
    assert client.get("/read").json()["data"] == {"cart": 3, "user": "ada"}


def test_logout_expires_the_cookie_and_the_record(form: Form) -> None:
    client = client_for(starlette_app(form))
    client.post("/login", json={"user": "ada"})
    token = client.cookies["session"]

    out = client.post("/logout")
    header = session_set_cookie(out)
    assert header is not None
    assert header.startswith("session=;")
    assert "Max-Age=0" in header
    assert out.headers["cache-control"] == "private, no-store"
    assert "session" not in client.cookies

    assert client.get("/read").json() == {"data": {}, "id": None, "new": True}
    replayed = replay(client, token)
    assert replayed.json() == {"data": {}, "id": None, "new": True}
    assert set_cookies(replayed) == []


def test_websocket_reads_the_session_set_by_an_http_login(form: Form) -> None:
    client = client_for(starlette_app(form))
    client.post("/login", json={"user": "ada"})

    with client.websocket_connect(WS) as ws:
        assert ws.receive_json() == {"data": {"user": "ada"}, "same": True}

    anonymous = client_for(starlette_app(form))
    with anonymous.websocket_connect(WS) as ws:
        assert ws.receive_json() == {"data": {}, "same": True}


def test_websocket_changes_after_accept_persist() -> None:
    client = client_for(starlette_app("add_middleware"))
    client.post("/login", json={"user": "ada"})
    with client.websocket_connect("wss://testserver/ws-write") as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "stored"
    assert client.get("/read").json()["data"] == {"user": "ada", "from_socket": "hello"}


def test_websocket_changes_persist_when_the_client_disconnects() -> None:
    client = client_for(starlette_app("add_middleware"))
    client.post("/login", json={"user": "ada"})

    def chat() -> None:
        with client.websocket_connect("wss://testserver/ws-loop") as ws:
            ws.send_text("hello")
            assert ws.receive_text() == "stored"

    with pytest.raises(WebSocketDisconnect):  # Starlette re-raises it in the test client
        chat()
    assert client.get("/read").json()["data"] == {"user": "ada", "from_socket": "hello"}


def test_idle_timeout_slides_and_then_ends_the_session(clock: FakeClock) -> None:
    client = client_for(
        starlette_app("constructor", idle_timeout=600, refresh_after=60, clock=clock)
    )
    client.post("/write", json={"cart": 3})

    clock.advance(100)
    refreshed = client.get("/read")  # refresh due: expiry extended, cookie re-sent
    assert refreshed.json()["data"] == {"cart": 3}
    assert "Max-Age=600" in (session_set_cookie(refreshed) or "")

    clock.advance(550)  # 650 s after the write, 550 s after the refresh
    assert client.get("/read").json()["data"] == {"cart": 3}

    clock.advance(601)
    assert client.get("/read").json() == {"data": {}, "id": None, "new": True}


# -- Headers the app sets itself -------------------------------------------------------


def test_app_cookies_cache_control_and_vary_are_preserved(form: Form) -> None:
    client = client_for(starlette_app(form))
    response = client.get("/own-headers")

    cookies = set_cookies(response)
    assert any(c.startswith("theme=dark") for c in cookies)
    assert session_set_cookie(response) is not None
    assert response.headers.get_list("cache-control") == ["no-cache"]
    assert set(response.headers.get_list("vary")) == {"Accept", "Cookie"}
    assert client.cookies["theme"] == "dark"
    assert "session" in client.cookies


def test_a_route_that_ignores_the_session_gets_no_session_headers(form: Form) -> None:
    client = client_for(starlette_app(form))
    client.post("/write", json={"cart": 3})
    response = client.get("/untouched")
    assert set_cookies(response) == []
    assert "vary" not in response.headers
    assert "cache-control" not in response.headers


def test_failed_responses_save_nothing(form: Form) -> None:
    client = client_for(starlette_app(form), raise_server_exceptions=False)
    failed = client.get("/fails")
    assert failed.status_code == 503
    assert set_cookies(failed) == []

    raised = client.get("/raises")
    assert raised.status_code == 500
    assert set_cookies(raised) == []
    assert client.get("/read").json()["data"] == {}


# -- Lifespan passes through -----------------------------------------------------------


def test_lifespan_runs_through_the_middleware(form: Form) -> None:
    events: list[str] = []
    app = starlette_app(form, events)
    with client_for(app) as client:
        assert events == ["startup"]
        assert client.get("/state").text == "hello from lifespan"
    assert events == ["startup", "shutdown"]


def test_lifespan_messages_and_scope_are_untouched() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        seen.append(set(scope))
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    with client_for(SessionMiddleware(app)):
        pass
    keys, startup, shutdown = seen
    assert "session" not in keys
    assert startup == {"type": "lifespan.startup"}
    assert shutdown == {"type": "lifespan.shutdown"}


# -- FastAPI ---------------------------------------------------------------------------


def fastapi_app(
    events: list[str] | None = None, *, install: bool = True, **options: Any
) -> FastAPI:
    app = FastAPI(lifespan=make_lifespan(events if events is not None else []))

    @app.get("/me")
    async def me(session: SessionDep) -> dict[str, Any]:
        return {"user": session.get("user"), "id": session.id, "new": session.new}

    @app.post("/login")
    async def fastapi_login(body: dict[str, str], session: SessionDep) -> dict[str, Any]:
        session.rotate()
        session["user"] = body["user"]
        return {"user": session["user"]}

    @app.post("/logout")
    async def fastapi_logout(session: SessionDep) -> dict[str, bool]:
        session.invalidate()
        return {"ok": True}

    @app.get("/plain")
    async def plain(request: Request) -> dict[str, Any]:
        return dict(request.session)

    @app.get("/same")
    async def same(request: Request, session: SessionDep) -> dict[str, bool]:
        return {"same": session is request.session}

    @app.get("/peek")
    async def peek(session: SessionDep) -> dict[str, bool]:
        return {"ok": True}  # asks for the session without reading a key

    @app.get("/state")
    async def state(request: Request) -> str:
        greeting: str = request.state.greeting
        return greeting

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, session: SessionDep) -> None:
        await websocket.accept()
        await websocket.send_json(
            {"user": session.get("user"), "same": session is websocket.scope["session"]}
        )
        await websocket.close()

    if install:
        app.add_middleware(SessionMiddleware, **options)
    return app


def test_fastapi_session_dep_over_http() -> None:
    client = client_for(fastapi_app(backend=MemoryBackend(rotation_grace=0)))
    assert client.get("/me").json() == {"user": None, "id": None, "new": True}

    first = client.post("/login", json={"user": "ada"})
    assert first.json() == {"user": "ada"}
    token = cookie_value(first)

    me = client.get("/me").json()
    assert me["user"] == "ada"
    assert me["new"] is False
    assert client.get("/plain").json() == {"user": "ada"}  # request.session: same data
    assert client.get("/same").json() == {"same": True}

    again = client.post("/login", json={"user": "bob"})
    assert cookie_value(again) != token
    assert replay(client, token, "/me").json()["user"] is None

    out = client.post("/logout")
    assert "Max-Age=0" in (session_set_cookie(out) or "")
    assert client.get("/me").json()["user"] is None


def test_fastapi_session_dep_marks_the_session_accessed() -> None:
    client = client_for(fastapi_app())
    response = client.get("/peek")
    assert response.headers.get_list("vary") == ["Cookie"]
    assert set_cookies(response) == []


def test_fastapi_session_dep_over_websocket() -> None:
    client = client_for(fastapi_app())
    with client.websocket_connect(WS) as ws:
        assert ws.receive_json() == {"user": None, "same": True}

    client.post("/login", json={"user": "ada"})
    with client.websocket_connect(WS) as ws:
        assert ws.receive_json() == {"user": "ada", "same": True}


def test_fastapi_session_dep_is_not_an_api_parameter() -> None:
    schema = fastapi_app().openapi()
    assert "parameters" not in schema["paths"]["/me"]["get"]
    assert "requestBody" not in schema["paths"]["/me"]["get"]


def test_fastapi_lifespan_runs_through_the_middleware() -> None:
    events: list[str] = []
    with client_for(fastapi_app(events)) as client:
        assert events == ["startup"]
        assert client.get("/state").json() == "hello from lifespan"
    assert events == ["startup", "shutdown"]


def test_fastapi_without_the_middleware_names_the_fix() -> None:
    client = client_for(fastapi_app(install=False))
    with pytest.raises(RuntimeError, match=r"app\.add_middleware\(SessionMiddleware"):
        client.get("/me")


def test_get_session_refuses_another_middlewares_session() -> None:
    connection = HTTPConnection({"type": "http", "headers": [], "session": {"user": "x"}})
    with pytest.raises(RuntimeError, match="another session middleware"):
        get_session(connection)


def test_get_session_returns_the_scope_session_and_marks_it_accessed() -> None:
    session = Session({"user": "ada"})
    connection = HTTPConnection({"type": "websocket", "headers": [], "session": session})
    assert get_session(connection) is session
    assert session.accessed
