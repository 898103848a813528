"""JWTBackend with a Redis deny list: logout really logs out (ASVS 5.0 7.4.1)."""

from __future__ import annotations

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
