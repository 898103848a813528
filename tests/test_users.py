"""Per-user sessions (DESIGN §3): bind, list with metadata, revoke one, revoke all,
revoke all but the current one, a per-user cap, and an index that cleans itself.

Runs against every server-side backend through the real middleware.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from asgi_sessions import ExpiryPolicy, HybridBackend, SessionMiddleware
from asgi_sessions.backends.base import UserSessions
from tests.asgi import Client, open_socket, session_app
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

Factory = Callable[..., Any]


@pytest.fixture
def make_backend(make_server_backend: Factory, clock: FakeClock) -> Factory:
    def factory(**settings: Any) -> Any:
        return make_server_backend(clock=clock, **settings)

    factory.real_time = make_server_backend.real_time  # type: ignore[attr-defined]
    return factory


def device(backend: Any, clock: FakeClock, agent: str) -> Client:
    client = Client(SessionMiddleware(session_app, backend=backend, clock=clock))
    client.user_agent = agent.encode()
    return client


async def login(backend: Any, clock: FakeClock, agent: str, user: str = "ann") -> Client:
    clock.advance(1)  # distinct creation times: lists are ordered by them
    client = device(backend, clock, agent)
    await client.get("/set?cart=1")
    await client.get(f"/bind?user={user}")
    return client


async def test_bind_user_rotates_and_lists_the_session_with_metadata(
    make_backend: Factory, clock: FakeClock
) -> None:
    backend = make_backend()
    assert isinstance(backend, UserSessions)
    client = device(backend, clock, "Firefox/130")
    await client.get("/set?cart=1")
    anonymous = client.jar["session"]
    clock.advance(10)
    await client.get("/bind?user=ann")
    assert client.jar["session"] != anonymous  # binding a user is a privilege change
    (info,) = await backend.list_sessions("ann")
    assert info.user_id == "ann"
    assert info.created_at == clock.now - 10
    assert info.last_seen == clock.now
    assert info.ip == "127.0.0.1"
    assert info.user_agent == "Firefox/130"
    assert info.expires_at is not None
    assert info.expires_at > clock.now
    assert not info.current
    assert client.jar["session"] not in repr(info)
    (marked,) = await backend.list_sessions("ann", current=info.session_id)
    assert marked.current


async def test_revoke_one_device(make_backend: Factory, clock: FakeClock) -> None:
    backend = make_backend()
    phone = await login(backend, clock, "phone")
    laptop = await login(backend, clock, "laptop")
    sessions = await backend.list_sessions("ann")
    assert [s.user_agent for s in sessions] == ["phone", "laptop"]
    assert await backend.revoke(sessions[0].session_id)
    assert not await backend.revoke(sessions[0].session_id)
    assert (await phone.get("/read")).json() == {}
    assert (await laptop.get("/read")).json() == {"cart": "1", "user": "ann"}
    assert [s.user_agent for s in await backend.list_sessions("ann")] == ["laptop"]


async def test_revoke_all_and_revoke_all_but_current(
    make_backend: Factory, clock: FakeClock
) -> None:
    backend = make_backend()
    devices = [await login(backend, clock, f"device-{i}") for i in range(4)]
    other = await login(backend, clock, "bob's", user="bob")
    sessions = await backend.list_sessions("ann")
    keep = sessions[2].session_id
    assert await backend.revoke_user("ann", keep=keep) == 3
    remaining = await backend.list_sessions("ann", current=keep)
    assert [s.session_id for s in remaining] == [keep]
    assert remaining[0].current
    for index, client in enumerate(devices):
        expected = {"cart": "1", "user": "ann"} if index == 2 else {}
        assert (await client.get("/read")).json() == expected
    assert await backend.revoke_user("ann") == 1
    assert await backend.list_sessions("ann") == []
    assert (await other.get("/read")).json() == {"cart": "1", "user": "bob"}


async def test_revoke_all_ends_every_users_sessions_and_nothing_else_of_the_app(
    make_backend: Factory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """ASVS 7.4.5: an administrator ends everyone's sessions: bound or anonymous,
    and grace aliases; new logins afterwards work."""
    backend = make_backend(rotation_grace=30)
    ann = await login(backend, clock, "ann's")
    bob = await login(backend, clock, "bob's", user="bob")
    before = bob.jar["session"]
    await bob.get("/rotate")  # leaves a grace alias
    anonymous = device(backend, clock, "anonymous")
    await anonymous.get("/set?cart=2")
    other = make_backend()  # another app's backend (its own prefix or store)
    bystander = await login(other, clock, "elsewhere", user="ann")
    assert await backend.revoke_all() == 3
    for client in (ann, bob, anonymous):
        assert (await client.get("/read")).json() == {}
    assert (await bob.get("/read", cookie=f"session={before}".encode())).json() == {}
    assert await backend.list_sessions("ann") == []
    assert await backend.list_sessions("bob") == []
    assert (await bystander.get("/read")).json() == {"cart": "1", "user": "ann"}
    again = await login(backend, clock, "ann's again")
    assert (await again.get("/read")).json() == {"cart": "1", "user": "ann"}
    assert len(await backend.list_sessions("ann")) == 1
    assert await backend.revoke_all() == 1
    assert all(client.jar.get("session", "") not in caplog.text for client in (ann, bob))


async def test_revoke_all_also_ends_grace_aliases(make_backend: Factory, clock: FakeClock) -> None:
    backend = make_backend(rotation_grace=30)
    client = await login(backend, clock, "phone")
    before = client.jar["session"]
    await client.get("/rotate")
    assert (await client.get("/read", cookie=f"session={before}".encode())).json() != {}
    await backend.revoke_user("ann")
    assert (await client.get("/read", cookie=f"session={before}".encode())).json() == {}
    assert (await client.get("/read")).json() == {}


async def test_revoke_user_ends_the_grace_alias_of_the_anonymous_session_before_login(
    make_backend: Factory, clock: FakeClock
) -> None:
    """'Sign out everywhere' right after a login: the pre-login ID's alias belongs to
    no user, so it is not in the user's index, but it leads to a revoked session and
    ends with it. On the memory store the old cookie still read the pre-login data
    for the grace."""
    backend = make_backend(rotation_grace=30)
    client = device(backend, clock, "phone")
    await client.get("/set?cart=1")
    anonymous = f"session={client.jar['session']}".encode()
    await client.get("/bind?user=ann")
    assert (await client.get("/read", cookie=anonymous)).json() == {"cart": "1"}
    assert await backend.revoke_user("ann") == 1
    assert (await client.get("/read", cookie=anonymous)).json() == {}
    assert (await client.get("/read")).json() == {}


@pytest.mark.parametrize("ending", ["revoke", "revoke_user"])
async def test_a_device_rotating_while_a_revoke_awaits_its_event_hook_is_signed_out(
    make_backend: Factory, clock: FakeClock, ending: str
) -> None:
    """An async event hook (an audit sink) runs for the first 'revoked' while a
    device of the user rotates its session: that device is signed out all the same.
    The memory store awaited the hook before it ended the session (revoke) or
    between the sessions it ended (revoke_user), and the rotation meanwhile turned
    the ID it then ended into a grace alias, leaving the new session live."""
    paused, resume = asyncio.Event(), asyncio.Event()

    async def audit(event: Any) -> None:
        if event.name == "revoked":
            paused.set()
            await resume.wait()

    backend = make_backend()

    async def signed_in(agent: str) -> Client:
        clock.advance(1)  # distinct creation times: the laptop is revoked second
        client = Client(
            SessionMiddleware(session_app, backend=backend, clock=clock, on_event=audit)
        )
        client.user_agent = agent.encode()
        await client.get("/set?cart=1")
        await client.get("/bind?user=ann")
        return client

    phone = await signed_in("phone")
    laptop = await signed_in("laptop")
    sessions = await backend.list_sessions("ann")
    async with asyncio.timeout(10):
        if ending == "revoke":
            revoking = asyncio.ensure_future(backend.revoke(sessions[1].session_id))
        else:
            revoking = asyncio.ensure_future(backend.revoke_user("ann"))
        await paused.wait()
        await laptop.get("/rotate")
        resume.set()
        assert await revoking in (True, 2)
    assert (await laptop.get("/read")).json() == {}
    expected = {"cart": "1", "user": "ann"} if ending == "revoke" else {}
    assert (await phone.get("/read")).json() == expected
    assert len(await backend.list_sessions("ann")) == (1 if ending == "revoke" else 0)


async def test_max_sessions_per_user_evicts_the_oldest(
    make_backend: Factory, clock: FakeClock
) -> None:
    backend = make_backend(max_sessions_per_user=2)
    first = await login(backend, clock, "first")
    clock.advance(1)
    second = await login(backend, clock, "second")
    clock.advance(1)
    third = await login(backend, clock, "third")
    assert [s.user_agent for s in await backend.list_sessions("ann")] == ["second", "third"]
    assert (await first.get("/read")).json() == {}
    assert (await second.get("/read")).json() != {}
    assert (await third.get("/read")).json() != {}


async def test_index_prunes_expired_sessions(make_backend: Factory, clock: FakeClock) -> None:
    backend = make_backend()
    old = device(backend, clock, "old")
    old.app.policy = ExpiryPolicy(idle_timeout=1, refresh_after=0)
    await old.get("/bind?user=ann")
    # The store expires the record on its own clock (Redis: real time).
    clock.advance(2)
    if make_backend.real_time:  # type: ignore[attr-defined]
        await asyncio.sleep(1.2)
    await login(backend, clock, "new")
    assert [s.user_agent for s in await backend.list_sessions("ann")] == ["new"]


async def test_logout_removes_the_session_from_the_list(
    make_backend: Factory, clock: FakeClock
) -> None:
    backend = make_backend()
    client = await login(backend, clock, "phone")
    await client.get("/invalidate")
    assert await backend.list_sessions("ann") == []


async def test_refresh_keeps_last_seen_and_agent_current_without_a_write(
    make_backend: Factory, clock: FakeClock
) -> None:
    backend = make_backend()
    client = await login(backend, clock, "phone")
    clock.advance(2 * 3600)  # past refresh_after (idle / 10)
    client.user_agent = b"phone, updated"
    response = await client.get("/read")
    assert response.set_cookies  # the refreshed cookie's Max-Age slides
    (info,) = await backend.list_sessions("ann")
    assert info.last_seen == clock.now
    assert info.user_agent == "phone, updated"


async def test_max_sessions_per_user_never_evicts_the_login_in_progress(
    make_backend: Factory, clock: FakeClock
) -> None:
    """A login keeps the creation time of the anonymous session it rotates: a laptop
    browsed anonymously before the phone logged in is still the one logging in."""
    backend = make_backend(max_sessions_per_user=1)
    laptop = device(backend, clock, "laptop")
    await laptop.get("/set?cart=1")  # anonymous browsing, before any login
    phone = await login(backend, clock, "phone")
    clock.advance(1)
    response = await laptop.get("/bind?user=ann")
    assert response.set_cookies
    assert (await laptop.get("/read")).json() == {"cart": "1", "user": "ann"}
    assert [s.user_agent for s in await backend.list_sessions("ann")] == ["laptop"]
    assert (await phone.get("/read")).json() == {}


async def test_max_sessions_per_user_evicts_the_least_recently_logged_in(
    make_backend: Factory, clock: FakeClock
) -> None:
    """The oldest session is the one that logged in longest ago, not the one whose
    anonymous browsing started first."""
    backend = make_backend(max_sessions_per_user=2)
    laptop = device(backend, clock, "laptop")
    await laptop.get("/set?cart=1")  # created first, logs in second
    phone = await login(backend, clock, "phone")
    clock.advance(1)
    await laptop.get("/bind?user=ann")
    tablet = await login(backend, clock, "tablet")
    assert (await phone.get("/read")).json() == {}
    assert (await laptop.get("/read")).json() == {"cart": "1", "user": "ann"}
    assert (await tablet.get("/read")).json() == {"cart": "1", "user": "ann"}
    listed = [s.user_agent for s in await backend.list_sessions("ann")]
    assert listed == ["laptop", "tablet"]  # the list stays in creation order


async def test_an_evicted_session_takes_its_grace_aliases_with_it(
    make_backend: Factory, clock: FakeClock
) -> None:
    backend = make_backend(max_sessions_per_user=1, rotation_grace=30)
    if isinstance(backend, HybridBackend):
        pytest.skip("an old hybrid cookie's access token is stateless until it expires")
    phone = await login(backend, clock, "phone")
    before = phone.jar["session"]
    await phone.get("/rotate")
    assert (await phone.get("/read", cookie=f"session={before}".encode())).json() != {}
    await login(backend, clock, "laptop")
    assert (await phone.get("/read", cookie=f"session={before}".encode())).json() == {}
    assert (await phone.get("/read")).json() == {}


async def test_revoke_ends_grace_aliases_two_rotations_old(
    make_backend: Factory, clock: FakeClock
) -> None:
    backend = make_backend(rotation_grace=30)
    if isinstance(backend, HybridBackend):
        pytest.skip("an old hybrid cookie's access token is stateless until it expires")
    phone = await login(backend, clock, "phone")
    first = phone.jar["session"]
    await phone.get("/rotate")
    second = phone.jar["session"]
    await phone.get("/rotate")
    (info,) = await backend.list_sessions("ann")
    assert await backend.revoke(info.session_id)
    for old in (first, second):
        assert (await phone.get("/read", cookie=f"session={old}".encode())).json() == {}
    assert (await phone.get("/read")).json() == {}


async def test_a_session_whose_deadline_moves_later_stays_listed_and_revocable(
    make_backend: Factory, clock: FakeClock
) -> None:
    """Bound under a fixed expiry, then back to the sliding default: the session
    lives on, so its user's index must keep it past the first deadline."""
    backend = make_backend()
    client = device(backend, clock, "laptop")
    await client.get(f"/expiry?at={clock.now + 1}")
    await client.get("/bind?user=ann")
    await client.get("/expiry?s=3600")
    clock.advance(1.5)
    if make_backend.real_time:  # type: ignore[attr-defined]
        await asyncio.sleep(1.5)  # past the first deadline for Redis too
    assert [s.user_agent for s in await backend.list_sessions("ann")] == ["laptop"]
    assert await backend.revoke_user("ann") == 1
    assert (await client.get("/read")).json() == {}


@pytest.mark.parametrize("request_after", ["/set?cart=2", "/read"], ids=["save", "refresh"])
async def test_raising_absolute_timeout_keeps_bound_sessions_listed(
    make_backend: Factory, clock: FakeClock, request_after: str
) -> None:
    """A deploy that raises absolute_timeout lengthens the life of sessions bound
    before it, from their next save or refresh: "sign out everywhere" must still
    reach them."""
    backend = make_backend()
    client = device(backend, clock, "laptop")
    client.app.policy = ExpiryPolicy(idle_timeout=2, absolute_timeout=2, refresh_after=1)
    await client.get("/bind?user=ann")
    client.app.policy = ExpiryPolicy(refresh_after=0)  # the deploy
    await client.get(request_after)
    clock.advance(2.5)
    if make_backend.real_time:  # type: ignore[attr-defined]
        await asyncio.sleep(2.5)  # past the first deadline for Redis too
    assert [s.user_agent for s in await backend.list_sessions("ann")] == ["laptop"]
    assert await backend.revoke_user("ann") == 1
    assert (await client.get("/read")).json() == {}


async def bind_during_a_socket(
    middleware: SessionMiddleware, cookie: str, user: str | None
) -> None:
    """Open a WebSocket on ``cookie``, accept it, then bind the session to ``user``
    (committed when the socket ends, under the same ID: no cookie can be sent)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        scope["session"].bind_user(user)
        await send({"type": "websocket.close", "code": 1000})

    await open_socket(
        SessionMiddleware(app, backend=middleware.backend, clock=middleware.clock),
        f"session={cookie}".encode(),
        then_disconnect=True,
    )


async def bound_over_a_socket(backend: Any, clock: FakeClock, user: str) -> tuple[Any, Client]:
    """A laptop's anonymous session with a cart, then bound to ``user`` over a socket
    (skips the hybrid backend)."""
    if isinstance(backend, HybridBackend):
        pytest.skip("a hybrid session's socket changes land with its next refresh")
    client = device(backend, clock, "laptop")
    await client.get("/set?cart=1")
    await bind_during_a_socket(client.app, client.jar["session"], user)
    return backend, client


async def test_a_session_bound_during_a_websocket_joins_its_users_index(
    make_backend: Factory, clock: FakeClock
) -> None:
    """As over HTTP, without the rotation (no cookie can be sent on a socket)."""
    backend, client = await bound_over_a_socket(make_backend(), clock, "ann")
    assert [s.user_agent for s in await backend.list_sessions("ann")] == [None]
    await bind_during_a_socket(client.app, client.jar["session"], "bob")
    assert await backend.list_sessions("ann") == []
    assert [s.user_agent for s in await backend.list_sessions("bob")] == [None]
    assert await backend.revoke_user("bob") == 1
    assert (await client.get("/read")).json() == {}


async def test_a_session_unbound_during_a_websocket_leaves_its_users_index(
    make_backend: Factory, clock: FakeClock
) -> None:
    """bind_user(None) over a socket: the session is no longer the user's to list or
    revoke (and still is the browser's)."""
    backend, client = await bound_over_a_socket(make_backend(), clock, "ann")
    assert len(await backend.list_sessions("ann")) == 1
    await bind_during_a_socket(client.app, client.jar["session"], None)
    assert await backend.list_sessions("ann") == []
    assert await backend.revoke_user("ann") == 0
    assert (await client.get("/read")).json() == {"cart": "1"}


async def test_a_bind_during_a_websocket_is_held_to_max_sessions_per_user(
    make_backend: Factory, clock: FakeClock
) -> None:
    """The cap applies to a socket's bind as to a login over HTTP: the least recently
    logged-in other session goes, the bound one stays."""
    backend = make_backend(max_sessions_per_user=1)
    if isinstance(backend, HybridBackend):
        pytest.skip("a hybrid session's socket changes land with its next refresh")
    laptop = await login(backend, clock, "laptop")
    clock.advance(1)
    phone = device(backend, clock, "phone")
    await phone.get("/set?cart=1")
    await bind_during_a_socket(phone.app, phone.jar["session"], "ann")
    assert [s.user_agent for s in await backend.list_sessions("ann")] == [None]
    assert (await laptop.get("/read")).json() == {}
    assert (await phone.get("/read")).json() == {"cart": "1"}


async def test_a_login_that_only_binds_a_user_is_stored(
    make_backend: Factory, clock: FakeClock
) -> None:
    """bind_user() alone (no data key) is a login: the session is stored, the cookie
    sent, the user listed; a bound session whose data empties stays logged in."""
    backend = make_backend()
    client = device(backend, clock, "laptop")
    response = await client.get("/bind_only?user=ann")
    assert "session" in client.jar, response.headers
    assert (await client.get("/user")).json() == {"user_id": "ann"}
    assert [s.user_agent for s in await backend.list_sessions("ann")] == ["laptop"]
    await client.get("/set?cart=1")
    await client.get("/del?cart=")
    assert "session" in client.jar
    assert (await client.get("/user")).json() == {"user_id": "ann"}
    assert len(await backend.list_sessions("ann")) == 1


async def test_clear_logs_out_a_bound_session(make_backend: Factory, clock: FakeClock) -> None:
    """session.clear(), the Starlette logout idiom, empties the data and unbinds the
    user: the record goes and the cookie is expired."""
    backend = make_backend()
    client = await login(backend, clock, "laptop")
    cookie = client.jar["session"]
    await client.get("/clear")
    assert "session" not in client.jar
    assert await backend.list_sessions("ann") == []
    assert (await client.get("/user", cookie=f"session={cookie}".encode())).json() == {
        "user_id": None
    }
