"""HybridBackend: access token in front, server-side session behind (issue 4).

Runs on the memory store and on a real Redis; Redis command counts come from
``INFO commandstats`` of a private server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from asgi_sessions import (
    ConfigurationError,
    HybridBackend,
    InvalidToken,
    MemoryBackend,
    SerializationError,
    SessionMiddleware,
    SessionTooLarge,
)
from asgi_sessions.backends.base import Delta, SessionRecord
from asgi_sessions.backends.redis import RedisBackend
from asgi_sessions.events import SessionEvent
from tests.asgi import Client, get_failing, session_app, websocket_scope
from tests.conftest import FakeClock
from tests.redis_monitor import commands_sent

pytestmark = pytest.mark.anyio

SECRET = "hybrid-test-secret-of-at-least-32-bytes!"
ACCESS = 900


def make_store(
    request: pytest.FixtureRequest, clock: FakeClock, grace: int
) -> RedisBackend | MemoryBackend:
    if request.param == "memory":
        return MemoryBackend(clock=clock, rotation_grace=grace)
    url = request.getfixturevalue("redis_url")
    return RedisBackend(url, prefix=f"h{uuid.uuid4().hex[:12]}:", rotation_grace=grace)


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[RedisBackend | MemoryBackend]:
    backend = make_store(request, clock, 5)
    yield backend
    await backend.aclose()


def hybrid(store: Any, clock: FakeClock, **options: Any) -> HybridBackend:
    return HybridBackend(store, secret=SECRET, access_ttl=ACCESS, clock=clock, **options)


def client_for(backend: HybridBackend, clock: FakeClock, **settings: Any) -> Client:
    return Client(SessionMiddleware(session_app, backend=backend, clock=clock, **settings))


def pair(client: Client) -> tuple[str, str]:
    access, _, refresh = client.jar["session"].rpartition(".")
    return access, refresh


async def test_round_trip_and_a_refresh_rotates_the_refresh_token(
    store: Any, clock: FakeClock
) -> None:
    backend = hybrid(store, clock)
    client = client_for(backend, clock)
    await client.get("/set?k=v")
    access, refresh = pair(client)
    assert (await client.get("/read")).json() == {"k": "v"}
    assert pair(client) == (access, refresh)  # a valid access token: nothing re-issued
    clock.advance(ACCESS + 1)
    response = await client.get("/read")
    assert response.json() == {"k": "v"}
    new_access, new_refresh = pair(client)
    assert new_access != access
    assert new_refresh != refresh
    # The old pair reads the session during the grace, and writes nothing there.
    old = f"session={access}.{refresh}".encode()
    inside = await client.get("/set?k=stale", cookie=old)
    assert inside.json() == {"k": "stale"}
    assert inside.set_cookies == []
    assert (await client.get("/read")).json() == {"k": "v"}


async def test_a_refresh_is_one_refreshed_and_one_rotated_event(
    store: Any, clock: FakeClock
) -> None:
    """With the middleware's hooks (which it installs in the backend), a refresh is
    reported once as ``refreshed`` (the middleware's touch) and once as ``rotated``
    (the refresh token's new ID, naming the old one); both the middleware and the
    backend reported ``refreshed`` for it."""
    events: list[SessionEvent] = []
    backend = hybrid(store, clock)
    client = Client(
        SessionMiddleware(session_app, backend=backend, clock=clock, on_event=events.append)
    )
    await client.get("/set?k=v")
    created = events[-1].session
    events.clear()
    clock.advance(ACCESS + 1)
    assert (await client.get("/read")).json() == {"k": "v"}
    assert sorted(e.name for e in events) == ["refreshed", "rotated"]
    rotated = next(e for e in events if e.name == "rotated")
    assert rotated.previous == created
    assert rotated.session != created


async def test_writes_go_to_the_store_and_reissue_the_access_token(
    store: Any, clock: FakeClock
) -> None:
    backend = hybrid(store, clock)
    client = client_for(backend, clock)
    await client.get("/set?a=1")
    before = pair(client)
    await client.get("/set?b=2")
    after = pair(client)
    assert after[0] != before[0]
    assert after[1] == before[1]
    # The store has both keys: a fresh load through the refresh token sees them.
    clock.advance(ACCESS + 1)
    assert (await client.get("/read")).json() == {"a": "1", "b": "2"}


async def test_a_valid_access_token_is_never_revalidated(store: Any, clock: FakeClock) -> None:
    calls: list[str | None] = []

    async def revalidate(user: str | None, data: Mapping[str, Any]) -> bool:
        calls.append(user)
        return user != "banned"

    backend = hybrid(store, clock, revalidate=revalidate)
    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    for _ in range(5):
        await client.get("/read")
    assert calls == []
    clock.advance(ACCESS + 1)
    assert (await client.get("/read")).json() == {"user": "ann"}
    assert calls == ["ann"]
    # A veto on the next refresh ends the session.
    other = client_for(backend, clock)
    await other.get("/bind?user=banned")
    clock.advance(ACCESS + 1)
    response = await other.get("/read")
    assert response.json() == {}
    assert calls == ["ann", "banned"]
    assert await backend.list_sessions("banned") == []


async def test_parallel_requests_with_one_expired_pair_rotate_exactly_once(
    store: Any, clock: FakeClock
) -> None:
    backend = hybrid(store, clock)
    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    await client.get("/set?cart=3")
    cookie = f"session={client.jar['session']}".encode()
    clock.advance(ACCESS + 1)
    responses = await asyncio.gather(
        *(Client(client.app).get("/read", cookie=cookie) for _ in range(20))
    )
    assert [r.status for r in responses] == [200] * 20
    assert all(r.json() == {"user": "ann", "cart": "3"} for r in responses)
    issued = [c for r in responses for c in r.set_cookies]
    assert len(issued) == 1
    assert "Max-Age=0" not in issued[0]
    (info,) = await backend.list_sessions("ann")  # one live session server-side ...
    assert info.session_id == _session_id_of(issued[0])  # ... the one the cookie names


async def test_parallel_refreshes_loaded_before_either_commits_keep_the_browser_logged_in(
    store: Any, clock: FakeClock
) -> None:
    """Two requests of one browser with the same expired pair, both loaded before
    either commits (an app that awaits a database): exactly one rotates, the other
    sends no cookie, and the browser's next request is still logged in. On the
    memory store both records shared the stored entry's ``extra`` dict: the second
    commit found the first's new refresh token and no due refresh there, and sent an
    access token for the old session ID next to the new refresh token (a pair that
    is refused: the browser was logged out), and the raw refresh token stayed in the
    store."""
    both_loaded = asyncio.Event()
    arrived = 0

    async def waits(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_loaded.set()
        await both_loaded.wait()
        await session_app(scope, receive, send)

    backend = hybrid(store, clock)
    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    cookie = f"session={client.jar['session']}".encode()
    clock.advance(ACCESS + 1)
    app = SessionMiddleware(waits, backend=backend, clock=clock)
    async with asyncio.timeout(10):
        responses = await asyncio.gather(
            *(Client(app).get("/read", cookie=cookie) for _ in range(2))
        )
    assert all(r.json() == {"user": "ann"} for r in responses)
    issued = [c for r in responses for c in r.set_cookies]
    assert len(issued) == 1
    assert "Max-Age=0" not in issued[0]
    client.jar["session"] = issued[0].split(";", 1)[0].partition("=")[2]
    assert (await client.get("/read")).json() == {"user": "ann"}
    (info,) = await backend.list_sessions("ann")
    assert info.session_id == _session_id_of(issued[0])
    if isinstance(store, MemoryBackend):
        assert all(entry.meta.extra == {} for entry in store._entries.values())


def _session_id_of(set_cookie: str) -> str:
    from asgi_sessions.backends._tokens import token_id

    value = set_cookie.split(";", 1)[0].partition("=")[2]
    return token_id(value.rpartition(".")[2])


async def test_a_spent_refresh_token_replayed_after_the_grace_revokes_the_family(
    store: Any, clock: FakeClock
) -> None:
    events: list[SessionEvent] = []
    backend = hybrid(store, clock, on_event=events.append)
    victim = client_for(backend, clock)
    await victim.get("/bind?user=ann")
    stolen = f"session={victim.jar['session']}".encode()
    clock.advance(ACCESS + 1)
    assert (await victim.get("/read")).json() == {"user": "ann"}  # the victim refreshes
    if isinstance(store, RedisBackend):
        await asyncio.sleep(5.2)  # Redis expires the grace alias on its own clock
    clock.advance(6)  # past the grace
    thief = Client(victim.app)
    response = await thief.get("/read", cookie=stolen)
    assert response.json() == {}
    assert [e.name for e in events].count("suspicious") == 1
    suspicious = next(e for e in events if e.name == "suspicious")
    assert suspicious.reason is not None
    assert suspicious.reason.startswith("refresh token reuse")
    assert "revoked" in [e.name for e in events]  # the family's live session
    # The victim's current pair (its access token still valid) is anonymous now.
    assert (await victim.get("/read")).json() == {}
    assert await backend.list_sessions("ann") == []
    # No event or log detail holds a token.
    tokens = stolen.decode().partition("=")[2]
    for part in tokens.split("."):
        assert all(part not in repr(event) for event in events)


async def test_revoke_user_with_and_without_the_immediate_check(
    store: Any, clock: FakeClock
) -> None:
    for immediate in (True, False):
        backend = hybrid(store, clock, check_revocation=immediate)
        client = client_for(backend, clock)
        await client.get(f"/bind?user=u{immediate}")
        assert (await client.get("/read")).json() == {"user": f"u{immediate}"}
        # Revoked by another process (a second backend over the same store): this
        # process's memory of what it revoked does not help here.
        admin = hybrid(store, clock)
        assert await admin.revoke_user(f"u{immediate}") == 1
        if immediate:
            assert (await client.get("/read")).json() == {}
            continue
        # Without the check the access token works until it expires, and not after.
        assert (await client.get("/read")).json() == {"user": f"u{immediate}"}
        clock.advance(ACCESS - 11)
        assert (await client.get("/read")).json() == {"user": f"u{immediate}"}
        clock.advance(12)
        assert (await client.get("/read")).json() == {}


async def test_revoke_in_this_process_is_immediate(store: Any, clock: FakeClock) -> None:
    backend = hybrid(store, clock)
    phone = client_for(backend, clock)
    laptop = client_for(backend, clock)
    await phone.get("/bind?user=ann")
    await laptop.get("/bind?user=ann")
    assert len(await backend.list_sessions("ann")) == 2
    keep = _session_id_of("session=" + laptop.jar["session"])
    assert await backend.revoke_user("ann", keep=keep) == 1
    assert (await phone.get("/read")).json() == {}
    assert (await laptop.get("/read")).json() == {"user": "ann"}
    await laptop.get("/invalidate")
    assert (await laptop.get("/read", cookie=b"session=" + b"x")).json() == {}


async def test_logout_is_final_for_a_captured_cookie(store: Any, clock: FakeClock) -> None:
    backend = hybrid(store, clock)
    client = client_for(backend, clock)
    await client.get("/set?k=v")
    captured = f"session={client.jar['session']}".encode()
    await client.get("/invalidate")
    assert (await Client(client.app).get("/read", cookie=captured)).json() == {}
    clock.advance(ACCESS + 1)
    assert (await Client(client.app).get("/read", cookie=captured)).json() == {}


async def test_tampered_and_mismatched_pairs_are_rejected(store: Any, clock: FakeClock) -> None:
    backend = hybrid(store, clock)
    a = client_for(backend, clock)
    b = client_for(backend, clock)
    await a.get("/set?k=a")
    await b.get("/set?k=b")
    access_a, refresh_a = pair(a)
    _, refresh_b = pair(b)
    for token in (
        f"{access_a}.{refresh_b}",  # a's access token with b's refresh token
        f"{access_a}x.{refresh_a}",  # a bad signature
        refresh_a,  # no access token
        f"{access_a}.",  # no refresh token
        "a.b.c.d",
    ):
        with pytest.raises(InvalidToken):
            await backend.load(token, now=clock.now)
        response = await Client(a.app).get("/read", cookie=f"session={token}".encode())
        assert response.status == 200
        assert response.json() == {}


async def _plant(store: Any, refresh: str, value: Any, clock: FakeClock) -> None:
    """Write ``value`` under key "a" through the store itself (whose serializer takes
    what an access token cannot), as another program sharing the store could."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["session"]["a"] = value
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    direct = Client(SessionMiddleware(app, backend=store, clock=clock))
    assert (await direct.get("/", cookie=f"session={refresh}".encode())).status == 200


async def test_a_stored_value_an_access_token_cannot_carry_ends_the_session_at_refresh(
    redis_url: str, clock: FakeClock
) -> None:
    """Found by tests/test_fuzz_targets.py: the refresh issued an access token from
    whatever the store held, and bytes there (which the Redis store's msgpack takes;
    the memory store refuses them) made the request a 500."""
    store = RedisBackend(redis_url, prefix=f"h{uuid.uuid4().hex[:12]}:")
    try:
        backend = hybrid(store, clock)
        client = client_for(backend, clock)
        await client.get("/set?k=v")
        _, refresh = pair(client)
        await _plant(store, refresh, b"raw bytes", clock)
        clock.advance(ACCESS + 1)
        response = await client.get("/read")
        assert response.status == 200
        assert response.json() == {}
        assert await store.load(refresh, now=clock()) is None  # removed, as a corrupt record
    finally:
        await store.aclose()


async def test_a_refresh_whose_new_cookie_no_longer_fits_ends_the_session(
    store: Any, clock: FakeClock
) -> None:
    """Found by tests/test_fuzz_targets.py: stored data too big for the access token
    (written around this backend) made the refresh's cookie fail to render, a 500 on
    a request that changed nothing. The request is answered; the session ends."""
    backend = hybrid(store, clock)
    client = client_for(backend, clock)
    await client.get("/set?k=v")
    old = client.jar["session"]
    _, refresh = pair(client)
    await _plant(store, refresh, "x" * 20_000, clock)
    clock.advance(ACCESS + 1)
    response = await client.get("/read")
    assert response.status == 200
    assert response.json() == {"k": "v", "a": "x" * 20_000}
    assert any(c.startswith("session=;") and "Max-Age=0" in c for c in response.set_cookies)
    assert "session" not in client.jar
    # The refresh's new session is gone; the old pair is only the grace alias.
    if isinstance(store, MemoryBackend):
        clock.advance(6)  # past the grace: the old pair is anonymous too
        assert (await client.get("/read", cookie=f"session={old}".encode())).json() == {}
    else:
        keys = [k async for k in store.client.scan_iter(match=f"{store.prefix}s:*")]
        assert [k for k in keys if not await store.client.hexists(k, "a")] == []


async def test_values_must_fit_the_access_token_and_the_store(store: Any, clock: FakeClock) -> None:
    from datetime import UTC, datetime

    backend = hybrid(store, clock)
    with pytest.raises(SerializationError):
        backend.serializer.check("when", datetime.now(UTC))  # JSON cannot hold it
    with pytest.raises(SerializationError):
        backend.serializer.check("t", (1, 2))


def test_bad_configuration_is_refused() -> None:
    store = MemoryBackend()
    with pytest.raises(ConfigurationError, match="refresh_margin"):
        HybridBackend(store, secret=SECRET, access_ttl=10, refresh_margin=10)
    with pytest.raises(ConfigurationError, match="store"):
        HybridBackend(object(), secret=SECRET)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        HybridBackend(store, secret="short")


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_store_without_a_rotation_grace_is_refused(kind: str) -> None:
    """With rotation_grace=0 on the store, every parallel request of a browser that
    carried the pair a refresh just rotated presented a spent refresh token: taken
    for a stolen one, the family was revoked, a 'suspicious' event fired and the
    user was logged out. Refused at start-up, saying what to change."""
    store: MemoryBackend | RedisBackend
    if kind == "memory":
        store = MemoryBackend(rotation_grace=0)
    else:
        store = RedisBackend("redis://127.0.0.1:1", rotation_grace=0)  # never connects
    with pytest.raises(ConfigurationError, match=r"rotation_grace of at least 1 second"):
        HybridBackend(store, secret=SECRET)
    await store.aclose()


# -- Redis commands, from INFO commandstats of a private server ---------------------------


async def test_redis_commands_per_request(private_redis: Any, clock: FakeClock) -> None:
    """commandstats counts every command, those run inside a script too; MONITOR
    (commands not from "lua") counts the round trips' commands."""
    raw = Redis.from_url(private_redis.url)
    store = RedisBackend(private_redis.url, rotation_grace=5)
    backend = hybrid(store, clock)
    try:
        client = client_for(backend, clock)
        await client.get("/bind?user=ann")
        await client.get("/set?k=v")
        clock.advance(ACCESS + 1)
        await client.get("/read")  # a first refresh caches the scripts in the server

        async def count(target: str) -> tuple[int, int]:
            await raw.config_resetstat()
            sent = len(await commands_sent(raw, client.get(target)))
            stats = await raw.info("commandstats")
            executed = sum(
                int(v["calls"])
                for k, v in stats.items()
                if k not in ("cmdstat_info", "cmdstat_config|resetstat", "cmdstat_monitor")
                and k not in ("cmdstat_echo", "cmdstat_hello", "cmdstat_client|setinfo")
            )
            return sent, executed

        assert await count("/read") == (0, 0)  # a valid access token: no Redis at all
        assert await count("/untouched") == (0, 0)
        write = await count("/set?k=w")
        assert write[0] == 1  # the delta write (one script); the access token re-issued
        clock.advance(ACCESS + 1)
        # A refresh whose response fails commits nothing: the load alone, and the
        # pair stays as it was (its rotation is the commit's).
        assert (await count("/fail500"))[0] == 1
        (index,) = [k async for k in raw.scan_iter(match=store.prefix + "u:*")]
        members = await raw.zcard(index)
        refresh = await count("/read")
        # load 1 (HGET); rotation 2 (the new key, then the old one's alias); the
        # user's index 1 script plus one HMGET per member (the user's
        # sessions and their recent grace aliases, the new session included, sent
        # together); the spent and family markers 2 (sent together).
        assert refresh[0] == 6 + (members + 1), (refresh, members)
        print(
            f"\nhybrid on Redis, commands sent / executed (commandstats): valid access read "
            f"0/0, write {write[0]}/{write[1]}, refresh {refresh[0]}/{refresh[1]} "
            f"(the user's index held {members})"
        )
        checked = hybrid(store, clock, check_revocation=True)
        client.app = SessionMiddleware(session_app, backend=checked, clock=clock)
        assert await count("/read") == (1, 1)  # the immediate revocation check: one HMGET
    finally:
        await store.aclose()
        await raw.aclose()


async def test_redis_down_valid_access_tokens_still_served_refresh_fails_closed(
    private_redis: Any, clock: FakeClock
) -> None:
    store = RedisBackend(private_redis.url, operation_timeout=1.0)
    backend = hybrid(store, clock)
    try:
        client = client_for(backend, clock)
        await client.get("/set?k=v")
        private_redis.pause()  # SIGSTOP: it keeps its data, and answers nothing
        # The access token answers on its own: Redis is not needed.
        assert (await client.get("/read")).json() == {"k": "v"}
        clock.advance(ACCESS + 1)
        response = await client.get("/read")  # a refresh needs the store: 503, no traceback
        assert response.status == 503
        assert b"Traceback" not in response.body
        private_redis.resume()
        assert (await client.get("/read")).json() == {"k": "v"}  # recovered, no restart
    finally:
        await store.aclose()


async def test_a_failing_revalidate_fails_closed_and_a_failing_event_hook_is_ignored(
    store: Any, clock: FakeClock
) -> None:
    state = {"down": True}

    async def revalidate(user: str | None, data: Mapping[str, Any]) -> bool:
        if state["down"]:
            raise ConnectionError("users database unreachable")
        return True

    def on_event(event: SessionEvent) -> None:
        raise RuntimeError("audit sink down")

    backend = hybrid(store, clock, revalidate=revalidate, on_event=on_event)
    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    clock.advance(ACCESS + 1)
    response = await client.get("/read")
    assert response.status == 503
    assert b"users database" not in response.body
    state["down"] = False
    assert (await client.get("/read")).json() == {"user": "ann"}  # the session survived


async def test_the_refresh_token_id_cache_is_bounded(store: Any, clock: FakeClock) -> None:
    """The read path keeps refresh token -> session ID for repeated cookies; it
    holds at most the verified-token cache's size, and a cached ID never lets a
    revoked session back in."""
    backend = hybrid(store, clock, cache_size=8)
    clients = [client_for(backend, clock) for _ in range(20)]
    for client in clients:
        await client.get("/set?k=v")
        assert (await client.get("/read")).json() == {"k": "v"}
    assert 0 < len(backend._ids) <= 8
    session_id = next(iter(backend._ids.values()))
    token = next(iter(backend._ids))
    owner = next(c for c in clients if pair(c)[1] == token)
    await backend.revoke(session_id)
    assert (await owner.get("/read")).json() == {}


def _writes_a_blob(size: int) -> Any:
    """session_app, except that /big stores a value of ``size`` characters."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] != "/big":
            await session_app(scope, receive, send)
            return
        scope["session"]["blob"] = "x" * size
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize(
    "size",
    [
        20_000,  # an access token under 64 KiB that needs more than the 4 cookie chunks
        70_000,  # an access token over 64 KiB
    ],
)
async def test_a_write_too_big_for_the_cookie_stores_nothing(
    store: Any, clock: FakeClock, size: int
) -> None:
    """Found in review: the store was written before the access token was built, so
    the write raised to the app with its data already stored; the next refresh then
    ended the session (a token over the cookie chunks) or crashed every refresh
    request with SessionTooLarge (a token over 64 KiB)."""
    backend = hybrid(store, clock)
    client = Client(SessionMiddleware(_writes_a_blob(size), backend=backend, clock=clock))
    await client.get("/bind?user=ann")
    with pytest.raises(SessionTooLarge):
        await client.get("/big")
    _, refresh = pair(client)
    record = await store.load(refresh, now=clock())
    assert record is not None
    assert record.data == {"user": "ann"}
    clock.advance(ACCESS + 1)
    response = await client.get("/read")  # a refresh
    assert response.status == 200
    assert response.json() == {"user": "ann"}
    assert (await client.get("/read")).json() == {"user": "ann"}


async def test_a_refresh_whose_access_token_would_be_over_64_kib_ends_the_session(
    store: Any, clock: FakeClock
) -> None:
    """Found in review: the refresh's access token could not be issued (data over
    64 KiB, written around this backend), and the SessionTooLarge of the re-issue
    was a 500 on every refresh request, which only read. The request is answered;
    the session ends."""
    backend = hybrid(store, clock)
    client = client_for(backend, clock)
    await client.get("/set?k=v")
    _, refresh = pair(client)
    await _plant(store, refresh, "x" * 70_000, clock)
    clock.advance(ACCESS + 1)
    response = await client.get("/read")
    assert response.status == 200
    assert any(c.startswith("session=;") and "Max-Age=0" in c for c in response.set_cookies)
    assert "session" not in client.jar
    assert (await backend.list_sessions("ann")) == []
    if isinstance(store, RedisBackend):
        keys = [k async for k in store.client.scan_iter(match=f"{store.prefix}s:*")]
        assert [k for k in keys if not await store.client.hexists(k, "a")] == []


async def test_logout_on_the_old_pair_in_the_grace_stops_the_new_access_token_here(
    store: Any, clock: FakeClock
) -> None:
    """Found in review: a logout on the pre-refresh pair during the grace ends the new
    session in the store too, but only the old ID was remembered as revoked, so the
    new pair's access token kept working in this very process for up to access_ttl."""
    backend = hybrid(store, clock)
    app = client_for(backend, clock).app
    browser = Client(app)
    await browser.get("/bind?user=ann")
    old = f"session={browser.jar['session']}".encode()
    clock.advance(ACCESS + 1)
    await browser.get("/read")  # a refresh: the new pair
    new = f"session={browser.jar['session']}".encode()
    assert (await Client(app).get("/read", cookie=new)).json() == {"user": "ann"}
    logout = await Client(app).get("/invalidate", cookie=old)  # in flight with the old pair
    assert any("Max-Age=0" in c for c in logout.set_cookies)
    assert await backend.list_sessions("ann") == []
    assert (await Client(app).get("/read", cookie=new)).json() == {}
    clock.advance(ACCESS // 2)
    assert (await Client(app).get("/read", cookie=new)).json() == {}


async def test_a_logout_right_after_a_refresh_ends_the_previous_pairs_at_once(
    store: Any, clock: FakeClock
) -> None:
    """Found in review: each refresh rotates the refresh token, so the previous pair's
    grace alias holds the session's current data, and after a logout within the grace
    a copy of that pair still read it (the user, a secret) until the grace ended. The
    logout now ends the aliases that lead to the session, however many rotations back,
    in the store: another process (a second backend) finds nothing there either."""
    backend = hybrid(store, clock)
    app = client_for(backend, clock).app
    browser = Client(app)
    await browser.get("/set?cart=1")
    anonymous = f"session={browser.jar['session']}".encode()
    await browser.get("/bind?user=ann")  # a login rotates
    await browser.get("/set?secret=card-4242")
    login = f"session={browser.jar['session']}".encode()
    clock.advance(ACCESS + 1)
    assert (await browser.get("/read")).json() == {
        "cart": "1",
        "user": "ann",
        "secret": "card-4242",
    }
    refreshed = f"session={browser.jar['session']}".encode()
    assert refreshed != login
    other = hybrid(store, clock)  # another process, which revoked nothing itself
    assert (await Client(client_for(other, clock).app).get("/read", cookie=login)).json()
    clock.advance(1)
    logout = await browser.get("/invalidate")
    assert any("Max-Age=0" in c for c in logout.set_cookies)
    for cookie in (refreshed, login, anonymous):
        assert (await Client(app).get("/read", cookie=cookie)).json() == {}
    # Elsewhere the live pair's access token serves its copy until it expires (see
    # check_revocation); the spent ones reach the store, which holds nothing now.
    for cookie in (login, anonymous):
        assert (await Client(client_for(other, clock).app).get("/read", cookie=cookie)).json() == {}
    assert await backend.list_sessions("ann") == []


async def test_an_old_pair_after_a_logout_raises_no_reuse_alarm(
    store: Any, clock: FakeClock
) -> None:
    """A request of the browser still in flight with the pre-refresh pair when the user
    logs out: the logout ended its grace alias too, so the spent token comes to the
    reuse check, but the family's session is gone already. It is answered as any
    ended session's token, with no revocation and no ``suspicious`` event; a spent
    token replayed while the session lives still revokes it (the test above)."""
    events: list[SessionEvent] = []
    backend = hybrid(store, clock, on_event=events.append)
    browser = client_for(backend, clock)
    await browser.get("/bind?user=ann")
    old = f"session={browser.jar['session']}".encode()
    clock.advance(ACCESS + 1)
    await browser.get("/read")  # a refresh: the old pair is spent
    await browser.get("/invalidate")
    events.clear()
    assert (await Client(browser.app).get("/read", cookie=old)).json() == {}
    assert security_events(events) == []


async def test_a_logout_here_stops_the_access_tokens_of_the_aliases_it_ended(
    redis_url: str, clock: FakeClock
) -> None:
    """The store reports each grace alias a logout ended through it (``on_end``), and
    this process refuses their access tokens at once, as it does the session's own:
    here a login rotated in another process, whose pre-login pair's access token is
    still valid and would otherwise be answered from the token alone here."""
    prefix = f"h{uuid.uuid4().hex[:12]}:"
    stores = [RedisBackend(redis_url, prefix=prefix, rotation_grace=5) for _ in range(2)]
    try:
        here, there = (hybrid(store, clock) for store in stores)
        browser = client_for(there, clock)
        await browser.get("/set?cart=1")
        anonymous = f"session={browser.jar['session']}".encode()
        await browser.get("/bind?user=ann")  # the login rotates, in the other process
        app = client_for(here, clock).app
        assert (await Client(app).get("/read", cookie=anonymous)).json() == {"cart": "1"}
        logout = await Client(app).get(
            "/invalidate", cookie=f"session={browser.jar['session']}".encode()
        )
        assert any("Max-Age=0" in c for c in logout.set_cookies)
        assert (await Client(app).get("/read", cookie=anonymous)).json() == {}
    finally:
        for store in stores:
            await store.aclose()


async def test_many_revocations_never_let_a_revoked_access_token_back_in(
    store: Any, clock: FakeClock
) -> None:
    """Found in review: this process's memory of what it revoked held 10,000 entries
    and dropped the oldest ones still in force when full, so 10,000 throwaway logouts
    within access_ttl made a revoked session's stolen access token work again here.
    Memory stays bounded; access tokens older than a dropped revocation go to the
    store, which knows the session is gone."""
    backend = hybrid(store, clock)
    app = client_for(backend, clock).app
    victim = Client(app)
    bystander = Client(app)
    await victim.get("/bind?user=ann")
    await bystander.get("/bind?user=bob")
    stolen = f"session={victim.jar['session']}".encode()
    await victim.get("/invalidate")
    assert (await Client(app).get("/read", cookie=stolen)).json() == {}
    clock.advance(1)
    for i in range(10_001):
        await backend.revoke(f"{i:064x}")  # unknown IDs: remembered all the same
    assert len(backend._revoked) <= 10_000
    assert (await Client(app).get("/read", cookie=stolen)).json() == {}
    # A live session issued before is not logged out: it refreshes from the store.
    assert (await bystander.get("/read")).json() == {"user": "bob"}
    assert (await bystander.get("/read")).json() == {"user": "bob"}


async def test_the_size_check_before_the_store_is_exact(store: Any, clock: FakeClock) -> None:
    """The cookie value is measured before the store names the session: a write
    whose value just fits goes out, one byte of data more is refused unstored."""
    backend = hybrid(store, clock)
    sizes: dict[int, int | None] = {}
    client = Client(SessionMiddleware(_writes_a_blob(0), backend=backend, clock=clock))
    await client.get("/bind?user=ann")
    limit = backend.max_value_size
    assert limit is not None
    base = len(client.jar["session"])
    start = (limit - base) * 3 // 4 - 16
    for size in range(start, start + 32):
        client = Client(SessionMiddleware(_writes_a_blob(size), backend=backend, clock=clock))
        await client.get("/bind?user=ann")
        try:
            await client.get("/big")
        except SessionTooLarge:
            sizes[size] = None
            _, refresh = pair(client)
            record = await store.load(refresh, now=clock())
            assert record is not None
            assert record.data == {"user": "ann"}
        else:
            chunks = [v for k, v in client.jar.items() if k.startswith("session.")]
            sizes[size] = sum(map(len, chunks))
    fitting = [size for size, length in sizes.items() if length is not None]
    assert fitting
    assert fitting == list(range(start, max(fitting) + 1))
    assert max(fitting) < start + 31
    assert limit - 2 <= sizes[max(fitting)] <= limit  # type: ignore[operator]


# -- a refresh is committed with the response; a rotation keeps in-flight requests ------


@pytest.fixture(params=["memory", "redis"])
async def quick_store(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[RedisBackend | MemoryBackend]:
    """A store with a one-second rotation grace, so the cases that wait it out on
    Redis (whose clock is real) stay short."""
    backend = make_store(request, clock, 1)
    yield backend
    await backend.aclose()


async def past_grace(store: Any, clock: FakeClock) -> None:
    if isinstance(store, RedisBackend):
        await asyncio.sleep(1.2)  # Redis expires the grace alias on its own clock
    clock.advance(2)


def security_events(events: list[SessionEvent]) -> list[str]:
    return [e.name for e in events if e.name in ("revoked", "suspicious")]


@pytest.mark.parametrize("path", ["/fail500", "/raise"])
async def test_a_failed_refreshing_request_leaves_the_pair_valid(
    quick_store: Any, clock: FakeClock, path: str
) -> None:
    """The request whose access token expired answers 500, or its app raises: no
    Set-Cookie can carry a new pair, so the refresh token is not rotated either.
    Rotating it at load lost the new pair, and the browser's next request after the
    grace presented the spent token: the family was revoked as a reuse (a logout and
    a false alert from one transient 500)."""
    events: list[SessionEvent] = []
    backend = hybrid(quick_store, clock, on_event=events.append)
    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    first = client.jar["session"]
    clock.advance(ACCESS + 1)
    await get_failing(client, path)
    await past_grace(quick_store, clock)
    response = await client.get("/read")  # the same browser, still with the first pair
    assert response.json() == {"user": "ann"}
    assert security_events(events) == []
    assert client.jar["session"] != first  # this request's refresh rotated the pair
    (info,) = await backend.list_sessions("ann")
    assert info.session_id == _session_id_of("session=" + client.jar["session"])
    # Reuse detection still catches a replay of the spent pair after the grace.
    await past_grace(quick_store, clock)
    replay = await Client(client.app).get("/read", cookie=f"session={first}".encode())
    assert replay.json() == {}
    assert security_events(events) == ["revoked", "suspicious"]
    assert await backend.list_sessions("ann") == []


async def test_a_socket_refused_before_accept_leaves_the_pair_valid(
    quick_store: Any, clock: FakeClock
) -> None:
    """A WebSocket whose access token expired, closed by the app before it accepted
    (no response, so no cookie): the pair is not rotated, even when the app changed
    the session before closing."""
    events: list[SessionEvent] = []
    backend = hybrid(quick_store, clock, on_event=events.append)
    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    cookie = client.jar["session"]
    clock.advance(ACCESS + 1)

    async def refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        scope["session"]["seen"] = "ws"
        await send({"type": "websocket.close", "code": 4403})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = websocket_scope(f"session={cookie}".encode())
    await SessionMiddleware(refuse, backend=backend, clock=clock)(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.close"]
    await past_grace(quick_store, clock)
    assert (await client.get("/read")).json() == {"user": "ann", "seen": "ws"}
    assert security_events(events) == []


@pytest.mark.parametrize("target", ["/set?cart=4", "/read"])
async def test_a_request_with_the_pair_from_before_a_rotation_is_read_only(
    quick_store: Any, clock: FakeClock, target: str
) -> None:
    """A request of the browser sent with the pre-login pair (its access token still
    valid) after the login rotated the session: it reads the grace alias, writes
    nothing and leaves the cookie alone, as on the plain stores. The access token
    alone served the pre-rotation session as live: a write (or the refresh throttle's
    touch) found the session gone and the response expired the browser's new cookie."""
    backend = hybrid(quick_store, clock)
    client = client_for(backend, clock, refresh_after=60)
    await client.get("/set?cart=3")
    old = f"session={client.jar['session']}".encode()
    if target == "/read":
        clock.advance(61)  # the refresh throttle is due on the in-flight request
    await client.get("/login?user=ann")
    new = client.jar["session"]
    late = await Client(client.app).get(target, cookie=old)
    assert late.status == 200
    assert late.set_cookies == []
    assert (await client.get("/read")).json() == {"cart": "3", "user": "ann"}
    assert client.jar["session"] == new
    # After the grace the old pair is a spent refresh token: refused (and, as any
    # spent token presented after the grace, treated as a reuse).
    await past_grace(quick_store, clock)
    assert (await Client(client.app).get("/read", cookie=old)).json() == {}


async def test_many_rotations_never_let_a_pre_rotation_pair_be_answered_here(
    quick_store: Any, clock: FakeClock
) -> None:
    """The rotated IDs this process remembers are bounded as its revocations are: one
    still in force that must go raises the watermark, so the pre-login pair is still
    answered by the store (its grace alias, then nothing), never by its access token
    alone, which would serve the pre-login session for up to access_ttl."""
    backend = hybrid(quick_store, clock)
    client = client_for(backend, clock)
    await client.get("/set?cart=3")
    old = f"session={client.jar['session']}".encode()
    await client.get("/login?user=ann")
    for i in range(10_001):
        backend._mark_rotated(f"{i:064x}", clock())
    assert len(backend._rotated) <= 10_000
    late = await Client(client.app).get("/read", cookie=old)
    assert late.json() == {"cart": "3"}  # the grace alias, read-only
    assert late.set_cookies == []
    await past_grace(quick_store, clock)
    assert (await Client(client.app).get("/read", cookie=old)).json() == {}


@pytest.mark.parametrize("target", ["/set?cart=4", "/read"])
async def test_a_request_in_flight_during_a_rotation_keeps_the_browser_logged_in(
    quick_store: Any, clock: FakeClock, target: str
) -> None:
    """A request loads the session with the old pair, the login rotates it meanwhile,
    then the slow request commits (a write, or the refresh throttle's touch): the
    store refuses it, and the response must leave the browser's cookie alone. The
    middleware asked ``load()`` whether the token was a grace alias, and the valid
    access token answered "live session", so it took the session for ended."""
    loaded, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        loaded.set()
        await release.wait()
        await session_app(scope, receive, send)

    backend = hybrid(quick_store, clock)
    client = client_for(backend, clock, refresh_after=60)
    await client.get("/set?cart=3")
    old = f"session={client.jar['session']}".encode()
    if target == "/read":
        clock.advance(61)
    slow_app = SessionMiddleware(slow, backend=backend, clock=clock, refresh_after=60)
    in_flight = asyncio.ensure_future(Client(slow_app).get(target, cookie=old))
    async with asyncio.timeout(10):
        await loaded.wait()
        await client.get("/login?user=ann")
        release.set()
        late = await in_flight
    assert late.status == 200
    assert late.set_cookies == []
    assert (await client.get("/read")).json() == {"cart": "3", "user": "ann"}


async def test_a_refresh_committed_after_the_grace_leaves_the_new_cookie_alone(
    quick_store: Any, clock: FakeClock
) -> None:
    """A slow request (a long poll) loads the expired pair, a parallel request of the
    browser refreshes it, and the slow one commits after the grace alias expired:
    the store no longer knows the old token, but the spent-token ledger knows it was
    rotated into a session that is still live, so the response sends no cookie. It
    sent Max-Age=0 and logged the browser out of a live session. A late commit is no
    reuse either: no alarm, and the family lives on."""
    events: list[SessionEvent] = []
    loaded, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        loaded.set()
        await release.wait()
        await session_app(scope, receive, send)

    backend = hybrid(quick_store, clock, on_event=events.append)
    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    old = f"session={client.jar['session']}".encode()
    clock.advance(ACCESS + 1)
    slow_app = SessionMiddleware(slow, backend=backend, clock=clock)
    in_flight = asyncio.ensure_future(Client(slow_app).get("/read", cookie=old))
    async with asyncio.timeout(10):
        await loaded.wait()
        refreshed = await client.get("/read")
        assert refreshed.set_cookies  # the parallel request rotated the pair
        await past_grace(quick_store, clock)
        release.set()
        late = await in_flight
    assert late.status == 200
    assert late.set_cookies == []
    assert (await client.get("/read")).json() == {"user": "ann"}
    assert len(await backend.list_sessions("ann")) == 1
    assert security_events(events) == []


@pytest.mark.parametrize("check_revocation", [False, True])
async def test_a_rotation_in_another_process_keeps_the_browser_logged_in(
    quick_store: Any, clock: FakeClock, check_revocation: bool
) -> None:
    """The login ran in one process; the browser's parallel requests with the old
    pair reach another, which cannot know of the rotation from the access token:
    they read the pre-rotation data, a write is refused by the store, and no
    response touches the cookie. With ``check_revocation`` the old ID was found not
    live and the request ran anonymous: its write created a new session whose
    cookie replaced the login's."""
    here = client_for(hybrid(quick_store, clock), clock)
    elsewhere = client_for(hybrid(quick_store, clock, check_revocation=check_revocation), clock)
    await here.get("/set?cart=3")
    old = f"session={here.jar['session']}".encode()
    await here.get("/login?user=ann")
    read = await elsewhere.get("/read", cookie=old)
    assert read.json() == {"cart": "3"}
    assert read.set_cookies == []
    late = await elsewhere.get("/set?cart=4", cookie=old)
    assert late.status == 200
    assert late.set_cookies == []
    assert (await here.get("/read")).json() == {"cart": "3", "user": "ann"}


async def test_a_rotation_whose_spent_marker_fails_still_sends_the_new_pair(
    quick_store: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The store rotated the session, then writing the spent marker failed: the
    response still carries the new pair (the old one is a grace alias now, so
    failing the commit would log the browser out); only that token's reuse
    detection is lost, and a warning says so."""
    from asgi_sessions import BackendUnavailable
    from asgi_sessions.backends.hybrid import _Ledger

    backend = hybrid(quick_store, clock)
    working = backend._ledger

    class Failing(_Ledger):
        async def spend(self, old_id: str, new_id: str, family: str, ttl: int) -> None:
            raise BackendUnavailable("ledger down")

    client = client_for(backend, clock)
    await client.get("/bind?user=ann")
    first = client.jar["session"]
    clock.advance(ACCESS + 1)
    backend._ledger = Failing()
    response = await client.get("/read")
    backend._ledger = working
    assert response.status == 200
    assert client.jar["session"] != first
    assert "spent marker was not stored" in caplog.text
    await past_grace(quick_store, clock)
    assert (await client.get("/read")).json() == {"user": "ann"}
    assert len(await backend.list_sessions("ann")) == 1


async def test_a_merging_rotation_gives_its_access_token_the_merged_data(
    store: Any, clock: FakeClock
) -> None:
    """A rotation that merges what a parallel request stored after its load issues an
    access token with the merged data: another process (without this one's verified
    token cache) reads the parallel change too. The token was issued from the data
    serialized before the store merged."""
    backend = hybrid(store, clock)
    other = hybrid(store, clock)
    now = clock()
    record = SessionRecord(
        session_id="", data={"seed": 1}, created_at=now, last_seen=now, rotated_at=now
    )
    token = await backend.save(
        None, record, Delta({"seed": 1}, replace=True), now=now, ttl=600, rotate=False
    )
    login = await backend.load(token, now=now)
    parallel = await backend.load(token, now=now)
    assert login is not None
    assert parallel is not None
    parallel.data = {"seed": 1, "coupon": "SAVE10"}
    await backend.save(token, parallel, Delta({"coupon": "SAVE10"}), now=now, ttl=600, rotate=False)
    login.data = {"seed": 1, "user": "ann"}
    new = await backend.save(token, login, Delta({"user": "ann"}), now=now, ttl=600, rotate=True)
    elsewhere = await other.load(new, now=now)
    assert elsewhere is not None
    assert elsewhere.data == {"seed": 1, "coupon": "SAVE10", "user": "ann"}
