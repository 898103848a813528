"""SessionEndpoints (issue 5): the session API for client code, devices, and CSRF."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from asgi_sessions import ConfigurationError, JWTBackend, MemoryBackend, SessionMiddleware
from asgi_sessions.endpoints import SessionEndpoints
from tests.asgi import Client, http_scope, session_app

BASE = "https://app.example"
SAME = {"sec-fetch-site": "same-origin"}
SAME_ORIGIN = [(b"sec-fetch-site", b"same-origin")]


def make_app(backend: Any = None) -> Starlette:
    backend = backend or MemoryBackend()

    async def login(request: Request) -> JSONResponse:
        request.session.bind_user(request.query_params["user"])
        request.session["user"] = request.query_params["user"]
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Mount("/auth", app=SessionEndpoints(backend)),
        ]
    )
    app.add_middleware(SessionMiddleware, backend=backend)
    return app


def client(app: Starlette) -> TestClient:
    return TestClient(app, base_url=BASE)


def test_the_current_session_for_client_code() -> None:
    app = make_app()
    browser = client(app)
    anonymous = browser.get("/auth/session").json()
    assert anonymous["authenticated"] is False
    assert anonymous["user"] is None
    browser.post("/login?user=ann", headers=SAME)
    body = browser.get("/auth/session").json()
    assert body["authenticated"] is True
    assert body["user"] == "ann"
    assert body["expires_at"] < body["absolute_expires_at"]
    raw = browser.get("/auth/session").text
    assert browser.cookies["session"] not in raw  # never the token
    refreshed = browser.post("/auth/session/refresh", headers=SAME)
    assert refreshed.status_code == 200
    assert refreshed.headers["cache-control"] == "no-store"
    assert browser.post("/auth/logout", headers=SAME).json() == {"authenticated": False}
    assert browser.get("/auth/session").json()["authenticated"] is False


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"sec-fetch-site": "same-origin"}, True),
        ({"sec-fetch-site": "none"}, True),
        ({"sec-fetch-site": "same-site"}, False),
        ({"sec-fetch-site": "cross-site"}, False),
        ({"origin": "https://app.example"}, True),
        ({"origin": "https://evil.example"}, False),
        ({"origin": "http://app.example"}, False),
        ({"origin": "null"}, False),
        ({"origin": "https://admin.example"}, True),  # trusted
        ({}, True),  # not a browser
    ],
)
def test_unsafe_methods_refuse_cross_site_requests(headers: dict[str, str], allowed: bool) -> None:
    backend = MemoryBackend()
    app = Starlette(
        routes=[
            Mount("/auth", app=SessionEndpoints(backend, trusted_origins=["https://admin.example"]))
        ]
    )
    app.add_middleware(SessionMiddleware, backend=backend)
    browser = client(app)
    for path in ("/auth/logout", "/auth/session/refresh", "/auth/devices/revoke-others"):
        response = browser.post(path, headers=headers)
        if allowed:
            assert response.status_code != 403, (path, headers)
        else:
            assert response.status_code == 403, (path, headers)
            assert response.json() == {"detail": "cross-site request refused"}


def test_devices_list_revoke_one_and_revoke_others() -> None:
    app = make_app()
    phone, laptop, tablet, other = (client(app) for _ in range(4))
    for device in (phone, laptop, tablet):
        device.post("/login?user=ann", headers=SAME)
    other.post("/login?user=bob", headers=SAME)
    listed = laptop.get("/auth/devices").json()["devices"]
    assert len(listed) == 3
    assert sum(d["current"] for d in listed) == 1
    assert all(
        set(d) == {"id", "current", "created_at", "last_seen", "expires_at", "ip", "user_agent"}
        for d in listed
    )
    for device in (phone, laptop, tablet):
        assert device.cookies["session"] not in str(listed)
    # Revoke the phone from the laptop.
    current = next(d["id"] for d in listed if d["current"])
    phone_id = phone.get("/auth/devices").json()["devices"]
    phone_id = next(d["id"] for d in phone_id if d["current"])
    assert laptop.post(f"/auth/devices/{phone_id}/revoke", headers=SAME).json() == {"revoked": 1}
    assert phone.get("/auth/session").json()["authenticated"] is False
    # Someone else's session is not found; this one is refused (use logout).
    bob_id = next(d["id"] for d in other.get("/auth/devices").json()["devices"])
    assert laptop.post(f"/auth/devices/{bob_id}/revoke", headers=SAME).status_code == 404
    assert other.get("/auth/session").json()["authenticated"] is True
    assert laptop.post(f"/auth/devices/{current}/revoke", headers=SAME).status_code == 400
    # Log out all other devices.
    assert laptop.post("/auth/devices/revoke-others", headers=SAME).json() == {"revoked": 1}
    assert tablet.get("/auth/session").json()["authenticated"] is False
    assert [d["current"] for d in laptop.get("/auth/devices").json()["devices"]] == [True]


def test_devices_need_a_login_and_a_server_side_backend() -> None:
    assert client(make_app()).get("/auth/devices").status_code == 401
    jwt_app = make_app(JWTBackend("endpoints-test-secret-of-at-least-32-bytes"))
    browser = client(jwt_app)
    browser.post("/login?user=ann", headers=SAME)
    assert browser.get("/auth/devices").status_code == 501


def test_configuration_and_mistakes() -> None:
    with pytest.raises(ConfigurationError):
        SessionEndpoints(trusted_origins="https://a.example")
    with pytest.raises(ConfigurationError):
        SessionEndpoints(trusted_origins=["https://a.example/path"])
    browser = client(make_app())
    assert browser.get("/auth/nope").status_code == 404
    assert browser.get("/auth/logout").status_code == 405


class GatedSaves(MemoryBackend):
    """A MemoryBackend whose next save waits for ``gate`` (once armed)."""

    gate: asyncio.Event | None = None

    async def save(self, token: Any, record: Any, delta: Any, **kwargs: Any) -> str:
        gate, self.gate = self.gate, None
        if gate is not None:
            await gate.wait()
        return await super().save(token, record, delta, **kwargs)


@pytest.mark.anyio
async def test_a_refresh_in_flight_keeps_a_parallel_write() -> None:
    """POST /session/refresh restarts the idle clock without rewriting the data it
    loaded: another tab's write that lands meanwhile survives (DESIGN §3:
    concurrent changes of different keys both land)."""
    backend = GatedSaves()
    tab = Client(SessionMiddleware(session_app, backend=backend))
    await tab.get("/set?a=1")
    endpoints = SessionMiddleware(SessionEndpoints(backend), backend=backend)
    cookie = f"session={tab.jar['session']}".encode()
    scope = http_scope("/session/refresh", "", [(b"cookie", cookie), *SAME_ORIGIN])
    scope["method"] = "POST"
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    gate = backend.gate = asyncio.Event()
    refresh = asyncio.ensure_future(endpoints(scope, receive, send))
    await asyncio.sleep(0.01)  # the refresh has loaded and waits in its save
    await tab.get("/set?b=2")
    gate.set()
    await asyncio.wait_for(refresh, 5)
    assert sent[0]["status"] == 200
    assert (await tab.get("/read")).json() == {"a": "1", "b": "2"}
