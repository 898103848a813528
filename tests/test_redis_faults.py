"""RedisBackend under real Redis faults: stopped, killed, paused, out of memory, failover.

DESIGN.md section 3 ("Failure"): every Redis call is bounded, the middleware fails closed
with a generic 503 (or runs fail-open without a session), nobody ever sees anyone else's
data, and recovery needs no restart of the app. Each test gets its own ``redis-server``
(``private_redis`` or ``redis_sentinel``) and is free to stop, kill or pause it.

Bounds on time are upper limits with generous slack, not benchmarks: they only prove that
no request waits for a stalled server beyond the configured ``operation_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import pytest
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from asgi_sessions import BackendUnavailable, SessionMiddleware
from asgi_sessions.backends.redis import RedisBackend
from tests.asgi import Client, Response, session_app
from tests.conftest import FakeClock
from tests.redis_servers import RedisServer

pytestmark = pytest.mark.anyio

T = TypeVar("T")

OPERATION_TIMEOUT = 1.0
SOCKET_TIMEOUT = 0.3
CONNECT_TIMEOUT = 0.3
# An upper bound on any one request while the store is down or stalled: the operation
# budget plus generous slack for a loaded CI machine.
BOUND = OPERATION_TIMEOUT + 1.5
UNAVAILABLE = b"Service Unavailable"


class CountingBackend(RedisBackend):
    """A RedisBackend that counts the Redis operations it attempts (every one goes
    through ``_run``), to show that a request caused no Redis I/O at all."""

    operations = 0

    async def _run(self, operation: Awaitable[T]) -> T:
        self.operations += 1
        return await super()._run(operation)


def backend_for(url: str, **settings: Any) -> CountingBackend:
    timeouts = {
        "operation_timeout": OPERATION_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "connect_timeout": CONNECT_TIMEOUT,
        "retries": 1,
    }
    return CountingBackend(url, **{**timeouts, **settings})


class Seen:
    """Every cookie value handed out or sent, and every response, for the leak checks."""

    def __init__(self) -> None:
        self.tokens: set[str] = set()
        self.responses: list[Response] = []

    def check(self, caplog: pytest.LogCaptureFixture) -> None:
        """No raw cookie value in any log record or response body."""
        assert self.tokens, "the test handed out no cookie: nothing was checked"
        messages = [record.getMessage() for record in caplog.records]
        for token in self.tokens:
            assert token not in caplog.text
            assert not any(token in message for message in messages)
            assert not any(token.encode() in r.body for r in self.responses)


@dataclass
class Browser(Client):
    """A Client that checks the invariants of every response and notes its cookies."""

    seen: Seen = field(default_factory=Seen)

    async def get(self, target: str, *, cookie: bytes | None = None) -> Response:
        for value in self.jar.values():
            self.seen.tokens.add(value)
        response = await super().get(target, cookie=cookie)
        self.seen.responses.append(response)
        for value in response.set_cookies:
            token = value.partition("=")[2].split(";", 1)[0]
            if token:
                self.seen.tokens.add(token)
        # Never a 500, never a traceback, and a 503 is always the generic one.
        assert response.status in (200, 503), response
        assert b"Traceback" not in response.body
        if response.status == 503:
            assert response.body == UNAVAILABLE
            assert response.set_cookies == []
            assert response.header_values("cache-control") == ["no-store"]
        return response


async def timed(request: Awaitable[Response]) -> tuple[Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def expect_503(browser: Browser, path: str) -> None:
    response, elapsed = await timed(browser.get(path))
    assert response.status == 503, (path, response)
    assert elapsed < BOUND, (path, elapsed)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="asgi_sessions")
    return caplog


# -- 1. down before start-up ----------------------------------------------------------------


async def test_redis_down_at_startup_fails_closed_then_recovers(
    private_redis: RedisServer, logs: pytest.LogCaptureFixture
) -> None:
    private_redis.stop()
    backend = backend_for(private_redis.url)  # lazy: constructing it connects to nothing
    seen = Seen()
    try:
        app = SessionMiddleware(session_app, backend=backend)
        open_app = SessionMiddleware(session_app, backend=backend, fail_open=True)
        stale = secrets.token_urlsafe(32)  # a well-formed cookie: it must be looked up

        # Fail closed: a cookie means a lookup, and the lookup fails fast (refused).
        browser = Browser(app, jar={"session": stale}, seen=seen)
        await expect_503(browser, "/read")
        await expect_503(browser, "/set?k=v")
        await expect_503(Browser(app, seen=seen), "/set?k=v")  # a first write, no cookie

        # No cookie and nothing stored: no Redis I/O at all, so the outage is invisible.
        before = backend.operations
        anonymous = Browser(app, seen=seen)
        for path in ("/untouched", "/read"):
            response = await anonymous.get(path)
            assert response.status == 200
            assert response.set_cookies == []
        assert backend.operations == before

        # Fail open: an empty session that is never saved, hence no Set-Cookie.
        open_browser = Browser(open_app, jar={"session": stale}, seen=seen)
        for path, body in (("/read", {}), ("/set?k=v", {"k": "v"})):
            response, elapsed = await timed(open_browser.get(path))
            assert response.status == 200
            assert response.json() == body
            assert response.set_cookies == []
            assert elapsed < BOUND
        response, elapsed = await timed(Browser(open_app, seen=seen).get("/set?k=v"))
        assert (response.status, response.set_cookies) == (200, [])
        assert elapsed < BOUND

        # Recovery: the same app, the same backend object, no restart of either.
        private_redis.restart()
        fresh = Browser(app, seen=seen)
        response = await fresh.get("/set?k=v")
        assert response.status == 200
        assert response.set_cookies
        assert (await fresh.get("/read")).json() == {"k": "v"}
        response = await browser.get("/read")  # the stale cookie: unknown, not an error
        assert (response.status, response.json(), response.set_cookies) == (200, {}, [])
        response = await open_browser.get("/read")
        assert (response.status, response.json()) == (200, {})
    finally:
        await backend.aclose()
    seen.check(logs)


# -- 2. killed mid-run, restarted empty -------------------------------------------------------


async def test_killed_mid_run_gives_503_then_an_empty_session_after_restart(
    private_redis: RedisServer, logs: pytest.LogCaptureFixture
) -> None:
    backend = backend_for(private_redis.url)
    seen = Seen()
    try:
        app = SessionMiddleware(session_app, backend=backend)
        ann = Browser(app, seen=seen)
        assert (await ann.get("/login?user=ann")).status == 200
        old = ann.jar["session"]
        assert (await ann.get("/read")).json() == {"user": "ann"}

        private_redis.kill()
        for path in ("/read", "/set?k=v", "/login?user=ann", "/bind?user=ann", "/invalidate"):
            await expect_503(ann, path)
        assert ann.jar == {"session": old}  # a 503 never touches the browser's cookie
        assert (await Browser(app, seen=seen).get("/untouched")).status == 200

        private_redis.restart()  # a cache that crashed: every session is gone
        response = await ann.get("/read")
        assert (response.status, response.json(), response.set_cookies) == (200, {}, [])
        response = await ann.get("/login?user=ann")
        assert response.status == 200
        assert ann.jar["session"] != old
        assert (await ann.get("/read")).json() == {"user": "ann"}
        bob = Browser(app, seen=seen)
        assert (await bob.get("/login?user=bob")).status == 200
        assert (await bob.get("/read")).json() == {"user": "bob"}
        stale = Browser(app, jar={"session": old}, seen=seen)
        assert (await stale.get("/read")).json() == {}
    finally:
        await backend.aclose()
    seen.check(logs)


async def test_a_restart_between_requests_is_absorbed_by_the_retry_budget(
    private_redis: RedisServer, logs: pytest.LogCaptureFixture
) -> None:
    backend = backend_for(private_redis.url)
    seen = Seen()
    try:
        app = SessionMiddleware(session_app, backend=backend)
        browsers = [Browser(app, seen=seen) for _ in range(5)]
        for browser in browsers:
            await browser.get("/set?k=v")
        await asyncio.gather(*(browser.get("/read") for browser in browsers))  # 5 connections

        private_redis.restart()  # every pooled connection is now dead, Redis is up
        await asyncio.sleep(0.1)
        responses = await asyncio.gather(*(browser.get("/read") for browser in browsers))
        # Each stale connection fails once; one retry on a fresh connection succeeds.
        assert [r.status for r in responses] == [200] * 5
        assert all(r.json() == {} for r in responses)
    finally:
        await backend.aclose()
    seen.check(logs)


@pytest.mark.parametrize("retries", [0, 1, 2])
async def test_the_retry_budget_counts_the_first_attempt_once(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, retries: int
) -> None:
    """The request path makes its first attempt outside redis-py's Retry and hands a
    failure on to it as that Retry's first: a command that keeps failing is tried
    1 + retries times in all, never once more, and then the store is unavailable."""
    from asgi_sessions.backends import redis as module

    backend = backend_for(private_redis.url, retries=retries)
    attempts = 0
    real = module._exchange

    async def failing(connection: Any, packed: bytes) -> Any:
        nonlocal attempts
        attempts += 1
        raise RedisConnectionError("the connection broke")

    try:
        assert await backend._run(backend._fast.hget("absent", "x")) is None
        monkeypatch.setattr(module, "_exchange", failing)
        with pytest.raises(BackendUnavailable, match="Redis failed: ConnectionError"):
            await backend._run(backend._fast.hget("absent", "x"))
        assert attempts == 1 + retries
        monkeypatch.setattr(module, "_exchange", real)
        assert await backend._run(backend._fast.hget("absent", "x")) is None
    finally:
        await backend.aclose()


# -- 3. paused under concurrent load ----------------------------------------------------------


@pytest.mark.parametrize(
    ("operation_timeout", "socket_timeout"),
    [
        pytest.param(OPERATION_TIMEOUT, SOCKET_TIMEOUT, id="socket-timeout-first"),
        # The client's own timeout is longer: the operation budget cancels the call
        # mid-read, and the connection must not go back to the pool with a reply due.
        pytest.param(0.5, 5.0, id="operation-budget-first"),
    ],
)
async def test_paused_under_load_every_request_gets_a_bounded_503_and_no_crosstalk(
    private_redis: RedisServer,
    logs: pytest.LogCaptureFixture,
    operation_timeout: float,
    socket_timeout: float,
) -> None:
    backend = backend_for(
        private_redis.url, operation_timeout=operation_timeout, socket_timeout=socket_timeout
    )
    bound = operation_timeout + 1.5
    seen = Seen()
    try:
        app = SessionMiddleware(session_app, backend=backend)
        ann, bob = Browser(app, seen=seen), Browser(app, seen=seen)
        await ann.get(f"/set?secret=ann-{secrets.token_hex(8)}")
        await bob.get(f"/set?secret=bob-{secrets.token_hex(8)}")
        mine = {id(ann): (await ann.get("/read")).json(), id(bob): (await bob.get("/read")).json()}
        assert mine[id(ann)] != mine[id(bob)]

        async def read(browser: Browser) -> tuple[Browser, Response, float]:
            response, elapsed = await timed(browser.get("/read"))
            return browser, response, elapsed

        def burst() -> list[Awaitable[tuple[Browser, Response, float]]]:
            return [read(ann if i % 2 else bob) for i in range(20)]

        def own_data_or_503(results: list[tuple[Browser, Response, float]]) -> list[int]:
            for browser, response, elapsed in results:
                assert elapsed < bound, elapsed
                if response.status == 200:
                    assert response.json() == mine[id(browser)]  # never the other's
            return [response.status for _, response, _ in results]

        # All paused: every request times out on its own budget, generically.
        private_redis.pause()
        try:
            statuses = own_data_or_503(await asyncio.gather(*burst()))
        finally:
            private_redis.resume()
        assert statuses == [503] * 20

        # Paused, then resumed while requests are in flight: the replies to the commands
        # abandoned at the pause arrive now, and must never be read as another's answer.
        private_redis.pause()
        try:
            tasks = [asyncio.ensure_future(request) for request in burst()]
            await asyncio.sleep(operation_timeout / 2)
        finally:
            private_redis.resume()
        own_data_or_503(await asyncio.gather(*tasks))

        # Recovered without a restart: everyone sees their own session again. The
        # connections abandoned at the pause are replaced first (0.3 s connect and
        # socket timeouts, 40 at once), which on a loaded CI machine can take a few
        # bursts: allow 5 s, and every answer meanwhile is still its own or a 503.
        deadline = time.monotonic() + 5
        while True:
            statuses = own_data_or_503(await asyncio.gather(*burst(), *burst()))
            if statuses == [200] * 40 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert statuses == [200] * 40
    finally:
        await backend.aclose()
    seen.check(logs)


async def test_admin_operations_under_a_paused_redis_end_within_the_operation_timeout(
    private_redis: RedisServer,
) -> None:
    """The per-user and admin operations are bounded as a request is, whatever the
    client's own timeouts: revoke_all's SCAN once waited for the client's socket
    timeout (here 10 s)."""
    client = Redis.from_url(private_redis.url, socket_timeout=10)
    backend = RedisBackend(client, operation_timeout=OPERATION_TIMEOUT)
    try:
        await Client(SessionMiddleware(session_app, backend=backend)).get("/bind?user=ann")
        private_redis.pause()
        try:
            for operation in (
                lambda: backend.list_sessions("ann"),
                lambda: backend.revoke_user("ann"),
                backend.revoke_all,
            ):
                started = time.monotonic()
                with pytest.raises(BackendUnavailable):
                    await operation()
                assert time.monotonic() - started < BOUND, operation
        finally:
            private_redis.resume()
        assert await backend.revoke_all() == 1  # and it works again once Redis answers
    finally:
        await backend.aclose()
        await client.aclose()


# -- 4. out of memory -------------------------------------------------------------------------


async def fill_until_oom(server: RedisServer) -> int:
    """maxmemory 1mb, noeviction, and filler keys until Redis refuses a write."""
    server.config_set("maxmemory-policy", "noeviction")
    server.config_set("maxmemory", "1mb")
    raw = Redis.from_url(server.url)
    try:
        for i in range(2000):
            try:
                await raw.set(f"filler:{i}", b"x" * 16384)
            except OutOfMemoryError:
                return i
    finally:
        await raw.aclose()
    pytest.fail("Redis never reported out of memory")


async def test_out_of_memory_fails_writes_closed_and_still_serves_reads(
    private_redis: RedisServer, logs: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    backend = backend_for(private_redis.url)
    seen = Seen()
    try:
        app = SessionMiddleware(session_app, backend=backend, clock=clock)
        open_app = SessionMiddleware(session_app, backend=backend, clock=clock, fail_open=True)
        ann = Browser(app, seen=seen)
        await ann.get("/set?secret=ann")
        assert (await ann.get("/read")).json() == {"secret": "ann"}  # caches the load script
        ann_open = Browser(open_app, jar=ann.jar, seen=seen)  # the same browser, same cookie

        await fill_until_oom(private_redis)

        # Reads need no memory: a load with no refresh due is a plain HGETALL.
        response = await ann.get("/read")
        assert (response.status, response.json(), response.set_cookies) == (
            200,
            {"secret": "ann"},
            [],
        )
        # Writes fail closed...
        await expect_503(ann, "/set?k=v")
        await expect_503(ann, "/login?user=ann")
        await expect_503(Browser(app, seen=seen), "/set?k=v")
        # ...or, fail-open, go through unsaved and without a cookie.
        response = await ann_open.get("/set?k=v")
        assert (response.status, response.json(), response.set_cookies) == (
            200,
            {"secret": "ann", "k": "v"},
            [],
        )
        response = await Browser(open_app, seen=seen).get("/set?k=v")
        assert (response.status, response.set_cookies) == (200, [])
        assert (await ann.get("/read")).json() == {"secret": "ann"}  # nothing half-written

        # A refresh due on load: the load script writes (HSET + PEXPIRE), which Redis
        # refuses under OOM, so today the whole load fails and this read is a 503. Were
        # the refresh best-effort (in the load script and in the commit's touch), it
        # would be a 200 with the session as it is. Either way: never a 500, no leak.
        clock.advance(2 * 3600)  # past the default refresh_after (a tenth of 12 h)
        response = await ann.get("/read")
        if response.status == 200:
            assert response.json() == {"secret": "ann"}
        response = await ann_open.get("/read")
        assert response.status == 200
        assert response.json() in ({}, {"secret": "ann"})

        # Memory back: the session is intact and the due refresh happens.
        private_redis.config_set("maxmemory", "0")
        response = await ann.get("/read")
        assert (response.status, response.json()) == (200, {"secret": "ann"})
        assert response.set_cookies  # the refresh slid the cookie's Max-Age
        assert (await ann.get("/set?k=v")).json() == {"secret": "ann", "k": "v"}
        assert (await ann.get("/read")).json() == {"secret": "ann", "k": "v"}
    finally:
        await backend.aclose()
    seen.check(logs)


# -- 5. a rotation cut short ------------------------------------------------------------------


@pytest.mark.parametrize(
    "warm_pool",
    [
        # The rotation's steps go one after the other (the old ID is retired only
        # once the new key is confirmed), so whatever the pool holds, only the new
        # key is sent before the timeout (and written once Redis resumes, a key
        # nobody holds a cookie for): the old session stays as it was. With the two
        # halves sent together, as they once were, a warm pool let both run on
        # resume and the old cookie became a grace alias of a session nobody held.
        pytest.param(False, id="one-pooled-connection"),
        pytest.param(True, id="two-pooled-connections"),
    ],
)
async def test_a_rotation_cut_short_never_yields_a_cookie_that_does_not_work(
    private_redis: RedisServer, logs: pytest.LogCaptureFixture, warm_pool: bool
) -> None:
    grace = 1
    backend = backend_for(private_redis.url, rotation_grace=grace)
    seen = Seen()

    async def pause_then_app(scope: Any, receive: Any, send: Any) -> None:
        # Redis stalls after the session was loaded and before the rotation commits.
        await anyio.to_thread.run_sync(private_redis.pause)
        await session_app(scope, receive, send)

    try:
        app = SessionMiddleware(session_app, backend=backend)
        stalling = SessionMiddleware(pause_then_app, backend=backend)
        # Redis caches the rotation scripts (a stalled EVALSHA of an uncached script
        # would only ever get NOSCRIPT); through another backend, to keep this one's
        # pool at a single connection.
        primer = backend_for(private_redis.url)
        try:
            primed = Client(SessionMiddleware(session_app, backend=primer))
            await primed.get("/login?user=primer")
            assert (await primed.get("/rotate")).status == 200
        finally:
            await primer.aclose()
        ann = Browser(app, seen=seen)
        assert (await ann.get("/login?user=ann")).status == 200
        first = ann.jar["session"]

        # Paused before the request: the load fails, nothing is written.
        private_redis.pause()
        try:
            await expect_503(ann, "/login?user=mallory")
        finally:
            private_redis.resume()
        assert ann.jar == {"session": first}
        assert (await ann.get("/read")).json() == {"user": "ann"}

        if warm_pool:
            await asyncio.gather(ann.get("/read"), ann.get("/read"))
        # Paused between load and commit: the new key times out, and the old one is
        # never retired. The browser keeps the old cookie.
        ann_stalling = Browser(stalling, jar=ann.jar, seen=seen)
        try:
            await expect_503(ann_stalling, "/login?user=mallory")
        finally:
            private_redis.resume()  # Redis now runs whatever was left in its sockets
        assert ann.jar == {"session": first}

        # The old cookie: the old session (live, or its read-only grace alias), or
        # nothing once the grace is over; never the half-made login, never a new cookie.
        def old_or_empty(response: Response) -> Any:
            assert response.status == 200
            assert response.json() in ({"user": "ann"}, {})
            assert all(first in value or "Max-Age=0" in value for value in response.set_cookies)
            return response.json()

        old_or_empty(await ann.get("/read"))
        await asyncio.sleep(grace + 0.5)
        settled = old_or_empty(await ann.get("/read"))
        assert settled == {"user": "ann"}  # never retired: the old session goes on
        assert old_or_empty(await ann.get("/read")) == settled  # and it stays that way
        assert ann.jar == {"session": first}

        # Logging in again with the cookie the browser holds works.
        response = await ann.get("/login?user=ann")
        assert response.status == 200
        assert ann.jar["session"] != first
        assert (await ann.get("/read")).json() == {"user": "ann"}
        assert not any(b"mallory" in r.body for r in seen.responses if r.status == 200)
    finally:
        await backend.aclose()
    seen.check(logs)


# -- 6. sentinel failover ---------------------------------------------------------------------


async def test_sentinel_failover_keeps_replicated_sessions(
    redis_sentinel: Any, logs: pytest.LogCaptureFixture
) -> None:
    sentinel = Sentinel(redis_sentinel.sentinels, socket_timeout=1)
    client = sentinel.master_for(redis_sentinel.service_name, socket_timeout=1)
    backend = RedisBackend(client, operation_timeout=OPERATION_TIMEOUT)
    seen = Seen()
    try:
        app = SessionMiddleware(session_app, backend=backend)
        ann = Browser(app, seen=seen)
        assert (await ann.get("/login?user=ann")).status == 200
        assert (await ann.get("/set?cart=3")).status == 200
        # On the replica before the crash: WAIT counts the replicas that acknowledged
        # the writes of its own connection (none here), so it proves nothing; the
        # replica's acknowledged offset reaching the master's does.
        master = Redis(host=redis_sentinel.master.host, port=redis_sentinel.master.port)
        try:
            deadline = time.monotonic() + 5
            while True:
                info = await master.info("replication")
                if info["slave0"]["offset"] >= info["master_repl_offset"]:
                    break
                assert time.monotonic() < deadline, "the replica did not catch up in 5 s"
                await asyncio.sleep(0.02)
        finally:
            await master.aclose()

        redis_sentinel.master.kill()
        bob = None
        deadline = time.monotonic() + 15
        for _ in range(100):
            if time.monotonic() > deadline:
                break
            candidate = Browser(app, seen=seen)
            response, elapsed = await timed(candidate.get("/login?user=bob"))
            assert elapsed < BOUND
            if response.status == 200:
                bob = candidate
                break
            await asyncio.sleep(0.2)
        assert bob is not None, "no login succeeded within 15 s of the master's crash"
        assert redis_sentinel.master_address()[1] == redis_sentinel.replica.port

        assert (await bob.get("/read")).json() == {"user": "bob"}
        assert (await ann.get("/read")).json() == {"user": "ann", "cart": "3"}
        assert (await ann.get("/set?cart=4")).status == 200
        assert (await ann.get("/read")).json() == {"user": "ann", "cart": "4"}
    finally:
        await backend.aclose()
        await client.aclose()
        for sentinel_client in sentinel.sentinels:
            await sentinel_client.aclose()
    seen.check(logs)


# -- 7. fail-open under a stalled Redis -------------------------------------------------------


async def test_fail_open_under_a_paused_redis_answers_quickly_without_a_cookie(
    private_redis: RedisServer, logs: pytest.LogCaptureFixture
) -> None:
    backend = backend_for(private_redis.url)
    seen = Seen()
    try:
        app = SessionMiddleware(session_app, backend=backend, fail_open=True)
        ann = Browser(app, seen=seen)
        await ann.get("/set?secret=ann")
        cookie = ann.jar["session"]

        private_redis.pause()
        try:
            for path, body in (
                ("/read", {}),
                ("/set?k=v", {"k": "v"}),
                ("/login?user=x", {"user": "x"}),
            ):
                response, elapsed = await timed(ann.get(path))
                assert (response.status, response.json(), response.set_cookies) == (200, body, [])
                assert elapsed < BOUND
            response, elapsed = await timed(Browser(app, seen=seen).get("/set?k=v"))
            assert (response.status, response.set_cookies) == (200, [])
            assert elapsed < BOUND
            results = await asyncio.gather(*(timed(ann.get("/read")) for _ in range(10)))
            for response, elapsed in results:
                assert (response.status, response.json(), response.set_cookies) == (200, {}, [])
                assert elapsed < BOUND
        finally:
            private_redis.resume()

        assert ann.jar == {"session": cookie}
        assert (await ann.get("/read")).json() == {"secret": "ann"}  # untouched meanwhile
    finally:
        await backend.aclose()
    seen.check(logs)
