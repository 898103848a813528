"""DESIGN §3, rule by rule, through the real middleware and the memory backend."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from asgi_sessions import ConfigurationError, MemoryBackend, SessionMiddleware
from tests.asgi import Client, get_failing, make, session_app
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio


def cookie_of(client: Client) -> str:
    return client.jar["session"]


# -- load ---------------------------------------------------------------------------


async def test_no_cookie_means_new_session_no_io_no_set_cookie() -> None:
    client, backend = make()
    for path in ("/read", "/untouched"):
        response = await client.get(path)
        assert response.status == 200
        assert response.set_cookies == []
    assert backend.calls == []


async def test_read_without_cookie_varies_on_cookie_untouched_does_not() -> None:
    client, _ = make()
    assert (await client.get("/read")).header_values("vary") == ["Cookie"]
    assert (await client.get("/untouched")).header_values("vary") == []


@pytest.mark.parametrize(
    "cookie",
    [
        b"session=" + b"A" * 42,  # one short of a token
        b"session=" + b"A" * 44,
        b"session=" + b"A" * 42 + b"!",
        b"session=" + "é".encode() * 21 + b"A",
        b"session=" + b"A" * 20_000,
        b'session="' + b"A" * 43 + b'"',
    ],
)
async def test_malformed_cookie_gives_empty_session_without_io(
    cookie: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    client, backend = make()
    with caplog.at_level(logging.WARNING, logger="asgi_sessions"):
        response = await client.get("/read", cookie=cookie)
    assert response.status == 200
    assert response.json() == {}
    assert response.set_cookies == []
    assert backend.calls in ([], ["load:invalid"])  # the store itself is never asked
    assert caplog.records, "a malformed cookie is logged"
    raw = cookie.split(b"=", 1)[1].decode("latin-1")
    assert all(raw not in r.getMessage() for r in caplog.records)


async def test_unknown_id_is_never_adopted_or_echoed(caplog: pytest.LogCaptureFixture) -> None:
    client, backend = make()
    forged = "A" * 43
    with caplog.at_level(logging.INFO, logger="asgi_sessions"):
        response = await client.get("/set?k=v", cookie=f"session={forged}".encode())
    assert backend.calls == ["load", "save"]  # looked up once, then a *new* session
    (set_cookie,) = response.set_cookies
    assert forged not in set_cookie
    assert client.jar["session"] != forged
    assert all(forged not in r.getMessage() for r in caplog.records)


async def test_duplicate_session_cookie_is_suspicious_and_gives_empty_session() -> None:
    client, backend = make()
    await client.get("/set?k=v")
    good = cookie_of(client)
    response = await client.get("/read", cookie=f"session={good}; session={good}".encode())
    assert response.json() == {}
    assert backend.calls == ["save"]  # the duplicate never reached the backend


async def test_session_id_only_from_the_cookie() -> None:
    client, _ = make()
    await client.get("/set?k=v")
    token = cookie_of(client)
    response = await client.get(f"/read?session={token}", cookie=b"other=1")
    assert response.json() == {}


# -- commit ------------------------------------------------------------------------------


async def test_write_saves_and_sets_cookie_with_secure_defaults() -> None:
    client, backend = make()
    response = await client.get("/set?k=v")
    (set_cookie,) = response.set_cookies
    assert set_cookie.startswith("session=")
    for attribute in ("Max-Age=43200", "Path=/", "HttpOnly", "Secure", "SameSite=Lax"):
        assert attribute in set_cookie
    assert response.header_values("cache-control") == ["private, no-store"]
    assert response.header_values("vary") == ["Cookie"]
    assert backend.calls == ["save"]
    assert (await client.get("/read")).json() == {"k": "v"}


async def test_empty_session_is_never_stored() -> None:
    client, backend = make()
    response = await client.get("/clear")
    assert response.set_cookies == []
    assert backend.calls == []
    assert len(backend.inner) == 0  # type: ignore[arg-type]


async def test_emptied_session_with_a_record_is_deleted() -> None:
    client, backend = make()
    await client.get("/set?k=v")
    token = cookie_of(client)
    response = await client.get("/del?k=")
    (set_cookie,) = response.set_cookies
    assert "Max-Age=0" in set_cookie
    assert "Expires=Thu, 01 Jan 1970 00:00:00 GMT" in set_cookie
    assert backend.calls[-1] == "delete"
    assert (await client.get("/read", cookie=f"session={token}".encode())).json() == {}


async def test_untouched_and_read_sessions_write_nothing() -> None:
    client, backend = make()
    await client.get("/set?k=v")
    backend.calls.clear()
    for path in ("/read", "/untouched"):
        response = await client.get(path)
        assert response.set_cookies == []
        assert response.header_values("cache-control") == []
    assert backend.calls == ["load", "load"]


@pytest.mark.parametrize("path", ["/fail500", "/raise"])
async def test_nothing_is_saved_on_5xx_or_exception(path: str) -> None:
    client, backend = make()
    await get_failing(client, path)
    assert backend.calls == []
    assert len(backend.inner) == 0  # type: ignore[arg-type]


async def test_5xx_on_an_existing_session_keeps_old_data() -> None:
    client, _ = make()
    await client.get("/set?x=old")
    await client.get("/fail500")
    assert (await client.get("/read")).json() == {"x": "old"}


async def test_cookies_and_cache_control_set_by_the_app_are_kept() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["session"]["k"] = "v"
        headers = [
            (b"set-cookie", b"theme=dark; Path=/"),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    client = Client(SessionMiddleware(app))
    response = await client.get("/")
    assert response.set_cookies[0] == "theme=dark; Path=/"
    assert response.set_cookies[1].startswith("session=")
    assert response.header_values("cache-control") == ["no-cache"]


async def test_app_setting_the_session_cookie_itself_wins() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["session"]["k"] = "v"
        headers = [(b"set-cookie", b"session=mine; Path=/")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    response = await Client(SessionMiddleware(app)).get("/")
    assert response.set_cookies == ["session=mine; Path=/"]


async def test_lifespan_passes_through_untouched() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = SessionMiddleware(app)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await middleware(scope, None, None)  # type: ignore[arg-type]
    assert seen == [{"type": "lifespan", "asgi": {"version": "3.0"}}]


# -- expiry -----------------------------------------------------------------------------


async def test_idle_timeout_with_injected_clock(clock: FakeClock) -> None:
    client, _ = make(idle_timeout=600, refresh_after=60, clock=clock)
    await client.get("/set?k=v")
    clock.advance(599)
    assert (await client.get("/read", cookie=f"session={cookie_of(client)}".encode())).json() == {
        "k": "v"
    }
    # That request refreshed the session (599 > refresh_after): idle restarts there.
    clock.advance(599)
    assert (await client.get("/read")).json() == {"k": "v"}
    clock.advance(601)
    assert (await client.get("/read")).json() == {}


async def test_absolute_timeout_is_never_extended_by_activity(clock: FakeClock) -> None:
    client, _ = make(idle_timeout=600, absolute_timeout=1000, refresh_after=60, clock=clock)
    await client.get("/set?k=v")
    for _ in range(9):
        clock.advance(100)
        assert (await client.get("/set?k=v")).json() == {"k": "v"}
    clock.advance(100)  # 1000 s after creation, however active
    assert (await client.get("/read")).json() == {}


async def test_refresh_throttle(clock: FakeClock) -> None:
    client, backend = make(idle_timeout=600, refresh_after=120, clock=clock)
    await client.get("/set?k=v")
    backend.calls.clear()
    clock.advance(119)
    response = await client.get("/read")
    assert response.set_cookies == []
    assert backend.calls == ["load"]
    clock.advance(1)
    response = await client.get("/read")
    assert backend.calls == ["load", "load+refresh"]  # the refresh rides on the load
    (set_cookie,) = response.set_cookies
    assert "Max-Age=600" in set_cookie  # the browser's expiry slides as well


async def test_cookie_max_age_is_capped_by_the_absolute_deadline(clock: FakeClock) -> None:
    client, _ = make(idle_timeout=600, absolute_timeout=700, refresh_after=60, clock=clock)
    await client.get("/set?k=v")
    clock.advance(400)
    (set_cookie,) = (await client.get("/set?k=w")).set_cookies
    assert "Max-Age=300" in set_cookie


async def test_set_expiry_zero_gives_a_browser_session_cookie(clock: FakeClock) -> None:
    client, _ = make(idle_timeout=600, refresh_after=60, clock=clock)
    (set_cookie,) = (await client.get("/expiry?s=0")).set_cookies
    assert "Max-Age" not in set_cookie
    assert "Expires" not in set_cookie
    # The server still ends it after the idle timeout.
    clock.advance(601)
    assert (await client.get("/read")).json() == {}


async def test_set_expiry_zero_on_a_stored_session_resends_its_cookie(clock: FakeClock) -> None:
    """ "Remember me" turned off on an existing session: the browser's persistent
    cookie must become a browser-session cookie, under the same value."""
    client, _ = make(idle_timeout=600, refresh_after=60, clock=clock)
    (persistent,) = (await client.get("/set?k=v")).set_cookies
    assert "Max-Age=600" in persistent
    (set_cookie,) = (await client.get("/expiry?s=0")).set_cookies
    assert set_cookie.split(";")[0] == persistent.split(";")[0]
    assert "Max-Age" not in set_cookie
    assert "Expires" not in set_cookie
    # Once a browser-session cookie, an unchanged value is not re-sent on each write.
    assert (await client.get("/set?k=w")).set_cookies == []


async def test_set_expiry_seconds_overrides_idle_timeout(clock: FakeClock) -> None:
    client, _ = make(idle_timeout=600, refresh_after=60, clock=clock)
    (set_cookie,) = (await client.get("/expiry?s=30")).set_cookies
    assert "Max-Age=30" in set_cookie
    clock.advance(31)
    assert (await client.get("/read")).json() == {}


async def test_rotate_after_issues_a_new_id_periodically(clock: FakeClock) -> None:
    client, backend = make(
        MemoryBackend(rotation_grace=0),
        idle_timeout=600,
        refresh_after=60,
        rotate_after=300,
        clock=clock,
    )
    await client.get("/set?k=v")
    first = cookie_of(client)
    clock.advance(301)
    await client.get("/read")
    assert backend.calls[-1] == "save:rotate"
    assert cookie_of(client) != first
    assert (await client.get("/read")).json() == {"k": "v"}
    assert (await client.get("/read", cookie=f"session={first}".encode())).json() == {}


# -- rotation and invalidation ------------------------------------------------------------


async def test_rotate_changes_id_and_old_id_dies_after_grace(clock: FakeClock) -> None:
    client, _ = make(MemoryBackend(rotation_grace=5), clock=clock)
    await client.get("/set?cart=1")
    old = cookie_of(client)
    response = await client.get("/login?user=ann")
    new = cookie_of(client)
    assert new != old
    assert response.json() == {"cart": "1", "user": "ann"}
    # Inside the grace, the old cookie still reads the pre-rotation data, read-only.
    inside = await client.get("/set?cart=2", cookie=f"session={old}".encode())
    assert inside.json() == {"cart": "2"}
    assert inside.set_cookies == []
    assert (await client.get("/read")).json() == {"cart": "1", "user": "ann"}
    clock.advance(6)
    assert (await client.get("/read", cookie=f"session={old}".encode())).json() == {}
    assert (await client.get("/read")).json() == {"cart": "1", "user": "ann"}


async def test_invalidate_clears_server_state_and_cookie() -> None:
    client, backend = make()
    await client.get("/set?k=v")
    token = cookie_of(client)
    response = await client.get("/invalidate")
    (set_cookie,) = response.set_cookies
    assert set_cookie.startswith("session=;")
    assert "Max-Age=0" in set_cookie
    assert len(backend.inner) == 0  # type: ignore[arg-type]
    assert (await client.get("/read", cookie=f"session={token}".encode())).json() == {}


async def test_invalidate_on_the_grace_alias_ends_the_new_session_too(clock: FakeClock) -> None:
    client, _ = make(MemoryBackend(rotation_grace=5), clock=clock)
    await client.get("/set?k=v")
    old = cookie_of(client)
    await client.get("/rotate")
    new = cookie_of(client)
    await client.get("/invalidate", cookie=f"session={old}".encode())
    assert (await client.get("/read", cookie=f"session={new}".encode())).json() == {}


# -- concurrency ----------------------------------------------------------------------------


async def test_two_requests_change_different_keys_no_lost_update() -> None:
    import asyncio

    both_loaded = asyncio.Barrier(2)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        key, _, value = scope["query_string"].decode().partition("=")
        await both_loaded.wait()  # both requests loaded the same snapshot
        scope["session"][key] = value
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    backend = MemoryBackend()
    seed, _ = make(backend)
    await seed.get("/set?seed=1")
    cookie = f"session={seed.jar['session']}".encode()
    client = Client(SessionMiddleware(app, backend=backend))
    await asyncio.gather(client.get("/?a=1", cookie=cookie), client.get("/?b=2", cookie=cookie))
    assert (await seed.get("/read")).json() == {"seed": "1", "a": "1", "b": "2"}


async def test_logout_during_an_in_flight_request_does_not_resurrect() -> None:
    import asyncio

    loaded = asyncio.Event()
    logged_out = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        loaded.set()
        await logged_out.wait()
        scope["session"]["late"] = "write"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    backend = MemoryBackend()
    client, _ = make(backend)
    await client.get("/set?k=v")
    cookie = f"session={client.jar['session']}".encode()
    slow_client = Client(SessionMiddleware(slow, backend=backend))
    in_flight = asyncio.create_task(slow_client.get("/", cookie=cookie))
    await loaded.wait()
    await client.get("/invalidate")
    logged_out.set()
    response = await in_flight
    assert len(backend) == 0
    assert "Max-Age=0" in response.set_cookies[0]
    assert (await client.get("/read", cookie=cookie)).json() == {}


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cookie_name": "bad name"}, "cookie_name"),
        ({"cookie_name": "a;b"}, "cookie_name"),
        ({"cookie_name": ""}, "cookie_name"),
        ({"same_site": "none", "https_only": False}, "same_site"),
        ({"same_site": "sideways"}, "same_site"),
        ({"cookie_name": "__Host-s", "domain": "example.com"}, "__Host-"),
        ({"cookie_name": "__Host-s", "path": "/app"}, "__Host-"),
        ({"cookie_name": "__Host-s", "https_only": False}, "__Secure-/__Host-"),
        ({"cookie_name": "__Secure-s", "https_only": False}, "__Secure-/__Host-"),
        ({"partitioned": True, "https_only": False}, "partitioned"),
        ({"idle_timeout": -1}, "idle_timeout"),
        ({"absolute_timeout": -5}, "absolute_timeout"),
        ({"refresh_after": -1}, "refresh_after"),
        ({"rotate_after": -1}, "rotate_after"),
        ({"idle_timeout": 100, "absolute_timeout": 50}, "absolute_timeout"),
        ({"idle_timeout": 100, "refresh_after": 100}, "refresh_after"),
        ({"path": "no-slash"}, "path"),
        ({"domain": "a;b"}, "domain"),
        ({"backend": object()}, "backend"),
    ],
)
def test_bad_configuration_fails_at_start_up(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SessionMiddleware(session_app, **settings)


def test_valid_host_prefix_configuration() -> None:
    middleware = SessionMiddleware(session_app, cookie_name="__Host-session")
    assert middleware.cookie.name == "__Host-session"
