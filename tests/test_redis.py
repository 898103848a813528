"""RedisBackend against a real Redis: what the issue's acceptance list promises."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from asgi_sessions import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    Delta,
    SessionMiddleware,
)
from asgi_sessions.backends._tokens import token_id
from asgi_sessions.backends.redis import (
    _INDEX,
    _LOAD,
    _VIEW,
    RedisBackend,
    _packed_seen,
    _seen_list,
)
from asgi_sessions.errors import SessionGone, SessionTooLarge
from asgi_sessions.msgpack_serializer import MsgpackSerializer
from tests.asgi import Client, Response, session_app
from tests.conftest import FakeClock
from tests.redis_monitor import commands_sent

pytestmark = pytest.mark.anyio


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    # Timeouts well above the defaults: these tests are not about timeouts, and a
    # burst of 200 requests on a loaded two-core CI machine can keep a reply waiting
    # in the event loop for longer than the default 0.5 s socket timeout.
    backend = RedisBackend(
        redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:", socket_timeout=3.0, operation_timeout=6.0
    )
    yield backend
    await backend.aclose()


def client_for(backend: RedisBackend, **settings: Any) -> Client:
    return Client(SessionMiddleware(session_app, backend=backend, **settings))


async def keys_of(raw: Redis, backend: RedisBackend) -> list[bytes]:
    return [key async for key in raw.scan_iter(match=backend.prefix + "*", count=1000)]


async def dump(raw: Redis, backend: RedisBackend) -> bytes:
    """Every key, field and value under the backend's prefix, as one blob."""
    parts = []
    for key in await keys_of(raw, backend):
        parts.append(key)
        kind = await raw.type(key)
        if kind == b"hash":
            for field, value in (await raw.hgetall(key)).items():
                parts += [field, value]
        elif kind == b"zset":
            parts += [m for m, _ in await raw.zrange(key, 0, -1, withscores=True)]
    return b"\n".join(parts)


async def test_the_raw_cookie_value_never_reaches_redis(raw: Redis, backend: RedisBackend) -> None:
    client = client_for(backend)
    await client.get("/set?cart=1")
    first = client.jar["session"]
    await client.get("/bind?user=ann")
    second = client.jar["session"]
    stored = await dump(raw, backend)
    assert stored
    for token in (first, second):
        assert token.encode() not in stored


async def test_requests_without_a_session_create_no_keys(raw: Redis, backend: RedisBackend) -> None:
    client = client_for(backend)
    for _ in range(5000):
        response = await Client(client.app).get("/read")
        assert response.set_cookies == []
    for _ in range(5000):
        forged = secrets.token_urlsafe(32)
        response = await client.get("/read", cookie=f"session={forged}".encode())
        assert response.json() == {}
    assert await keys_of(raw, backend) == []


async def test_every_key_has_a_ttl_within_the_deadlines(raw: Redis, backend: RedisBackend) -> None:
    idle = 600
    client = client_for(backend, idle_timeout=idle, absolute_timeout=3600)
    await client.get("/set?k=v")
    await client.get("/bind?user=ann")
    browser = client_for(backend, idle_timeout=idle, absolute_timeout=3600)
    await browser.get("/expiry?s=0")  # a browser-session cookie: the server still has a TTL
    keys = await keys_of(raw, backend)
    assert len(keys) >= 3  # two sessions, the grace alias, the user's index
    for key in keys:
        ttl = await raw.pttl(key)
        assert 0 < ttl <= 3600 * 1000 + 1000, key
        if b":s:" in key:
            assert ttl <= idle * 1000 + 1000, key


async def test_200_concurrent_requests_setting_different_keys_lose_nothing(
    backend: RedisBackend,
) -> None:
    client = client_for(backend)
    await client.get("/set?seed=1")
    cookie = f"session={client.jar['session']}".encode()
    worker = Client(client.app)
    responses = await asyncio.gather(
        *(worker.get(f"/set?k{i}={i}", cookie=cookie) for i in range(200))
    )
    assert all(r.status == 200 for r in responses)
    data = (await client.get("/read")).json()
    assert {f"k{i}" for i in range(200)} <= set(data)
    assert len(data) == 201


async def test_a_slow_request_during_logout_does_not_resurrect(
    raw: Redis, backend: RedisBackend
) -> None:
    loaded = asyncio.Event()
    logged_out = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        loaded.set()
        await logged_out.wait()
        scope["session"]["late"] = "write"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = client_for(backend)
    await client.get("/set?k=v")
    cookie = f"session={client.jar['session']}".encode()
    in_flight = asyncio.create_task(
        Client(SessionMiddleware(slow, backend=backend)).get("/", cookie=cookie)
    )
    await loaded.wait()
    await client.get("/invalidate")
    logged_out.set()
    response = await in_flight
    assert "Max-Age=0" in response.set_cookies[0]
    assert await keys_of(raw, backend) == []
    assert (await client.get("/read", cookie=cookie)).json() == {}


async def test_a_rotation_that_fails_half_way_leaves_no_orphan_session(
    raw: Redis, backend: RedisBackend
) -> None:
    """A login's rotation writes the new key and retires the old one side by side
    (different Cluster slots). When the retirement fails (here: the old key turned
    into a string while the request ran), the request gets the 503 and the new key
    is deleted: nothing in Redis that no cookie leads to."""
    loaded = asyncio.Event()
    broken = asyncio.Event()

    async def login(scope: dict[str, Any], receive: Any, send: Any) -> None:
        loaded.set()
        await broken.wait()
        scope["session"].rotate()
        scope["session"]["user"] = "ann"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = client_for(backend)
    await client.get("/set?k=v")
    cookie = f"session={client.jar['session']}".encode()
    in_flight = asyncio.create_task(
        Client(SessionMiddleware(login, backend=backend)).get("/", cookie=cookie)
    )
    await loaded.wait()
    (old,) = await keys_of(raw, backend)
    await raw.delete(old)
    await raw.set(old, b"not a hash", px=60_000)
    broken.set()
    response = await in_flight
    assert response.status == 503
    assert response.set_cookies == []
    assert await keys_of(raw, backend) == [old]  # only the broken key the test made


async def test_grace_alias_reads_but_never_forks_then_dies(raw: Redis, redis_url: str) -> None:
    backend = RedisBackend(redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:", rotation_grace=1)
    try:
        client = client_for(backend)
        await client.get("/set?cart=1")
        old = f"session={client.jar['session']}".encode()
        await client.get("/login?user=ann")
        inside = await client.get("/set?cart=2", cookie=old)
        assert inside.json() == {"cart": "2"}  # it reads the pre-rotation data ...
        assert inside.set_cookies == []  # ... and nothing it does is stored
        assert len(await keys_of(raw, backend)) == 2  # the session and its alias, no fork
        assert (await client.get("/read")).json() == {"cart": "1", "user": "ann"}
        await asyncio.sleep(1.2)
        assert (await client.get("/read", cookie=old)).json() == {}
        assert len(await keys_of(raw, backend)) == 1
    finally:
        await backend.aclose()


async def test_a_login_keeps_a_change_a_parallel_request_saved_meanwhile(
    raw: Redis, backend: RedisBackend
) -> None:
    """A login loads the session and waits (a password check); a parallel request of
    the browser saves a coupon and is answered 200; then the login rotates. The new
    session has the coupon: the rotation merges its changes into what is stored, as a
    delta save does, instead of writing the whole session it loaded."""
    loaded, checked = asyncio.Event(), asyncio.Event()

    async def slow_login(scope: dict[str, Any], receive: Any, send: Any) -> None:
        dict(scope["session"])
        loaded.set()
        await checked.wait()
        await session_app(scope, receive, send)

    client = client_for(backend)
    await client.get("/set?cart=1")
    jar = dict(client.jar)
    browser = Client(SessionMiddleware(slow_login, backend=backend), jar=dict(jar))
    login = asyncio.create_task(browser.get("/login?user=ann"))
    await loaded.wait()
    parallel = await Client(client.app, jar=dict(jar)).get("/set?coupon=SAVE10")
    assert parallel.json() == {"cart": "1", "coupon": "SAVE10"}
    checked.set()
    assert (await login).status == 200
    assert browser.jar != jar
    after = await Client(client.app, jar=browser.jar).get("/read")
    assert after.json() == {"cart": "1", "coupon": "SAVE10", "user": "ann"}
    assert len(await keys_of(raw, backend)) == 2  # the new session and the old one's alias


async def test_a_logout_while_a_rotation_merges_ends_the_rotation_too(
    raw: Redis, backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old ID is retired only after the new session holds the merged data: a logout
    that lands between the merge and the retirement ends the session, and the rotation
    leaves nothing behind (it never re-creates an ended session)."""
    from asgi_sessions.backends import redis as module

    real = module._retire
    logged_out = []

    async def logout_after_the_first_attempt(client: Any, key: str, *args: Any) -> Any:
        reply = await real(client, key, *args)
        if not logged_out:
            logged_out.append(reply)
            await raw.delete(key)  # the logout's delete, between the two attempts
        return reply

    monkeypatch.setattr(module, "_retire", logout_after_the_first_attempt)
    client = client_for(backend)
    await client.get("/set?cart=1")
    token = client.jar["session"]
    now = time.time()
    login = await backend.load(token, now=now)
    parallel = await backend.load(token, now=now)
    assert login is not None
    assert parallel is not None
    parallel.data = {"cart": "1", "coupon": "1"}
    await backend.save(token, parallel, Delta({"coupon": "1"}), now=now, ttl=600, rotate=False)
    login.data = {"cart": "1", "user": "ann"}
    with pytest.raises(SessionGone):
        await backend.save(token, login, Delta({"user": "ann"}), now=now, ttl=600, rotate=True)
    assert type(logged_out[0]) is bytes  # the first attempt found the parallel change
    assert await keys_of(raw, backend) == []


async def test_a_rotation_that_keeps_finding_parallel_changes_gives_up_cleanly(
    raw: Redis, backend: RedisBackend, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session that another request changes before every attempt to retire its old
    ID: the rotation gives up after a bounded number of merges with a BackendError (a
    503), deletes the new session it made, and leaves the old one live with every
    parallel change."""
    from asgi_sessions.backends import redis as module

    other = RedisBackend(redis_url, prefix=backend.prefix)
    real = module._retire
    changes = []

    async def a_parallel_save_first(client: Any, key: str, *args: Any) -> Any:
        record = await other.load(token, now=now)
        assert record is not None
        changes.append(len(changes))
        record.data = {**record.data, "n": len(changes)}
        await other.save(token, record, Delta({"n": len(changes)}), now=now, ttl=600, rotate=False)
        return await real(client, key, *args)

    try:
        client = client_for(backend)
        await client.get("/set?cart=1")
        token = client.jar["session"]
        now = time.time()
        login = await backend.load(token, now=now)
        assert login is not None
        monkeypatch.setattr(module, "_retire", a_parallel_save_first)
        login.data = {"cart": "1", "user": "ann"}
        with pytest.raises(BackendError, match="changed again after each of 8 merges"):
            await backend.save(token, login, Delta({"user": "ann"}), now=now, ttl=600, rotate=True)
        assert len(changes) == 9  # before the first attempt and after each merge
        assert len(await keys_of(raw, backend)) == 1  # the new session is gone
        old = await backend.load(token, now=now)
        assert old is not None
        assert not old.read_only
        assert old.data == {"cart": "1", "n": 9}
    finally:
        await other.aclose()


async def test_a_retirement_retried_after_its_reply_was_lost_keeps_the_new_session(
    raw: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With rotation_grace=0 the retirement deletes the old key. When its reply is lost
    and the client retries the command, the retry must recognise its own retirement:
    before, it found the key gone and the rotation ended the new session (a logout)."""
    from asgi_sessions.backends import redis as module

    backend = RedisBackend(redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:", rotation_grace=0)
    real = module._exchange
    lost = []

    async def lose_the_first_retirement_reply(connection: Any, packed: bytes) -> Any:
        reply = await real(connection, packed)
        if module._retire.sha.encode() in packed and not lost:
            lost.append(reply)
            raise RedisConnectionError("the connection broke before the reply was read")
        return reply

    try:
        client = client_for(backend)
        await client.get("/set?cart=1")
        old = f"session={client.jar['session']}".encode()
        await raw.script_load(module._RETIRE)  # so the command names the script by its SHA
        monkeypatch.setattr(module, "_exchange", lose_the_first_retirement_reply)
        response = await client.get("/login?user=ann")
        monkeypatch.setattr(module, "_exchange", real)
        assert lost == [1]
        assert response.status == 200
        assert (await client.get("/read")).json() == {"cart": "1", "user": "ann"}
        assert (await client.get("/read", cookie=old)).json() == {}
        await asyncio.sleep(backend.operation_timeout + 0.2)
        assert len(await keys_of(raw, backend)) == 1  # the old key's marker expired
    finally:
        await backend.aclose()


async def test_without_grace_a_logout_racing_a_rotation_ends_the_rotated_session(
    raw: Redis, redis_url: str
) -> None:
    """A logout that loaded the session before a login rotated it (rotation_grace=0)
    and deletes it after: the marker the retirement leaves names the new session,
    which ends too, as it does through a grace alias."""
    backend = RedisBackend(redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:", rotation_grace=0)
    try:
        client = client_for(backend)
        await client.get("/set?cart=1")
        old = client.jar["session"]
        logout = await backend.load(old, now=time.time())
        assert logout is not None
        await client.get("/login?user=ann")
        assert (await client.get("/read")).json() == {"cart": "1", "user": "ann"}
        await backend.delete(old, logout)
        assert (await client.get("/read")).json() == {}
        assert await keys_of(raw, backend) == []
    finally:
        await backend.aclose()


async def test_a_save_racing_a_set_expiry_stores_an_expiry_its_metadata_states(
    raw: Redis, backend: RedisBackend, clock: FakeClock
) -> None:
    """Request A shortens the session's idle timeout to 10 s while B, which loaded
    before it, saves a plain change after it. Before, B kept A's metadata (idle 10 s)
    but wrote its own TTL and refresh schedule (idle 600 s): at +30 s the session was
    expired, at +61 s the load's refresh brought it back. Now B writes the metadata
    it computed them from (the last writer's metadata wins, as with the memory
    backend) and the stored record agrees with itself."""
    settings: dict[str, Any] = {"idle_timeout": 600, "refresh_after": 60, "clock": clock}
    loaded, go = asyncio.Event(), asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["session"]["cart"] = "1"
        loaded.set()
        await go.wait()
        await session_app(scope, receive, send)

    client = client_for(backend, **settings)
    await client.get("/set?k=v")
    jar = dict(client.jar)
    b = asyncio.create_task(
        Client(SessionMiddleware(slow, backend=backend, **settings), jar=dict(jar)).get("/read")
    )
    await loaded.wait()
    assert (await Client(client.app, jar=dict(jar)).get("/expiry?s=10")).status == 200
    go.set()
    assert (await b).status == 200
    (key,) = await keys_of(raw, backend)
    meta = msgpack.unpackb(await raw.hget(key, "m"))
    idle = meta.get("i", 600)
    assert int((await raw.hget(key, "z")).split()[1]) == idle
    assert await raw.pttl(key) <= idle * 1000
    reads = []
    for step in (30, 31):
        clock.advance(step)
        backend._due.clear()  # as another worker, which runs the load's refresh script
        reads.append((await Client(client.app, jar=dict(jar)).get("/read")).json())
    assert reads[0] == reads[1]  # an expired session never comes back


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"\xa1k", b"\xc1\xff garbage"),  # the value of session key "k"
        (b"\xa1k", b"\xa5ab"),  # a truncated value: the next field would shift
        (b"\xa1k", b"\x01\x02"),  # a value with trailing bytes
        (b"\xa2kk", b"\xc7\x01\x05x"),  # an unknown extension type
        (b"\xff", b"\x01"),  # a field name that is not a msgpack str
        (b"m", b"\x93\x01\x02\x03"),  # metadata that is not a map
        (b"m", b"\x81\xa1c\xa1x"),  # metadata without its times
        (b"s", b"\xc0"),  # last-seen that is not an array
        (b"s", b"\x93\xa1x\xc0\xc0"),  # a last-seen time that is not a number
        (b"s", b"\x93\xcb\x00\x00\x00\x00\x00\x00\x00\x00\x01\xc0"),  # a non-str IP
        (b"t", b"not a number"),  # the refresh schedule is unreadable: no refresh, still loads
        (b"z", b"not numbers"),
        # Found by tests/test_fuzz_targets.py: Lua's tonumber reads nan and inf, and a
        # deadline of inf or centuries away made PEXPIRE fail the script (a 503).
        (b"z", b"nan inf nan"),
        (b"z", b"1 inf 1e300"),
        (b"z", b"1 1e300 1e300"),
        (b"z", b"inf 100 1e300"),
        (b"z", b"-1 -1 -1"),
        # Found by the ten-minute fuzz run: times no code of ours wrote made the TTL of
        # the hybrid refresh's writes overflow what PEXPIRE and SET PX accept (a 503).
        (b"m", msgpack.packb({"c": 9.2e15, "r": 0.0})),
        (b"m", msgpack.packb({"c": float("nan"), "r": 0})),
        (b"m", msgpack.packb({"c": -1, "r": 0})),
        (b"m", msgpack.packb({"c": time.time(), "r": time.time(), "i": 10**18})),
        (b"m", msgpack.packb({"c": time.time(), "r": time.time(), "f": 1e300})),
    ],
)
async def test_a_garbage_record_gives_an_empty_session_and_is_removed(
    raw: Redis, backend: RedisBackend, field: bytes, value: bytes
) -> None:
    client = client_for(backend)
    await client.get("/set?k=v")
    (key,) = await keys_of(raw, backend)
    await raw.hset(key, field, value)
    # Reads use the view that every writing script rebuilds; a planted field needs
    # one too (as a record whose view went missing gets from the load script).
    await raw.hdel(key, "x")
    backend._due.clear()
    if field in (b"t", b"z"):
        await raw.hset(key, "t", "0")  # the refresh is due, so the script reads z
        response = await client.get("/read")
        assert response.status == 200
        assert response.json() == {"k": "v"}
        return
    response = await client.get("/read")
    assert response.status == 200
    assert response.json() == {}
    assert await keys_of(raw, backend) == []


async def test_an_empty_view_is_a_corrupt_record_and_is_removed(
    raw: Redis, backend: RedisBackend
) -> None:
    """Found by the fuzz target: an empty ``x`` read as "no session" and the record
    stayed; it is a corrupt record like any other."""
    client = client_for(backend)
    await client.get("/set?k=v")
    (key,) = await keys_of(raw, backend)
    await raw.hset(key, "x", b"")
    response = await client.get("/read")
    assert response.status == 200
    assert response.json() == {}
    assert await keys_of(raw, backend) == []


async def test_a_stored_alias_or_index_member_that_is_not_a_session_id_is_ignored(
    raw: Redis, backend: RedisBackend
) -> None:
    """Found by tests/test_fuzz_targets.py: an ``a`` field of non-UTF-8 bytes made a
    logout (which follows aliases) raise UnicodeDecodeError, a 500; an index member
    that is not a session ID would have been made into a key name."""
    client = client_for(backend)
    await client.get("/bind?user=ann")
    (session_key,) = [k for k in await keys_of(raw, backend) if b":s:" in k]
    (index_key,) = [k for k in await keys_of(raw, backend) if b":u:" in k]
    await raw.hset(session_key, "a", b"\x80")
    await raw.zadd(index_key, {b"\x80\xff": 1e12, b"../../x": 1e12})
    sessions = await backend.list_sessions("ann")
    assert len(sessions) == 1
    response = await client.get("/invalidate")
    assert response.status == 200
    assert await raw.exists(session_key) == 0
    assert await backend.revoke_user("ann") == 0


async def test_revoke_all_leaves_the_apps_own_keys_under_the_prefix_alone(
    raw: Redis, backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """An app that uses its own namespace as the prefix keeps its keys: only a key
    named and typed as a session (a hash at ``s:<64 hex>``) or a user's index (a zset
    at ``u:{<32 hex>}``) goes. Before, every key under ``s:`` and ``u:`` went, and
    one that was not a hash made revoke_all fail with WRONGTYPE."""
    client = client_for(backend)
    await client.get("/set?a=1")
    await client.get("/bind?user=ann")  # an index key, and a grace alias
    ours = await keys_of(raw, backend)
    assert len(ours) == 3
    p = backend.prefix
    theirs = {
        f"{p}u:42": "the app's user record",
        f"{p}s:{'a' * 64}": "a string where a session would be",
        f"{p}u:{{{'b' * 32}}}": "a string where an index would be",
    }
    for key, value in theirs.items():
        await raw.set(key, value)
    await raw.hset(f"{p}s:config", mapping={"theme": "dark"})
    await raw.hset(f"{p}s:{'c' * 64}:extra", mapping={"m": "1"})
    await raw.zadd(f"{p}u:{'d' * 32}", {"member": 1})
    assert await backend.revoke_all() == 1
    assert (await client.get("/read")).json() == {}
    left = set(await keys_of(raw, backend))
    assert left.isdisjoint(ours)
    assert len(left) == 6
    for key, value in theirs.items():
        assert await raw.get(key) == value.encode()
    assert await raw.hgetall(f"{p}s:config") == {b"theme": b"dark"}
    assert "revoke_all left 6 keys" in caplog.text
    assert "(4 with a name none of its keys has, 2 of another type)" in caplog.text


async def test_revoke_all_finds_the_sessions_of_a_prefix_with_glob_characters(
    raw: Redis, redis_url: str
) -> None:
    """The prefix is matched as text: ``[*]?`` is not a pattern that misses this
    backend's keys and matches another's (``*x``)."""
    tag = uuid.uuid4().hex[:12]
    backend = RedisBackend(redis_url, prefix=f"t{tag}[*]?:", operation_timeout=6.0)
    neighbour = RedisBackend(redis_url, prefix=f"t{tag}*x:", operation_timeout=6.0)

    async def keys_starting(prefix: str) -> list[bytes]:
        return [
            key
            async for key in raw.scan_iter(match=f"t{tag}*", count=1000)
            if key.startswith(prefix.encode())
        ]

    try:
        await client_for(backend).get("/bind?user=ann")
        kept = client_for(neighbour)
        await kept.get("/set?a=1")
        assert len(await keys_starting(backend.prefix)) == 2  # the session, its index
        assert await backend.revoke_all() == 1
        assert await keys_starting(backend.prefix) == []
        assert (await kept.get("/read")).json() == {"a": "1"}
    finally:
        await neighbour.revoke_all()
        await backend.aclose()
        await neighbour.aclose()


async def test_refresh_is_folded_into_the_load(
    raw: Redis, backend: RedisBackend, clock: FakeClock
) -> None:
    client = client_for(backend, idle_timeout=600, refresh_after=60, clock=clock)
    await client.get("/set?k=v")
    (key,) = await keys_of(raw, backend)
    await raw.pexpire(key, 100_000)
    clock.advance(61)
    response = await client.get("/read")
    assert "Max-Age=600" in response.set_cookies[0]
    assert await raw.pttl(key) > 500_000
    last_seen, _, _ = msgpack.unpackb(await raw.hget(key, "s"))
    assert last_seen == clock.now
    due = await raw.hget(key, "t")
    assert float(due) == pytest.approx(clock.now + 60)  # the next refresh is due after 60 s
    # The next read inside the throttle window does not refresh again.
    clock.advance(30)
    assert (await client.get("/read")).set_cookies == []


async def test_a_refresh_on_load_never_extends_past_the_absolute_deadline(
    raw: Redis, backend: RedisBackend, clock: FakeClock
) -> None:
    client = client_for(
        backend, idle_timeout=600, absolute_timeout=700, refresh_after=60, clock=clock
    )
    await client.get("/set?k=v")
    (key,) = await keys_of(raw, backend)
    clock.advance(400)  # refresh due; now + idle (1000) is past the absolute deadline (700)
    response = await client.get("/read")
    assert response.json() == {"k": "v"}
    assert "Max-Age=300" in response.set_cookies[0]
    assert 0 < await raw.pttl(key) <= 300_000
    clock.advance(301)
    assert (await client.get("/read")).json() == {}


async def test_a_fixed_expiry_is_never_slid_by_the_load(
    raw: Redis, backend: RedisBackend, clock: FakeClock
) -> None:
    client = client_for(backend, idle_timeout=600, refresh_after=60, clock=clock)
    await client.get("/set?k=v")
    await client.get(f"/expiry?at={clock.now + 500}")
    (key,) = await keys_of(raw, backend)
    assert await raw.hget(key, "t") is None  # no refresh schedule: nothing to slide
    clock.advance(120)
    response = await client.get("/read")
    assert response.set_cookies == []
    assert await raw.pttl(key) <= 500_000


@pytest.mark.parametrize(
    ("path", "settings", "alive"),
    [
        # A deploy lowered idle_timeout (12 h to 10 min): idle for 2 h is past it.
        ("/set?x=1", {"idle_timeout": 600}, False),
        # The session's own idle timeout (set_expiry, 6 h) outranks the setting.
        ("/expiry?s=21600", {"idle_timeout": 600}, True),
        # A deploy lowered absolute_timeout (7 days to 1 h) below the session's age.
        ("/expiry?s=43200", {"idle_timeout": 600, "absolute_timeout": 3600}, False),
    ],
)
async def test_a_refresh_on_load_never_revives_a_session_expired_under_the_new_settings(
    raw: Redis,
    backend: RedisBackend,
    redis_url: str,
    clock: FakeClock,
    path: str,
    settings: dict[str, int],
    alive: bool,
) -> None:
    before = client_for(backend, clock=clock)  # the defaults: 12 h idle, 7 days absolute
    await before.get(path)
    (key,) = await keys_of(raw, backend)
    await raw.pexpire(key, 100_000)  # a TTL that a refresh would push back
    stored = await raw.hmget(key, ["s", "t"])
    clock.advance(7200)  # idle 2 h: a refresh is due under either settings
    # The redeployed process: a new backend, so no remembered schedule skips the script.
    redeployed = RedisBackend(redis_url, prefix=backend.prefix, operation_timeout=6.0)
    try:
        after = client_for(redeployed, clock=clock, **settings)
        after.jar = dict(before.jar)
        response = await after.get("/read")
    finally:
        await redeployed.aclose()
    if alive:
        assert response.json() == {"x": "1"}
        assert "Max-Age=21600" in response.set_cookies[0]
        assert await raw.pttl(key) > 100_000
    else:
        # As MemoryBackend: expired, so an anonymous session, and the record is not
        # refreshed (no later last-seen, no later TTL).
        assert response.json() == {}
        assert response.set_cookies == []
        assert await raw.hmget(key, ["s", "t"]) == stored
        assert await raw.pttl(key) <= 100_000


def test_decode_responses_client_is_refused(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisBackend(client)


def test_a_bad_url_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="Redis URL"):
        RedisBackend("http://nope")


# -- Redis commands per request, as the server sees them ---------------------------------


async def test_command_counts(private_redis: Any, clock: FakeClock) -> None:
    """Commands sent per request, from MONITOR (commands run inside our Lua scripts
    are reported there as coming from "lua" and are not round trips)."""
    raw = Redis.from_url(private_redis.url)
    backend = RedisBackend(private_redis.url)
    try:
        client = client_for(backend, clock=clock)
        # Load the scripts into the server's cache (a first EVALSHA falls back to EVAL).
        await client.get("/set?k=v")
        await client.get("/set?k=w")
        unknown = b"session=" + secrets.token_urlsafe(32).encode()
        await Client(client.app).get("/read", cookie=unknown)

        async def count(path: str, cookie: bytes | None = None) -> int:
            request = Client(client.app).get(path, cookie=cookie) if cookie else client.get(path)
            return len(await commands_sent(raw, request))

        assert await count("/read") == 1
        assert await count("/untouched") == 1
        assert await count("/set?k=x") == 2
        assert await count("/read", cookie=b"other=1") == 0
        assert await count("/untouched", cookie=b"other=1") == 0
        assert await count("/read", cookie=b"session=not-a-token") == 0
        assert await count("/read", cookie=b"session=" + secrets.token_urlsafe(32).encode()) == 1
        clock.advance(5 * 3600)  # refresh due: still one command, the refresh rides on the load
        assert await count("/read") == 1
    finally:
        await backend.aclose()
        await raw.aclose()


async def test_a_bound_session_pays_for_its_index_only_when_its_deadline_moves_later(
    private_redis: Any, clock: FakeClock
) -> None:
    """The user's index holds each session's latest possible moment: a save or a
    refresh that moves it later re-scores it there (one more command), and no other
    write of a bound session touches the index."""
    raw = Redis.from_url(private_redis.url)
    backend = RedisBackend(private_redis.url, prefix=f"t{uuid.uuid4().hex[:12]}:")
    try:
        await raw.script_load(_LOAD)  # or the first refresh falls back to EVAL once
        client = client_for(backend, clock=clock)
        await client.get(f"/expiry?at={clock.now + 600}")
        await client.get("/bind?user=ann")  # scored by the fixed expiry
        await client.get("/set?k=v")

        async def sent(path: str) -> list[str]:
            return await commands_sent(raw, client.get(path))

        assert len(await sent("/set?k=w")) == 2
        assert len(await sent(f"/expiry?at={clock.now + 300}")) == 2  # earlier: no re-score
        assert len(await sent("/expiry?s=3600")) == 3  # later: re-scored, one command more
        assert len(await sent(f"/expiry?at={clock.now + 900}")) == 2  # within the new score
        assert len(await sent("/expiry?s=3600")) == 2  # the score holds already
        assert len(await sent("/set?k=y")) == 2
        clock.advance(1800)  # refresh due: it rides on the load, under the same deadline
        assert len(await sent("/read")) == 1
        (score,) = [
            s for _, s in await raw.zrange(backend._user_key("ann"), 0, -1, withscores=True)
        ]
        assert score == client.app.policy.absolute_deadline(
            (await backend.load(client.jar["session"], now=clock.now)) or pytest.fail("gone")
        )
    finally:
        await backend.aclose()
        await raw.aclose()


async def test_a_bound_session_stored_without_its_index_score_is_re_scored_once(
    private_redis: Any, clock: FakeClock
) -> None:
    """A session bound before ``m`` kept its index score (``d``): its first save
    re-scores it and stores the score, later saves do not."""
    raw = Redis.from_url(private_redis.url)
    backend = RedisBackend(private_redis.url, prefix=f"t{uuid.uuid4().hex[:12]}:")
    try:
        client = client_for(backend, clock=clock)
        await client.get("/bind?user=ann")
        key = backend._key(token_id(client.jar["session"]))
        meta = msgpack.unpackb(await raw.hget(key, "m"))
        del meta["d"]
        await raw.hset(key, "m", msgpack.packb(meta))
        await raw.hdel(key, "x")  # the next load rebuilds the view from the fields
        await client.get("/read")
        for script in (_LOAD, _INDEX):  # or a first use falls back to EVAL once
            await raw.script_load(script)
        assert len(await commands_sent(raw, client.get("/set?k=v"))) == 3
        assert len(await commands_sent(raw, client.get("/set?k=w"))) == 2
        assert "d" in msgpack.unpackb(await raw.hget(key, "m"))
    finally:
        await backend.aclose()
        await raw.aclose()


# -- the view: reads are one plain HGET ----------------------------------------------------


async def rebuilt_view(raw: Redis, key: bytes) -> bytes:
    """What the scripts' view() builds from the hash's fields right now (it also
    stores it, so call this only after reading the stored one)."""
    return await raw.eval(_VIEW + "return view(KEYS[1])", 1, key)  # type: ignore[no-any-return]


async def test_every_write_leaves_a_view_that_matches_the_fields(
    raw: Redis, backend: RedisBackend, clock: FakeClock
) -> None:
    """Whoever builds the view (Python for a new or replaced record, the script for
    a delta, a touch, a refresh or a rotation), it is the one the fields give."""
    client = client_for(backend, idle_timeout=600, refresh_after=60, clock=clock)
    steps = [
        "/set?a=1&b=2",  # new session: Python's view
        "/set?b=3",  # delta on the view it loaded: Python's view
        "/del?a=",
        "/expiry?s=300",  # metadata change
        "/bind?user=ann",  # rotation: new key from Python, old one retired by the script
        "/clear",
        "/set?c=%E2%82%AC",
    ]
    for target in steps:
        clock.advance(61)  # every load is also due a refresh (the script's view)
        assert (await client.get(target)).status == 200
        for key in await keys_of(raw, backend):
            if await raw.type(key) != b"hash":
                continue
            stored = msgpack.unpackb(await raw.hget(key, "x"), timestamp=3)
            # The same document (field order and number encodings may differ).
            assert stored == msgpack.unpackb(await rebuilt_view(raw, key), timestamp=3), target
    assert (await client.get("/read")).json() == {"c": "€"}


async def stored_view_matches_fields(raw: Redis, backend: RedisBackend) -> dict[str, Any]:
    (key,) = await keys_of(raw, backend)
    stored = msgpack.unpackb(await raw.hget(key, "x"), timestamp=3)
    assert stored == msgpack.unpackb(await rebuilt_view(raw, key), timestamp=3)
    return stored[4]  # type: ignore[no-any-return]


async def a_delta_across_another_write(
    backend: RedisBackend, jar: dict[str, str], key: str, value: str, other: Client, target: str
) -> Response:
    """A request on ``backend`` that sets ``key`` on the session it loaded and is held
    between its load and its commit while ``other.get(target)`` runs (and answers 200);
    returns its response, or raises what its commit raised."""
    gate, loaded = asyncio.Event(), asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        scope["session"][key] = value
        loaded.set()
        await gate.wait()
        await session_app(scope, receive, send)

    request = asyncio.ensure_future(
        Client(SessionMiddleware(slow, backend=backend), jar=dict(jar)).get("/untouched")
    )
    await loaded.wait()
    assert (await other.get(target)).status == 200
    gate.set()
    return await request


async def test_a_delta_after_another_write_merges_and_rebuilds_the_view(
    raw: Redis, backend: RedisBackend, redis_url: str
) -> None:
    """A delta carries the view it built from the one it loaded; when another
    process wrote in between, that view would drop the other's change, so the
    script leaves it out, merges and rebuilds."""
    a = client_for(backend)
    await a.get("/set?a=1")
    other = RedisBackend(redis_url, prefix=backend.prefix)
    try:
        b = Client(SessionMiddleware(session_app, backend=other), jar=dict(a.jar))
        # A delta on the view loaded before B's write.
        response = await a_delta_across_another_write(backend, a.jar, "b", "2", b, "/set?c=3")
        assert response.status == 200
        assert await stored_view_matches_fields(raw, backend) == {"a": "1", "b": "2", "c": "3"}
        assert (await a.get("/read")).json() == {"a": "1", "b": "2", "c": "3"}
        # The record the merge left behind carries no view of its own: the next
        # delta on it lets the script build one (which also reads back right).
        assert (await a.get("/set?d=4")).status == 200
        assert (await stored_view_matches_fields(raw, backend))["d"] == "4"
    finally:
        await other.aclose()


async def test_a_view_is_never_built_from_a_list_changed_in_place(
    raw: Redis, backend: RedisBackend
) -> None:
    """A list the request changed in place without setting it is not saved, so the
    view of the delta that saves another key must show the stored list."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        if scope["path"] == "/init":
            session["cart"] = [1]
        else:
            session["cart"].append(2)  # in place: not saved
            session["n"] = 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = Client(SessionMiddleware(app, backend=backend))
    await client.get("/init")
    await client.get("/change")
    assert await stored_view_matches_fields(raw, backend) == {"cart": [1], "n": 1}
    record = await backend.load(client.jar["session"], now=time.time())
    assert record is not None
    assert record.data == {"cart": [1], "n": 1}


async def test_a_view_this_process_stored_is_cached_as_decoding_it_gives(
    raw: Redis, backend: RedisBackend
) -> None:
    """A save enters the view it stored into the views cache, so the next load of
    it decodes nothing; the entry must be exactly what decoding gives (values and
    their types), and the next save, which reuses the pairs of the keys it leaves
    alone, must store the view the fields give. Values that load back as another
    type (a datetime not in UTC loads back in UTC) or can change in place (lists)
    are never entered: their view is decoded on load as before."""
    values: dict[str, Any] = {
        "s": "text €",
        "i": 2**63,
        "neg": -5,
        "f": 1.5,
        "b": b"\x00\xff",
        "none": None,
        "t": True,
        "utc": datetime(2026, 12, 1, 12, 30, 0, 123456, tzinfo=UTC),
    }

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        key = scope["path"].strip("/")
        if key.startswith("del-"):
            del session[key[4:]]
        elif key == "local":
            session[key] = datetime(2026, 12, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
        elif key == "list":
            session[key] = [1, {"a": 2}]
        else:
            session[key] = values[key]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = Client(SessionMiddleware(app, backend=backend))
    cached = 0
    for step in [*values, "del-f", "s", "local", "del-local", "list", "i"]:
        assert (await client.get(f"/{step}")).status == 200, step
        (key,) = await keys_of(raw, backend)
        view = await raw.hget(key, "x")
        assert view is not None
        entry = backend._views.get(view)
        if entry is not None:
            cached += 1
            decoded = backend._decode(view)
            assert entry[:13] == decoded[:13], step
            assert [type(v) for v in entry[:12]] == [type(v) for v in decoded[:12]], step
            flat = entry[12]
            assert [(k, type(v)) for k, v in flat.items()] == [
                (k, type(v)) for k, v in decoded[12].items()
            ], step
        stored = msgpack.unpackb(view, timestamp=3)
        assert stored == msgpack.unpackb(await rebuilt_view(raw, key), timestamp=3), step
        # Nothing a later request might see differs from what was set.
        record = await backend.load(client.jar["session"], now=time.time())
        assert record is not None
        if step in ("local", "list"):
            assert entry is None, step
    assert cached >= len(values)  # the plain values' views were all entered
    assert record.data["i"] == 2**63
    assert record.data["list"] == [1, {"a": 2}]
    assert "f" not in record.data
    assert "local" not in record.data


def test_the_last_seen_entry_packs_as_msgpack_does() -> None:
    """``s`` is packed by hand (a float64 time and two cached strings): it must load
    back as msgpack's own packing of the same list does."""
    for seen in (
        [1764590000.123456, "127.0.0.1", "agent/1.0"],
        [1764590000, None, None],
        [0.0, "::1", "ü" * 256],
        [1e12, "x" * 31, "y" * 32],
        [1.5, "€" * 100, ""],
    ):
        packed = _packed_seen(seen)
        assert msgpack.unpackb(packed) == msgpack.unpackb(msgpack.packb(seen)), seen
        assert type(msgpack.unpackb(packed)[0]) is float
    assert _seen_list(1.0, "a" * 300, "b" * 300) == [1.0, "a" * 256, "b" * 256]


async def test_a_save_replaces_the_cached_entry_of_the_view_it_changed(
    backend: RedisBackend,
) -> None:
    """Superseded views do not pile up in the views cache: a session written on every
    request keeps one entry, the one of its stored view; so does one whose writes
    the cache cannot take (a list), and one that is refreshed or rotated."""
    client = client_for(backend)
    for n in range(20):
        assert (await client.get(f"/set?n={n}")).status == 200
    assert len(backend._views) == 1
    assert (await client.get("/read")).json() == {"n": "19"}
    backend._views.clear()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["session"]["cart"] = [scope["path"]]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    lists = Client(SessionMiddleware(app, backend=backend))
    for n in range(5):
        await lists.get(f"/{n}")
    assert len(backend._views) <= 1
    await client.get("/rotate")
    assert len(backend._views) <= 2  # the new session's, and the other client's


async def test_a_session_over_the_size_limit_is_refused_when_written_and_kept(
    raw: Redis, redis_url: str
) -> None:
    """Every value fits, but together they are over the serializer's max_size: the
    save that would store such a record raises SessionTooLarge and writes nothing,
    so the session stays as it was (the load would refuse that record, and remove
    it as corrupt: the user's whole session would be lost on the next request)."""
    backend = RedisBackend(
        redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:", serializer=MsgpackSerializer(max_size=1000)
    )
    try:
        client = client_for(backend)
        assert (await client.get("/set?a=" + "x" * 600)).status == 200
        with pytest.raises(SessionTooLarge, match="over the limit of 1000 bytes"):
            await client.get("/set?b=" + "y" * 600)
        assert (await client.get("/read")).json() == {"a": "x" * 600}
        # A new session too large from the start is refused, and no key is left.
        fresh = client_for(backend)
        with pytest.raises(SessionTooLarge):
            await fresh.get(f"/set?a={'x' * 600}&b={'y' * 600}")
        assert len(await keys_of(raw, backend)) == 1
        # A replacement that fits is fine.
        assert (await client.get("/set?a=small&b=" + "y" * 600)).status == 200
        assert (await client.get("/read")).json() == {"a": "small", "b": "y" * 600}
    finally:
        await backend.aclose()


async def test_a_merge_over_the_size_limit_writes_nothing(raw: Redis, redis_url: str) -> None:
    """A delta whose loaded view is stale merges in the script, which builds the
    merged view first and, over the limit, writes nothing: SessionTooLarge, and the
    record stays the one the other request stored."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    small = MsgpackSerializer(max_size=1000)
    backend = RedisBackend(redis_url, prefix=prefix, serializer=small)
    other = RedisBackend(redis_url, prefix=prefix, serializer=MsgpackSerializer(max_size=1000))
    try:
        a = client_for(backend)
        await a.get("/set?a=1")
        b = Client(SessionMiddleware(session_app, backend=other), jar=dict(a.jar))
        with pytest.raises(SessionTooLarge, match="other requests stored meanwhile"):
            await a_delta_across_another_write(
                backend, a.jar, "big", "x" * 600, b, "/set?c=" + "y" * 600
            )
        assert await stored_view_matches_fields(raw, backend) == {"a": "1", "c": "y" * 600}
        assert (await a.get("/read")).json() == {"a": "1", "c": "y" * 600}
    finally:
        await backend.aclose()
        await other.aclose()


async def test_refreshes_never_turn_a_saved_record_into_one_the_load_refuses(
    raw: Redis, redis_url: str, clock: FakeClock
) -> None:
    """A record saved just under max_size, then refreshed by requests from a client
    with a long address and user agent, and rotated (its old ID a grace alias):
    the load accepts room for that metadata, which is capped at 256 characters."""
    backend = RedisBackend(
        redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:", serializer=MsgpackSerializer(max_size=1000)
    )
    try:
        client = client_for(backend, idle_timeout=600, refresh_after=60, clock=clock)
        client.user_agent = b"a"
        value = "x" * 1000
        while True:  # the largest value that still fits
            try:
                await client.get("/set?v=" + value)
                break
            except SessionTooLarge:
                value = value[:-1]
        (key,) = await keys_of(raw, backend)
        assert len(await raw.hget(key, "x")) > 1000
        token = client.jar["session"]
        clock.advance(61)
        record = await backend.load(
            token, now=clock(), policy=client.app.policy, ip="€" * 5000, user_agent="ü" * 256
        )
        assert record is not None
        assert record.refreshed
        assert record.ip == "€" * 256
        assert record.user_agent == "ü" * 256
        assert len(await raw.hget(key, "x")) > 1000 + 1000  # over max_size, by the metadata
        backend._views.clear()  # decode it again, as another process would
        assert (await client.get("/read")).json() == {"v": value}
        client.user_agent = "ü".encode("latin-1") * 300
        assert (await client.get("/rotate")).status == 200
        backend._views.clear()
        old = await backend.load(token, now=clock())
        assert old is not None
        assert old.read_only
        assert old.data == {"v": value}
        new = await backend.load(client.jar["session"], now=clock())
        assert new is not None
        assert new.user_agent == "ü" * 256
        assert new.data == {"v": value}
    finally:
        await backend.aclose()


async def test_a_read_inside_the_schedule_is_one_plain_hget(
    private_redis: Any, clock: FakeClock
) -> None:
    raw = Redis.from_url(private_redis.url)
    backend = RedisBackend(private_redis.url)
    try:
        client = client_for(backend, idle_timeout=600, refresh_after=60, clock=clock)
        await client.get("/set?k=v")

        async def commands(target: str) -> list[str]:
            return await commands_sent(raw, client.get(target))

        unknown = b"session=" + secrets.token_urlsafe(32).encode()
        await Client(client.app).get("/read", cookie=unknown)  # caches the load script
        assert await commands("/read") == ["HGET"]
        clock.advance(61)  # due: the load script, with the refresh folded in
        assert await commands("/read") == ["EVALSHA"]
        assert await commands("/read") == ["HGET"]
        # Another process (a fresh backend) has not seen the schedule: the script.
        backend._due.clear()
        assert await commands("/untouched") == ["EVALSHA"]
        assert await commands("/untouched") == ["HGET"]
    finally:
        await backend.aclose()
        await raw.aclose()


async def test_a_schedule_shortened_by_another_process_still_refreshes(
    raw: Redis, backend: RedisBackend, redis_url: str, clock: FakeClock
) -> None:
    """Worker A remembers a refresh due in 3600 s; worker B sets a 120 s idle
    timeout (due in 60 s). A's next read after 70 s takes the plain path, sees the
    refresh due in the record, and the middleware touches: the session slides."""
    settings: dict[str, Any] = {"idle_timeout": 7200, "refresh_after": 3600, "clock": clock}
    a = client_for(backend, **settings)
    await a.get("/set?k=v")
    other = RedisBackend(redis_url, prefix=backend.prefix)
    try:
        b = Client(SessionMiddleware(session_app, backend=other, **settings), jar=dict(a.jar))
        assert (await b.get("/expiry?s=120")).status == 200
        a.jar = dict(b.jar)
        clock.advance(70)
        response = await a.get("/read")
        assert response.json() == {"k": "v", "x": "1"}
        assert "Max-Age=120" in response.set_cookies[0]
        (key,) = await keys_of(raw, backend)
        assert 110_000 < await raw.pttl(key) <= 120_000
        clock.advance(100)  # past B's original deadline, inside the slid one
        assert (await a.get("/read")).json() == {"k": "v", "x": "1"}
    finally:
        await other.aclose()


async def test_a_record_without_its_view_is_rebuilt_on_load(
    raw: Redis, backend: RedisBackend
) -> None:
    client = client_for(backend)
    await client.get("/set?k=v&n=1")
    (key,) = await keys_of(raw, backend)
    await raw.hdel(key, "x")
    backend._due.clear()
    assert (await client.get("/read")).json() == {"k": "v", "n": "1"}
    assert await raw.hget(key, "x") is not None


async def test_a_key_of_another_type_is_a_corrupt_record(raw: Redis, backend: RedisBackend) -> None:
    client = client_for(backend)
    await client.get("/set?k=v")
    (key,) = await keys_of(raw, backend)
    await raw.delete(key)
    await raw.set(key, b"not a hash")
    response = await client.get("/read")
    assert response.status == 200
    assert response.json() == {}
    assert await keys_of(raw, backend) == []


# -- the read path's caches and the operation deadline ---------------------------------------


async def test_nested_data_is_never_shared_between_requests(
    raw: Redis, backend: RedisBackend
) -> None:
    """Records are built from a cache of decoded views: a request that mutates a
    nested value in place (and so does not save it) must not change what the next
    request loads."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        if scope["path"] == "/init":
            session["cart"] = [1]
            session["n"] = 1
        else:
            seen.append((list(session["cart"]), session["n"]))
            session["cart"].append(99)  # in place: not persisted
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = Client(SessionMiddleware(app, backend=backend))
    await client.get("/init")
    for _ in range(3):
        await client.get("/mutate")
    assert seen == [([1], 1)] * 3
    record = await backend.load(client.jar["session"], now=time.time())
    assert record is not None
    record.data["n"] = 2  # flat data: each load has its own dict
    again = await backend.load(client.jar["session"], now=time.time())
    assert again is not None
    assert again.data == {"cart": [1], "n": 1}


async def test_the_read_path_caches_are_bounded(backend: RedisBackend) -> None:
    backend._cache_size = 50
    client = client_for(backend)
    for _ in range(120):
        client.jar.clear()
        await client.get("/set?k=v")
        await client.get("/read")
    assert len(backend._ids) <= 50
    assert len(backend._views) <= 50
    settings = client.app.cookie
    assert len(settings._parsed) <= 1024


async def test_an_outside_cancel_during_a_redis_call_stays_a_cancel(
    private_redis: Any,
) -> None:
    """The deadline cancels only its own operations: cancelling the request from
    outside (a client gone away) is a CancelledError, never a 503."""
    backend = RedisBackend(private_redis.url, operation_timeout=5.0)
    try:
        await backend._run(backend.client.ping())
        private_redis.pause()
        task = asyncio.ensure_future(backend._run(backend.client.ping()))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Its own deadline: BackendUnavailable, late by at most a tick (a twentieth).
        short = RedisBackend(private_redis.url, operation_timeout=0.3, socket_timeout=5.0)
        started = time.monotonic()
        try:
            with pytest.raises(BackendUnavailable, match=r"did not answer within 0\.3s"):
                await short._run(short.client.ping())
        finally:
            private_redis.resume()
            await short.aclose()
        assert time.monotonic() - started < 0.3 + 0.3 / 20 + 0.5
    finally:
        if not private_redis.running:
            private_redis.start()
        await backend.aclose()


async def test_the_request_path_keeps_the_socket_timeout_and_a_clean_connection(
    private_redis: Any,
) -> None:
    """The load and the scripts skip redis-py's per-call timeouts; the socket
    timeout still bounds them (through the watchdog), a read it cuts short closes
    its connection, and the next request on the pool gets its own answer."""
    backend = RedisBackend(private_redis.url, operation_timeout=5.0, socket_timeout=0.3)
    try:
        client = client_for(backend)
        await client.get("/set?k=v")
        token = client.jar["session"]
        private_redis.pause()
        started = time.monotonic()
        try:
            with pytest.raises(BackendUnavailable, match="Timeout reading"):
                await backend._run(backend._fast.hget("absent", "x"))
        finally:
            private_redis.resume()
        assert time.monotonic() - started < 0.3 + 5.0 / 20 + 0.5
        record = await backend.load(token, now=time.time())
        assert record is not None
        assert record.data == {"k": "v"}
        pool = backend.client.connection_pool
        assert not pool._in_use_connections
        assert all(c.is_connected for c in pool._available_connections)
    finally:
        if not private_redis.running:
            private_redis.start()
        await backend.aclose()


async def test_a_failure_inside_the_redis_client_is_a_503_and_ours_stay_errors(
    redis_url: str,
) -> None:
    """Not every failure inside redis-py is a RedisError (here a misconfigured client
    whose connect raises TypeError): it is the store failing, so a 503. An error
    raised by the backend's own code is not disguised."""
    broken = Redis.from_url(redis_url, socket_connect_timeout="1")  # type: ignore[arg-type]
    backend = RedisBackend(broken, prefix=f"t{uuid.uuid4().hex[:12]}:")
    try:
        token = secrets.token_urlsafe(32)
        # Older redis-py releases wrap the TypeError in a ConnectionError: a 503 too.
        with pytest.raises(
            BackendUnavailable,
            match=r"the Redis client failed: TypeError|Redis failed: ConnectionError",
        ):
            await backend.load(token, now=time.time())
        response = await Client(SessionMiddleware(session_app, backend=backend)).get(
            "/read", cookie=f"session={token}".encode()
        )
        assert response.status == 503

        async def ours() -> None:
            raise TypeError("a bug of ours")

        with pytest.raises(TypeError, match="a bug of ours"):
            await backend._run(ours())
    finally:
        await backend.aclose()
        with contextlib.suppress(TypeError):  # its pool never connected; closing trips too
            await broken.aclose()


async def test_a_burst_beyond_max_connections_waits_for_a_connection(redis_url: str) -> None:
    """A URL-made client waits (within operation_timeout) for a free connection
    instead of failing the request when all max_connections are in use."""
    backend = RedisBackend(redis_url, prefix=f"t{uuid.uuid4().hex[:12]}:", max_connections=2)
    try:
        app = SessionMiddleware(session_app, backend=backend)
        clients = [Client(app) for _ in range(20)]
        await asyncio.gather(*(c.get(f"/set?k={i}") for i, c in enumerate(clients)))
        responses = await asyncio.gather(*(c.get("/read") for c in clients))
        assert [r.status for r in responses] == [200] * 20
        assert [r.json() for r in responses] == [{"k": str(i)} for i in range(20)]
        pool = backend.client.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) <= 2
        assert not pool._waiters
    finally:
        await backend.aclose()


async def test_an_exhausted_pool_gives_up_within_the_operation_timeout(private_redis: Any) -> None:
    backend = RedisBackend(private_redis.url, max_connections=1, operation_timeout=0.5)
    try:
        await backend._run(backend.client.ping())
        private_redis.pause()  # the one connection hangs in a command
        try:
            started = time.monotonic()
            results = await asyncio.gather(
                backend._run(backend.client.ping()),
                backend._run(backend.client.ping()),  # waits for the pool
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
        finally:
            private_redis.resume()
        assert all(isinstance(r, BackendUnavailable) for r in results), results
        assert elapsed < 0.5 + 0.5 / 20 + 0.5
        assert await backend._run(backend.client.ping()) is True  # recovered
    finally:
        await backend.aclose()


async def test_a_woken_waiter_that_is_cancelled_passes_its_turn_on(redis_url: str) -> None:
    backend = RedisBackend(redis_url, max_connections=1, operation_timeout=5.0)
    pool = backend.client.connection_pool
    try:
        held = await pool.get_connection()
        first = asyncio.ensure_future(pool.get_connection())
        second = asyncio.ensure_future(pool.get_connection())
        await asyncio.sleep(0.05)  # both wait for the one connection
        await pool.release(held)  # wakes the first ...
        first.cancel()  # ... which is cancelled before it runs
        started = time.monotonic()
        connection = await asyncio.wait_for(second, 2.0)
        assert time.monotonic() - started < 1.0  # not left to its 5 s timeout
        await pool.release(connection)
        with contextlib.suppress(asyncio.CancelledError):
            await first
    finally:
        await backend.aclose()


async def test_a_logout_ends_only_aliases_that_still_lead_to_the_session(
    raw: Redis, backend: RedisBackend
) -> None:
    """The back-pointer ``p`` a rotation leaves on the new session ends the old ID
    with it only while that ID is still the new session's alias: a ``p`` naming
    another session's alias, or a live session, ends nothing (were a ``p`` ever stale
    or not ours, a logout must not end a stranger's session)."""
    client = client_for(backend)
    await client.get("/set?k=1")
    stranger_old = client.jar["session"]
    await client.get("/rotate")
    stranger_new = client.jar["session"]
    live = Client(client.app)
    await live.get("/set?k=2")
    bystander = live.jar["session"]
    for target in (stranger_old, bystander):
        victim = Client(client.app)
        await victim.get("/set?k=3")
        key = f"{backend.prefix}s:{token_id(victim.jar['session'])}"
        await raw.hset(key, "p", token_id(target))
        await victim.get("/invalidate")
        assert not await raw.exists(key)
    assert (await Client(client.app).get("/read", cookie=f"session={stranger_old}".encode())).json()
    for token in (stranger_new, bystander):
        assert await backend.exists(token_id(token))


async def test_the_back_pointer_survives_a_replace_and_never_shows_as_data(
    raw: Redis, backend: RedisBackend
) -> None:
    client = client_for(backend)
    await client.get("/set?k=1")
    old = client.jar["session"]
    await client.get("/rotate")
    new = client.jar["session"]
    key = f"{backend.prefix}s:{token_id(new)}"
    assert await raw.hget(key, "p") == token_id(old).encode()
    loaded = await backend.load(new, now=time.time())
    assert loaded is not None
    loaded.data = {"only": 1}
    await backend.save(
        new, loaded, Delta({"only": 1}, replace=True), now=time.time(), ttl=600, rotate=False
    )
    assert await raw.hget(key, "p") == token_id(old).encode()
    reloaded = await backend.load(new, now=time.time())
    assert reloaded is not None
    assert reloaded.data == {"only": 1}
    assert b"p" not in msgpack.unpackb(await raw.hget(key, "x"), raw=True)[4]
    alias = await backend.load(old, now=time.time())
    assert alias is not None
    assert alias.data == {"k": "1"}
    await backend.delete(new, reloaded)
    assert await backend.load(old, now=time.time()) is None
