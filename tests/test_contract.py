"""The backend contract: every backend runs through the same cases.

Later backends (Redis, Redis Cluster, hybrid) join by adding a parameter to the
``backend`` fixture. ``stateful`` backends keep server-side state, so deleting or
rotating a session makes its old token stop working; a stateless one (the JWT
backend without a deny list) cannot revoke a token before it expires. A
``snapshot`` backend answers a load from the token's own copy of the data (the
hybrid backend's access token), which another request's write reaches only at the
token's next refresh.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from asgi_sessions import (
    Delta,
    HybridBackend,
    InvalidToken,
    SessionBackend,
    SessionGone,
    SessionRecord,
)
from asgi_sessions.backends.base import is_grace_alias
from tests.backends import backend_factory

pytestmark = pytest.mark.anyio

NOW = 1_700_000_000.0
SECRET = "contract-test-secret-of-at-least-32-bytes"


@dataclass
class Subject:
    backend: SessionBackend
    stateful: bool
    # Redis expires keys on its own clock: those cases wait in real time.
    real_time: bool = False
    snapshot: bool = False
    # The clock of a memory store (what its exists() and the hybrid's checks read):
    # the cases' own time, which later() moves.
    now: float = NOW

    async def later(self, seconds: float) -> float:
        """The ``now`` to pass once ``seconds`` have gone by for this backend."""
        if self.real_time:
            await asyncio.sleep(seconds)
        self.now = max(self.now, NOW + seconds)
        return NOW + seconds


@pytest.fixture(params=["memory", "jwt", "redis", "cluster", "hybrid-memory", "hybrid-redis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "jwt":
        from asgi_sessions import JWTBackend

        backend: Any = JWTBackend(SECRET)
        yield Subject(backend, stateful=False)
        await backend.aclose()
        return
    async with backend_factory(request.param, request) as make:
        in_memory = request.param.endswith("memory")
        clock: list[Subject] = []
        settings: dict[str, Any] = {"rotation_grace": 1}
        if in_memory:
            settings["clock"] = lambda: clock[0].now
        backend = make(**settings)
        subject = Subject(
            backend,
            stateful=True,
            real_time=not in_memory,
            snapshot=isinstance(backend, HybridBackend),
        )
        clock.append(subject)
        yield subject


def new_record(**fields: Any) -> SessionRecord:
    base: dict[str, Any] = {
        "session_id": "",
        "data": {},
        "created_at": NOW,
        "last_seen": NOW,
        "rotated_at": NOW,
    }
    base.update(fields)
    return SessionRecord(**base)


async def create(
    backend: SessionBackend, data: dict[str, Any], **fields: Any
) -> tuple[str, SessionRecord]:
    record = new_record(data=dict(data), **fields)
    token = await backend.save(
        None, record, Delta(data, replace=True), now=NOW, ttl=600, rotate=False
    )
    return token, record


async def load_twice(backend: SessionBackend, token: str) -> tuple[SessionRecord, SessionRecord]:
    """Two requests' loads of ``token`` (both find the session)."""
    one = await backend.load(token, now=NOW)
    two = await backend.load(token, now=NOW)
    assert one is not None
    assert two is not None
    return one, two


async def rotate(backend: SessionBackend, token: str, now: float = NOW) -> str:
    """A request that loads ``token`` and rotates it, changing nothing else."""
    loaded = await backend.load(token, now=now)
    assert loaded is not None
    return await backend.save(token, loaded, Delta({}), now=now, ttl=600, rotate=True)


async def update(
    backend: SessionBackend,
    token: str,
    loaded: SessionRecord,
    updates: dict[str, Any],
    now: float = NOW,
) -> str:
    loaded.data = {**loaded.data, **updates}
    return await backend.save(token, loaded, Delta(updates), now=now, ttl=600, rotate=False)


async def test_save_then_load_round_trips_data_and_metadata(subject: Subject) -> None:
    backend = subject.backend
    data = {"user": "ann", "n": 3, "tags": ["a", "b"], "nested": {"x": None, "f": 1.5}}
    token, _ = await create(backend, data, user_id="u1", idle_timeout=120, browser_session=True)
    assert isinstance(token, str)
    assert token
    loaded = await backend.load(token, now=NOW + 1)
    assert loaded is not None
    assert loaded.data == data
    assert loaded.session_id
    assert token not in loaded.session_id  # the public ID is never the token
    assert (loaded.created_at, loaded.last_seen) == (NOW, NOW)
    assert (loaded.user_id, loaded.idle_timeout, loaded.browser_session) == ("u1", 120, True)
    assert not loaded.read_only


async def test_two_new_sessions_never_share_a_token_or_id(subject: Subject) -> None:
    tokens = set()
    ids = set()
    for _ in range(50):
        token, _ = await create(subject.backend, {"k": 1})
        loaded = await subject.backend.load(token, now=NOW)
        assert loaded is not None
        tokens.add(token)
        ids.add(loaded.session_id)
    assert len(tokens) == len(ids) == 50


@pytest.mark.parametrize(
    "token", ["", "x", "A" * 42, "A" * 44, "A" * 42 + "!", "a.b", "é" * 43, "A" * 5000]
)
async def test_malformed_tokens_raise_invalid_token(subject: Subject, token: str) -> None:
    with pytest.raises(InvalidToken):
        await subject.backend.load(token, now=NOW)


async def test_loaded_data_is_independent_of_the_store(subject: Subject) -> None:
    token, _ = await create(subject.backend, {"cart": [1]})
    first = await subject.backend.load(token, now=NOW)
    assert first is not None
    first.data["cart"].append(2)
    second = await subject.backend.load(token, now=NOW)
    assert second is not None
    assert second.data == {"cart": [1]}


async def test_update_keeps_unchanged_keys(subject: Subject) -> None:
    backend = subject.backend
    token, _ = await create(backend, {"a": 1, "b": 2})
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    token = await update(backend, token, loaded, {"b": 3})
    again = await backend.load(token, now=NOW)
    assert again is not None
    assert again.data == {"a": 1, "b": 3}


async def test_concurrent_updates_of_different_keys_both_land(subject: Subject) -> None:
    if not subject.stateful or subject.snapshot:
        pytest.skip("the token carries one writer's copy of the data")
    backend = subject.backend
    token, _ = await create(backend, {"seed": 1})
    one, two = await load_twice(backend, token)
    await update(backend, token, one, {"a": 1})
    await update(backend, token, two, {"b": 2})
    final = await backend.load(token, now=NOW)
    assert final is not None
    assert final.data == {"seed": 1, "a": 1, "b": 2}


@pytest.mark.parametrize("grace", [1, 0])
async def test_a_rotation_keeps_what_a_parallel_save_stored_after_its_load(
    subject: Subject, grace: int
) -> None:
    """A login loads the session, a parallel request of the same browser saves its own
    change (and is answered), then the login rotates: both changes are in the new
    session, as for two delta saves."""
    if not subject.stateful:
        pytest.skip("a client-side token carries one writer's copy of the data")
    backend = subject.backend
    if isinstance(backend, HybridBackend):
        if grace == 0:
            pytest.skip("a hybrid backend refuses a store without a rotation grace")
        backend.store.rotation_grace = grace
    else:
        backend.rotation_grace = grace  # type: ignore[attr-defined]
    token, _ = await create(backend, {"seed": 1, "gone": 1, "kept": 1})
    login, parallel = await load_twice(backend, token)
    parallel.data = {"seed": 1, "kept": 1, "coupon": "SAVE10"}
    await backend.save(
        token,
        parallel,
        Delta({"coupon": "SAVE10"}, frozenset({"gone"})),
        now=NOW,
        ttl=600,
        rotate=False,
    )
    login.data = {"seed": 1, "gone": 1, "user": "ann"}
    login.user_id = "ann"
    new = await backend.save(
        token, login, Delta({"user": "ann"}, frozenset({"kept"})), now=NOW, ttl=600, rotate=True
    )
    rotated = await backend.load(new, now=NOW)
    assert rotated is not None
    assert rotated.data == {"seed": 1, "coupon": "SAVE10", "user": "ann"}
    assert rotated.user_id == "ann"
    # The record the rotation returned describes what is stored: a later commit of it
    # (a WebSocket's) keeps the parallel change too.
    login.data = {**login.data, "late": 1}
    new = await backend.save(new, login, Delta({"late": 1}), now=NOW, ttl=600, rotate=False)
    final = await backend.load(new, now=NOW)
    assert final is not None
    assert final.data == {"seed": 1, "coupon": "SAVE10", "user": "ann", "late": 1}


async def test_the_last_save_writes_the_metadata_it_was_given(subject: Subject) -> None:
    """Metadata (times, expiry overrides, user) is written as the saving request has it,
    even when another request changed it after this one loaded: last writer wins, and
    the stored expiry is the one that metadata gives."""
    if not subject.stateful:
        pytest.skip("a client-side token carries one writer's copy of the data")
    backend = subject.backend
    token, _ = await create(backend, {"seed": 1})
    short, bystander = await load_twice(backend, token)
    short.idle_timeout = 10
    await backend.save(token, short, Delta({}), now=NOW, ttl=10, rotate=False)
    # The token that save returns (a hybrid issues a new access token).
    token = await update(backend, token, bystander, {"cart": 1})
    final = await backend.load(token, now=NOW)
    assert final is not None
    assert final.idle_timeout is None
    assert final.data == {"seed": 1, "cart": 1}


async def test_removed_keys_are_removed(subject: Subject) -> None:
    backend = subject.backend
    token, _ = await create(backend, {"a": 1, "b": 2})
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    loaded.data = {"a": 1}
    token = await backend.save(
        token, loaded, Delta({}, frozenset({"b"})), now=NOW, ttl=600, rotate=False
    )
    final = await backend.load(token, now=NOW)
    assert final is not None
    assert final.data == {"a": 1}


async def test_a_session_of_thousands_of_keys_saves_rotates_and_loads_back(
    subject: Subject,
) -> None:
    if not subject.stateful or subject.snapshot:
        pytest.skip("the data travels in the cookie, which cannot carry thousands of keys")
    backend = subject.backend
    # More keys than one Lua unpack() takes (about 8000 values: 4000 field pairs).
    data = {f"k{i}": 1 for i in range(5000)}
    token, _ = await create(backend, data)
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    assert loaded.data == data
    token = await rotate(backend, token)
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    assert loaded.data == data
    # A delta that sets them all, merged over a parallel request's save; then one
    # that removes them all but two.
    one, two = await load_twice(backend, token)
    await update(backend, token, one, {"other": 3})
    changed = dict.fromkeys(data, 2)
    token = await update(backend, token, two, changed)
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    assert loaded.data == {**changed, "other": 3}
    removed = frozenset(data) - {"k0"}
    loaded.data = {"k0": 2, "other": 3}
    token = await backend.save(token, loaded, Delta({}, removed), now=NOW, ttl=600, rotate=False)
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    assert loaded.data == {"k0": 2, "other": 3}
    # And a replacement of the data by thousands of keys again.
    loaded.data = dict(data)
    token = await backend.save(
        token, loaded, Delta(data, replace=True), now=NOW, ttl=600, rotate=False
    )
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    assert loaded.data == data


async def test_record_lives_for_its_ttl(subject: Subject) -> None:
    backend = subject.backend
    ttl = 2 if subject.real_time else 600
    record = new_record(data={"k": 1})
    token = await backend.save(
        None, record, Delta({"k": 1}, replace=True), now=NOW, ttl=ttl, rotate=False
    )
    assert await backend.load(token, now=NOW + ttl - 1) is not None
    # The JWT backend grants its leeway past exp; everyone is gone well after.
    later = await subject.later(ttl + 0.2) if subject.real_time else NOW + ttl + 3600
    assert await backend.load(token, now=later) is None


async def test_touch_extends_without_rewriting(subject: Subject) -> None:
    backend = subject.backend
    token, _ = await create(backend, {"k": 1})
    loaded = await backend.load(token, now=NOW + 500)
    assert loaded is not None
    loaded.last_seen = NOW + 500
    touched = await backend.touch(token, loaded, now=NOW + 500, ttl=600)
    token = touched or token
    later = await backend.load(token, now=NOW + 1000)
    assert later is not None
    assert later.last_seen == NOW + 500
    assert later.data == {"k": 1}


async def test_rotate_issues_a_new_token_with_the_same_data(subject: Subject) -> None:
    backend = subject.backend
    old, _ = await create(backend, {"k": 1})
    loaded = await backend.load(old, now=NOW)
    assert loaded is not None
    old_id = loaded.session_id
    new = await backend.save(old, loaded, Delta({}), now=NOW, ttl=600, rotate=True)
    assert new != old
    rotated = await backend.load(new, now=NOW + 1)
    assert rotated is not None
    assert rotated.data == {"k": 1}
    assert rotated.session_id != old_id
    if subject.stateful:
        alias = await backend.load(old, now=NOW + 0.5)
        assert alias is not None
        assert alias.read_only
        assert await backend.load(old, now=await subject.later(1.2)) is None


async def test_a_grace_alias_can_never_be_written(subject: Subject) -> None:
    if not subject.stateful:
        pytest.skip("stateless tokens have no alias")
    backend = subject.backend
    old, _ = await create(backend, {"k": 1})
    loaded = await backend.load(old, now=NOW)
    assert loaded is not None
    await backend.save(old, loaded, Delta({}), now=NOW, ttl=600, rotate=True)
    alias = await backend.load(old, now=NOW + 0.5)
    assert alias is not None
    with pytest.raises(SessionGone):
        await update(backend, old, alias, {"fork": 1}, now=NOW + 0.5)


async def test_delete_ends_a_stateful_session_and_never_raises(subject: Subject) -> None:
    backend = subject.backend
    token, _ = await create(backend, {"k": 1})
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    await backend.delete(token, loaded)
    await backend.delete(token, loaded)  # twice: no error
    if subject.stateful:
        assert await backend.load(token, now=NOW) is None


async def test_a_save_never_re_creates_a_deleted_session(subject: Subject) -> None:
    if not subject.stateful:
        pytest.skip("nothing server-side to re-create")
    backend = subject.backend
    token, _ = await create(backend, {"k": 1})
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    await backend.delete(token, loaded)
    with pytest.raises(SessionGone):
        await update(backend, token, loaded, {"late": 1})
    with pytest.raises(SessionGone):
        await backend.touch(token, loaded, now=NOW, ttl=600)
    assert await backend.load(token, now=NOW) is None


async def test_is_grace_alias_tells_a_rotated_token_from_a_live_or_ended_one(
    subject: Subject,
) -> None:
    """What the middleware asks when a commit finds the session gone: rotated by a
    parallel request (the browser keeps its new cookie) or ended (the cookie goes)."""
    backend = subject.backend
    old, _ = await create(backend, {"k": 1})
    assert not await is_grace_alias(backend, old, now=NOW)  # live
    for malformed in ("", "x", "a.b", "A" * 5000):
        assert not await is_grace_alias(backend, malformed, now=NOW)
    new = await rotate(backend, old, now=NOW)
    assert not await is_grace_alias(backend, new, now=NOW + 0.5)
    if not subject.stateful:
        assert not await is_grace_alias(backend, old, now=NOW + 0.5)
        return
    assert await is_grace_alias(backend, old, now=NOW + 0.5)
    after = await subject.later(1.2)
    if not subject.snapshot:
        # The plain stores forget the alias with its grace. The hybrid's spent-token
        # ledger still knows the token was rotated into a live session, so a commit
        # slower than the grace leaves the browser's new pair alone (test_hybrid.py).
        assert not await is_grace_alias(backend, old, now=after)
    current = await backend.load(new, now=after)
    assert current is not None
    await backend.delete(new, current)
    assert not await is_grace_alias(backend, old, now=after)  # rotated, then ended
    ended, _ = await create(backend, {"k": 2})
    record = await backend.load(ended, now=NOW)
    assert record is not None
    await backend.delete(ended, record)
    assert not await is_grace_alias(backend, ended, now=NOW)


async def test_delete_on_a_token_two_rotations_old_ends_the_live_session(
    subject: Subject,
) -> None:
    """Logging out on a cookie two rotations old (within the grace) ends the session
    it led to, however many rotations ago."""
    if not subject.stateful:
        pytest.skip("stateless tokens have no alias")
    backend = subject.backend
    first, _ = await create(backend, {"k": 1})
    token = first
    for _ in range(2):
        token = await rotate(backend, token, now=NOW)
    alias = await backend.load(first, now=NOW)
    assert alias is not None
    await backend.delete(first, alias)
    assert await backend.load(token, now=NOW) is None


@pytest.mark.parametrize("rotations", [1, 2])
async def test_delete_of_a_rotated_session_ends_its_grace_aliases(
    subject: Subject, rotations: int
) -> None:
    """Logging out within the grace ends the IDs the session was rotated from too:
    an alias exists only so the browser's parallel requests survive the rotation,
    and once the session it leads to has ended it must not serve that session."""
    if not subject.stateful:
        pytest.skip("stateless tokens have no alias")
    backend = subject.backend
    other, _ = await create(backend, {"other": 1})
    other_new = await rotate(backend, other, now=NOW)
    tokens = [(await create(backend, {"user": "ann"}))[0]]
    for _ in range(rotations):
        loaded = await backend.load(tokens[-1], now=NOW)
        assert loaded is not None
        tokens.append(
            await backend.save(tokens[-1], loaded, Delta({}), now=NOW, ttl=600, rotate=True)
        )
    for old in tokens[:-1]:
        alias = await backend.load(old, now=NOW + 0.5)
        assert alias is not None
        assert alias.read_only
    current = await backend.load(tokens[-1], now=NOW + 0.5)
    assert current is not None
    await backend.delete(tokens[-1], current)
    for token in tokens:
        assert await backend.load(token, now=NOW + 0.5) is None
    # Another session's alias and its live session are untouched.
    other_alias = await backend.load(other, now=NOW + 0.5)
    assert other_alias is not None
    assert other_alias.read_only
    assert await backend.load(other_new, now=NOW + 0.5) is not None


async def test_delete_ends_only_aliases_that_still_lead_to_the_session(subject: Subject) -> None:
    """A rotation's back-pointer that no longer leads anywhere (its alias ended, or
    expired and the session rotated again) ends nothing else: a parallel rotation
    that lost the race left no trace, and another session's alias survives."""
    if not subject.stateful:
        pytest.skip("stateless tokens have no alias")
    backend = subject.backend
    first, _ = await create(backend, {"k": 1})
    first_a, first_b = await load_twice(backend, first)
    second = await backend.save(first, first_a, Delta({}), now=NOW, ttl=600, rotate=True)
    with pytest.raises(SessionGone):
        # A parallel request's rotation of the same session loses: no new session.
        await backend.save(first, first_b, Delta({}), now=NOW, ttl=600, rotate=True)
    bystander, _ = await create(backend, {"b": 1})
    bystander_loaded = await backend.load(bystander, now=NOW)
    assert bystander_loaded is not None
    bystander_new = await backend.save(
        bystander, bystander_loaded, Delta({}), now=NOW, ttl=600, rotate=True
    )
    # The first alias goes with the grace (not loaded here: on the hybrid backend a
    # spent refresh token after its grace is a reuse, which revokes the family); the
    # session rotates again after it.
    now = await subject.later(1.2)
    third = await rotate(backend, second, now=now)
    current = await backend.load(third, now=now)
    assert current is not None
    await backend.delete(third, current)
    assert await backend.load(second, now=now) is None
    assert await backend.load(third, now=now) is None
    assert await backend.load(bystander_new, now=now) is not None


@pytest.mark.parametrize("which", [0, 1])
async def test_delete_on_any_alias_of_a_chain_ends_the_whole_chain(
    subject: Subject, which: int
) -> None:
    """Two rotations in the grace (A -> B -> C): logging out on A or B ends C, and
    every alias that leads to it, not only those after the cookie used."""
    if not subject.stateful:
        pytest.skip("stateless tokens have no alias")
    backend = subject.backend
    tokens = [(await create(backend, {"user": "ann"}))[0]]
    for _ in range(2):
        loaded = await backend.load(tokens[-1], now=NOW)
        assert loaded is not None
        tokens.append(
            await backend.save(tokens[-1], loaded, Delta({}), now=NOW, ttl=600, rotate=True)
        )
    alias = await backend.load(tokens[which], now=NOW + 0.5)
    assert alias is not None
    await backend.delete(tokens[which], alias)
    for token in tokens:
        assert await backend.load(token, now=NOW + 0.5) is None
