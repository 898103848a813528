"""JWTBackend with a Redis deny list: logout really logs out (ASVS 5.0 7.4.1)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from asgi_sessions import ConfigurationError, JWTBackend, SessionMiddleware
from tests.asgi import Client, session_app
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

SECRET = "jwt-revocation-secret-of-at-least-32-bytes"


@pytest.fixture
async def backend(redis_url: str, clock: FakeClock) -> AsyncIterator[JWTBackend]:
    backend = JWTBackend(
        SECRET,
        revocation=redis_url,
        revocation_prefix=f"j{uuid.uuid4().hex[:12]}:",
        rotation_grace=5,
        clock=clock,
    )
    yield backend
    await backend.aclose()


def client_for(backend: JWTBackend, clock: FakeClock) -> Client:
    return Client(SessionMiddleware(session_app, backend=backend, clock=clock))


async def test_a_cookie_captured_before_logout_is_refused_after_it(
    backend: JWTBackend, clock: FakeClock
) -> None:
    client = client_for(backend, clock)
    await client.get("/login?user=ann")
    captured = f"session={client.jar['session']}".encode()
    assert (await Client(client.app).get("/read", cookie=captured)).json() == {"user": "ann"}
    await client.get("/invalidate")
    assert (await Client(client.app).get("/read", cookie=captured)).json() == {}
    # A fresh login afterwards is not affected.
    await client.get("/login?user=ann")
    assert (await client.get("/read")).json() == {"user": "ann"}


async def test_without_a_deny_list_a_captured_cookie_outlives_logout(clock: FakeClock) -> None:
    """The documented limit of stateless tokens, so the option above matters."""
    backend = JWTBackend(SECRET)
    client = client_for(backend, clock)
    await client.get("/login?user=ann")
    captured = f"session={client.jar['session']}".encode()
    await client.get("/invalidate")
    assert (await Client(client.app).get("/read", cookie=captured)).json() == {"user": "ann"}


async def test_rotation_denies_the_old_token_after_the_grace(
    backend: JWTBackend, clock: FakeClock
) -> None:
    client = client_for(backend, clock)
    await client.get("/set?cart=1")
    before = f"session={client.jar['session']}".encode()
    await client.get("/login?user=ann")  # rotate(): a new session ID
    clock.advance(2)
    assert (await Client(client.app).get("/read", cookie=before)).json() == {"cart": "1"}
    clock.advance(4)
    assert (await Client(client.app).get("/read", cookie=before)).json() == {}
    assert (await client.get("/read")).json() == {"cart": "1", "user": "ann"}


async def test_revoke_user_ends_every_session_but_the_kept_one(
    backend: JWTBackend, clock: FakeClock
) -> None:
    phone = client_for(backend, clock)
    laptop = client_for(backend, clock)
    other = client_for(backend, clock)
    await phone.get("/bind?user=ann")
    await laptop.get("/bind?user=ann")
    await other.get("/bind?user=bob")
    laptop_sid = (await backend.load(laptop.jar["session"], now=clock.now)).session_id  # type: ignore[union-attr]
    clock.advance(1)
    await backend.revoke_user("ann", keep=laptop_sid)
    assert (await phone.get("/read")).json() == {}
    assert (await laptop.get("/read")).json() == {"user": "ann"}
    assert (await other.get("/read")).json() == {"user": "bob"}
    # Logging in again after the revocation works.
    clock.advance(1)
    await phone.get("/bind?user=ann")
    assert (await phone.get("/read")).json() == {"user": "ann"}


async def test_one_redis_command_per_request(private_redis: Any, clock: FakeClock) -> None:
    raw = Redis.from_url(private_redis.url)
    backend = JWTBackend(SECRET, revocation=private_redis.url, clock=clock)
    try:
        client = client_for(backend, clock)
        await client.get("/bind?user=ann")
        await raw.config_resetstat()
        await client.get("/read")
        stats = await raw.info("commandstats")
        # Connection upkeep (HELLO, CLIENT SETINFO, a health-check PING) is not the
        # request's; nor is the counting's own CONFIG RESETSTAT and INFO.
        upkeep = {"hello", "client|setinfo", "ping", "config|resetstat", "info"}
        calls = {
            k: v["calls"] for k, v in stats.items() if k.removeprefix("cmdstat_") not in upkeep
        }
        assert calls == {"cmdstat_mget": 1}, calls
    finally:
        await backend.aclose()
        await raw.aclose()


async def test_revocation_is_refused_without_redis() -> None:
    with pytest.raises(ConfigurationError, match="revocation"):
        await JWTBackend(SECRET).revoke_user("ann")
    with pytest.raises(ConfigurationError, match="rotation_grace"):
        JWTBackend(SECRET, rotation_grace=-1)


def _gated_write(gate: asyncio.Event) -> Any:
    """session_app, except that /slow-write reads the session, waits for ``gate``
    (a request still running while another one logs out) and then writes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] != "/slow-write":
            await session_app(scope, receive, send)
            return
        session = scope["session"]
        assert session.get("user") == "ann"
        await gate.wait()
        session["cart"] = "3"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def _live_tokens(set_cookies: list[str]) -> list[str]:
    return [
        c.split(";", 1)[0].partition("=")[2]
        for c in set_cookies
        if c.startswith("session=") and "Max-Age=0" not in c
    ]


async def test_a_request_in_flight_during_logout_does_not_bring_the_session_back(
    backend: JWTBackend, clock: FakeClock
) -> None:
    """Found in review: the in-flight request's commit issued a token with the same
    session ID and a later exp, which its Set-Cookie could deliver after the logout's;
    once the deny entry (which lived until the logged-out token's exp) expired, that
    token worked again. Its commit now finds the ID denied and issues nothing."""
    gate = asyncio.Event()
    app = SessionMiddleware(
        _gated_write(gate), backend=backend, clock=clock, idle_timeout=600, refresh_after=60
    )
    browser = Client(app)
    await browser.get("/bind?user=ann")
    cookie = f"session={browser.jar['session']}".encode()
    clock.advance(100)
    in_flight = asyncio.create_task(Client(app).get("/slow-write", cookie=cookie))
    await asyncio.sleep(0.05)  # it has loaded the session and waits
    logout = await Client(app).get("/invalidate", cookie=cookie)
    assert any("Max-Age=0" in c for c in logout.set_cookies)
    gate.set()
    late = await in_flight
    assert late.status == 200
    assert _live_tokens(late.set_cookies) == []
    assert any(c.startswith("session=;") for c in late.set_cookies)  # expired again


async def test_a_deny_entry_lasts_as_long_as_any_token_of_the_session_can(
    redis_url: str, clock: FakeClock
) -> None:
    """Found in review: the deny entry lived until the exp of the token presented at
    logout, but another token of the same session (issued by a request that committed
    just before, whose Set-Cookie reached the browser after the logout) lives longer.
    The entry now lives until the session's absolute deadline."""
    prefix = f"j{uuid.uuid4().hex[:12]}:"
    backend = JWTBackend(SECRET, revocation=redis_url, revocation_prefix=prefix, clock=clock)
    raw = Redis.from_url(redis_url)
    try:
        app = SessionMiddleware(
            session_app,
            backend=backend,
            clock=clock,
            idle_timeout=600,
            absolute_timeout=7200,
            refresh_after=60,
        )
        browser = Client(app)
        await browser.get("/bind?user=ann")
        older = f"session={browser.jar['session']}".encode()
        clock.advance(300)
        await browser.get("/read")  # a refresh: a newer token of the same session
        newer = browser.jar["session"]
        entry = backend._cache[newer]
        assert entry.exp_limit > clock.now + 600
        await Client(app).get("/invalidate", cookie=older)
        assert (await Client(app).get("/read", cookie=f"session={newer}".encode())).json() == {}
        (key,) = [k async for k in raw.scan_iter(match=f"{prefix}*:d:*")]
        ttl = await raw.ttl(key)
        assert ttl >= entry.exp_limit - clock.now
        # Any token of the session ends by the absolute deadline (7200 s after creation).
        assert ttl >= 7200 - 300 - 1
        assert ttl <= 7200 - 300 + backend.leeway + 1  # and then the entry goes by itself
    finally:
        await backend.aclose()
        await raw.aclose()


async def test_a_write_on_the_old_id_during_the_rotation_grace_is_denied_with_it(
    redis_url: str, clock: FakeClock
) -> None:
    """A write on the old ID within the grace still works (parallel requests of the
    browser), and the deny entry of the old ID covers the token it issues."""
    prefix = f"j{uuid.uuid4().hex[:12]}:"
    backend = JWTBackend(
        SECRET, revocation=redis_url, revocation_prefix=prefix, rotation_grace=5, clock=clock
    )
    raw = Redis.from_url(redis_url)
    try:
        app = SessionMiddleware(
            session_app, backend=backend, clock=clock, idle_timeout=600, refresh_after=60
        )
        browser = Client(app)
        await browser.get("/bind?user=ann")
        before = f"session={browser.jar['session']}".encode()
        await browser.get("/login?user=ann")  # rotate(): the old ID is denied after 5 s
        rotated_at = clock.now
        clock.advance(2)
        fork = await Client(app).get("/set?cart=1", cookie=before)  # within the grace
        (token,) = _live_tokens(fork.set_cookies)
        (key,) = [k async for k in raw.scan_iter(match=f"{prefix}*:d:*")]
        # Redis counts the entry's TTL in real time, which this test's clock does not move.
        assert rotated_at + await raw.ttl(key) >= backend._cache[token].exp_limit
        clock.advance(4)
        assert (await Client(app).get("/read", cookie=f"session={token}".encode())).json() == {}
        assert (await browser.get("/read")).json() == {"user": "ann"}
    finally:
        await backend.aclose()
        await raw.aclose()
