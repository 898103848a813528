"""The demo app in examples/demo.py, driven end to end with Starlette's TestClient."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from starlette.testclient import TestClient

if TYPE_CHECKING:
    from tests.conftest import FakeClock

DEMO_PATH = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def _load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("asgi_sessions_demo", DEMO_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


demo = _load_demo()
COOKIE = "demo_session"


def client_for(app: Any) -> TestClient:
    # https works whether or not the demo's cookie is Secure (DEMO_HTTPS=1).
    return TestClient(app, base_url="https://testserver", follow_redirects=False)


@pytest.fixture
def client() -> TestClient:
    return client_for(demo.app)


def views(page: str) -> int:
    match = re.search(r'<strong id="views">(\d+)</strong>', page)
    assert match is not None
    return int(match.group(1))


def csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]*)"', page)
    assert match is not None
    return match.group(1)


def log_in(client: TestClient, name: str) -> None:
    response = client.post("/login", data={"name": name})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"


def test_login_dashboard_logout(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200
    assert '<form method="post" action="/login">' in index.text
    assert client.get("/dashboard").headers["location"] == "/"

    name = "<script>alert(1)</script> & Ada"
    log_in(client, name)
    token = client.cookies[COOKIE]

    first = client.get("/dashboard")
    assert first.status_code == 200
    assert "Hello, &lt;script&gt;alert(1)&lt;/script&gt; &amp; Ada</h1>" in first.text
    assert "<script>alert(1)" not in first.text
    assert token not in first.text  # the page shows the public id, never the cookie
    assert 'id="countdown">15:00<' in first.text
    assert views(first.text) == 1
    assert first.headers["cache-control"] == "private, no-store"

    assert views(client.get("/dashboard").text) == 2
    assert client.get("/").headers["location"] == "/dashboard"  # already logged in

    out = client.post("/logout", data={"csrf": csrf(first.text)})
    assert out.status_code == 303
    assert out.headers["location"] == "/"
    assert any(
        h.startswith(f"{COOKIE}=;") and "Max-Age=0" in h for h in out.headers.get_list("set-cookie")
    )
    assert COOKIE not in client.cookies
    assert client.get("/dashboard").headers["location"] == "/"
    # The old cookie is dead server-side too.
    replayed = client.get("/dashboard", headers={"cookie": f"{COOKIE}={token}"})
    assert replayed.headers["location"] == "/"


def test_login_rotates_the_session_id(client: TestClient) -> None:
    log_in(client, "ada")
    first = client.cookies[COOKIE]
    log_in(client, "bob")
    assert client.cookies[COOKIE] != first
    page = client.get("/dashboard").text
    assert "Hello, bob</h1>" in page
    assert views(page) == 1  # a new login starts a clean session


def test_logout_needs_the_form_token(client: TestClient) -> None:
    log_in(client, "ada")
    refused = client.post("/logout", data={"csrf": "forged"})
    assert refused.status_code == 403
    assert client.get("/dashboard").status_code == 200


@pytest.mark.parametrize("name", ["", "   ", "x" * 65])
def test_login_refuses_a_bad_name(client: TestClient, name: str) -> None:
    response = client.post("/login", data={"name": name})
    assert response.status_code == 400
    assert "Enter a name" in response.text
    assert "set-cookie" not in response.headers


def test_login_form_escapes_the_name_it_echoes(client: TestClient) -> None:
    name = '"><img src=x onerror=alert(1)>' + "x" * 64
    response = client.post("/login", data={"name": name})
    assert response.status_code == 400
    assert "<img" not in response.text
    assert 'value="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;' in response.text


def test_idle_timeout_logs_out(clock: FakeClock) -> None:
    client = client_for(demo.create_app(https_only=True, clock=clock))
    response = client.post("/login", data={"name": "ada"})
    assert "Secure" in response.headers["set-cookie"]

    clock.advance(demo.IDLE_TIMEOUT - 60)
    page = client.get("/dashboard")  # a view slides the idle deadline
    assert 'id="countdown">15:00<' in page.text
    clock.advance(demo.IDLE_TIMEOUT - 60)
    assert client.get("/dashboard").status_code == 200

    clock.advance(demo.IDLE_TIMEOUT + 1)
    assert client.get("/dashboard").headers["location"] == "/"


def test_plain_http_cookie_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_HTTPS", raising=False)
    client = TestClient(demo.create_app(), base_url="http://127.0.0.1:8000", follow_redirects=False)
    response = client.post("/login", data={"name": "ada"})
    assert "Secure" not in response.headers["set-cookie"]
    assert client.get("/dashboard").status_code == 200


def test_countdown_is_capped_by_the_absolute_lifetime(clock: FakeClock) -> None:
    client = client_for(demo.create_app(clock=clock))
    log_in(client, "ada")
    for _ in range(5):
        clock.advance(600)
        assert client.get("/dashboard").status_code == 200
    clock.advance(600 - 120)  # 58 minutes after login: 2 minutes of absolute lifetime left
    assert 'id="countdown">2:00<' in client.get("/dashboard").text
    clock.advance(120)
    assert client.get("/dashboard").headers["location"] == "/"


def test_devices_page_revoke_one_and_log_out_the_others(clock: FakeClock) -> None:
    app = demo.create_app(clock=clock)
    laptop, phone, tablet = (client_for(app) for _ in range(3))
    for device in (laptop, phone, tablet):
        log_in(device, "ada")
    page = laptop.get("/devices")
    assert page.status_code == 200
    assert page.text.count("<strong>this device</strong>") == 1
    ids = re.findall(r'class="revoke" data-id="([0-9a-f]{64})"', page.text)
    assert len(ids) == 2
    for device in (laptop, phone, tablet):
        assert device.cookies[COOKIE] not in page.text
    # The page's button posts to the session API (same-origin fetch).
    phone_page = phone.get("/devices").text
    laptop_id = set(ids) ^ set(re.findall(r'data-id="([0-9a-f]{64})"', phone_page))
    assert len(laptop_id) == 2  # each page lists the other two
    revoked = laptop.post(
        f"/auth/devices/{ids[0]}/revoke", headers={"sec-fetch-site": "same-origin"}
    )
    assert revoked.json() == {"revoked": 1}
    landed = [d.get("/dashboard").headers.get("location") for d in (phone, tablet)]
    assert sorted(landed, key=str) == sorted([None, "/"], key=str)  # one of them is out
    laptop.post("/auth/devices/revoke-others", headers={"sec-fetch-site": "same-origin"})
    assert phone.get("/dashboard").headers["location"] == "/"
    assert tablet.get("/dashboard").headers["location"] == "/"
    assert laptop.get("/dashboard").status_code == 200
    assert laptop.get("/devices").text.count("<tr>") == 2  # the header and this device
    cross_site = laptop.post(
        "/auth/devices/revoke-others", headers={"sec-fetch-site": "cross-site"}
    )
    assert cross_site.status_code == 403


def test_redis_url_switches_the_demo_to_redis(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    app = demo.create_app()
    assert type(app.backend).__name__ == "RedisBackend"
    # One event loop for every request (the Redis client's connections belong to it).
    with client_for(app) as client:
        log_in(client, "ada")
        assert "Hello, ada</h1>" in client.get("/dashboard").text
        assert "this device" in client.get("/devices").text
        assert client.portal is not None
        client.portal.call(app.backend.aclose)
