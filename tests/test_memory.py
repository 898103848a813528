"""MemoryBackend specifics: bounded size, hashed keys, corrupt records."""

from __future__ import annotations

import pytest

from asgi_sessions import ConfigurationError, Delta, MemoryBackend, SessionRecord
from asgi_sessions.backends._tokens import token_id
from asgi_sessions.events import Emitter

pytestmark = pytest.mark.anyio
NOW = 1_700_000_000.0


def record() -> SessionRecord:
    return SessionRecord(session_id="", data={}, created_at=NOW, last_seen=NOW, rotated_at=NOW)


async def save(backend: MemoryBackend, now: float = NOW, ttl: int = 600) -> str:
    return await backend.save(
        None, record(), Delta({"k": 1}, replace=True), now=now, ttl=ttl, rotate=False
    )


async def test_size_is_bounded_expired_first_then_least_recently_written() -> None:
    backend = MemoryBackend(max_sessions=10)
    short = [await save(backend, ttl=5) for _ in range(5)]
    long = [await save(backend, ttl=600) for _ in range(5)]
    assert len(backend) == 10
    # Later, the short ones have expired: making room drops them, not live ones.
    newer = [await save(backend, now=NOW + 10) for _ in range(5)]
    for token in long + newer:
        assert await backend.load(token, now=NOW + 10) is not None
    for token in short:
        assert await backend.load(token, now=NOW + 10) is None
    # Full of live sessions: the least recently written go first, never more than max.
    for _ in range(100):
        await save(backend, now=NOW + 10)
        assert len(backend) <= 10
    for token in long:
        assert await backend.load(token, now=NOW + 10) is None


async def test_store_keys_are_hashes_never_tokens() -> None:
    backend = MemoryBackend()
    token = await save(backend)
    assert token not in backend._entries
    assert all(token not in key for key in backend._entries)
    assert len(token) == 43  # 256 bits, URL-safe base64


@pytest.mark.parametrize("refresh", [False, True])
async def test_a_loaded_record_shares_no_state_with_the_store(refresh: bool) -> None:
    """Each load hands out its own ``extra`` (a backend's per-request state, such as
    the hybrid's refresh token): what one request writes there reaches neither the
    store nor another request. Both loads returned the stored entry's own dict."""
    from asgi_sessions.policy import ExpiryPolicy

    backend = MemoryBackend()
    token = await save(backend)
    policy = ExpiryPolicy(refresh_after=0) if refresh else None
    one = await backend.load(token, now=NOW + 1, policy=policy)
    two = await backend.load(token, now=NOW + 1, policy=policy)
    assert one is not None
    assert two is not None
    assert one.refreshed is refresh
    one.extra["state"] = "one's"
    assert two.extra == {}
    (entry,) = backend._entries.values()
    assert entry.meta.extra == {}


async def test_ending_an_id_a_rotation_retired_ends_the_session_it_leads_to() -> None:
    """An ID its caller read as a live session, rotated before the caller ends it:
    _end follows the alias forward, as a logout on an old cookie does, so the
    rotated session ends too (and goes to on_end). Only the alias was dropped."""
    backend = MemoryBackend()
    token = await save(backend)
    loaded = await backend.load(token, now=NOW)
    assert loaded is not None
    new = await backend.save(token, loaded, Delta({}), now=NOW, ttl=600, rotate=True)
    ended: list[str] = []
    backend.on_end = ended.append
    backend._end(token_id(token), None)
    assert await backend.load(new, now=NOW) is None
    assert len(backend) == 0
    assert ended == [token_id(new)]


async def test_corrupt_stored_record_gives_none_and_is_removed() -> None:
    backend = MemoryBackend()
    token = await save(backend)
    (entry,) = backend._entries.values()
    entry.blob = b"\xff\x00not json"
    assert await backend.load(token, now=NOW) is None
    assert len(backend) == 0


@pytest.mark.parametrize("settings", [{"max_sessions": 0}, {"rotation_grace": -1}])
def test_bad_settings(settings: dict[str, int]) -> None:
    with pytest.raises(ConfigurationError):
        MemoryBackend(**settings)


async def test_abandoned_sessions_do_not_pile_up() -> None:
    """Sessions that expire without being read again are swept as new ones come,
    long before max_sessions: the store stays near twice its live sessions."""
    now = 1_700_000_000.0
    backend = MemoryBackend(clock=lambda: now)
    sizes = []
    for i in range(20_000):
        now += 0.01  # 100 new sessions a second, each living 10 s: ~1,000 alive
        record = SessionRecord(
            session_id="", data={}, created_at=now, last_seen=now, rotated_at=now
        )
        await backend.save(
            None, record, Delta({"i": i}, replace=True), now=now, ttl=10, rotate=False
        )
        sizes.append(len(backend))
    assert max(sizes[10_000:]) <= 2 * 1_000 + 1024
    assert max(sizes) < 5_000


async def test_a_logout_ends_only_aliases_that_still_lead_to_the_session() -> None:
    """A session's ``previous`` (the ID it was rotated from) ends with it only while
    that ID is still its alias: one naming another session's alias, or a live
    session, ends nothing."""
    backend = MemoryBackend()
    stranger_old = await save(backend)
    loaded = await backend.load(stranger_old, now=NOW)
    assert loaded is not None
    stranger_new = await backend.save(
        stranger_old, loaded, Delta({}), now=NOW, ttl=600, rotate=True
    )
    bystander = await save(backend)
    for target in (stranger_old, bystander):
        victim = await save(backend)
        victim_record = await backend.load(victim, now=NOW)
        assert victim_record is not None
        backend._entries[victim_record.session_id].previous = token_id(target)
        await backend.delete(victim, victim_record)
        assert await backend.load(victim, now=NOW) is None
    alias = await backend.load(stranger_old, now=NOW)
    assert alias is not None
    assert alias.read_only
    for token in (stranger_new, bystander):
        assert await backend.load(token, now=NOW) is not None


async def test_revoking_an_expired_session_reports_nothing_revoked() -> None:
    """An entry past its TTL that no sweep has dropped yet is not a live session:
    revoke() answers False and emits no event, as RedisBackend does for a key Redis
    has expired."""
    now = NOW
    events: list[object] = []

    async def sink(event: object) -> None:
        events.append(event)

    backend = MemoryBackend(clock=lambda: now)
    backend.events = Emitter(sink)
    token = await save(backend, ttl=5)
    now = NOW + 10
    assert await backend.revoke(token_id(token)) is False
    assert events == []
