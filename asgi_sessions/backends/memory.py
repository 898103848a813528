"""MemoryBackend: the embedded default, with the semantics of the Redis backend."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from asgi_sessions._log import logger
from asgi_sessions.backends._tokens import checked_id, new_token, token_id
from asgi_sessions.backends.base import Delta, SessionInfo, SessionRecord
from asgi_sessions.errors import ConfigurationError, SerializationError, SessionGone
from asgi_sessions.events import Emitter, SessionEvent, session_hash
from asgi_sessions.serializers import JSONSerializer, Serializer

if TYPE_CHECKING:
    from asgi_sessions.policy import ExpiryPolicy

__all__ = ["MemoryBackend"]


_MIN_SWEEP = 1024
# The longest alias chain followed (rotations of one session within its grace), as
# the Redis backend does.
_MAX_HOPS = 8


@dataclass(slots=True)
class _Entry:
    meta: SessionRecord  # data is kept serialized in ``blob``; meta.data stays empty
    blob: bytes
    expires_at: float
    # Set on the grace alias of a rotated session: the ID of the live session.
    alias_of: str | None = None
    # Set on a session rotated from another with a grace: that ID, its alias while
    # the grace lasts (ending this session ends it too).
    previous: str | None = None


class MemoryBackend:
    """Sessions in this process's memory, for development and single-process apps.

    Same semantics as :class:`RedisBackend`: opaque 256-bit tokens stored only as a
    SHA-256, a TTL on every record, unknown IDs never adopted, delta writes (two
    requests that change different keys both land), no re-creation of a session
    deleted during a request, rotation with a read-only grace alias that serves the
    pre-rotation data for ``rotation_grace`` seconds (0 disables it), and the
    per-user operations of :class:`UserSessions` (with ``max_sessions_per_user``
    ending a user's least recently logged-in sessions, never the one being bound).

    Expired records are swept whenever the store has doubled since the last sweep,
    so it holds at most about twice its live sessions. At most ``max_sessions``
    records are kept: when full, expired records are
    dropped first, then the least recently written. Data is stored serialized (JSON
    by default), so a request never shares objects with the store or another request.
    Not shared between processes: use Redis for more than one worker. ``clock`` is
    used only outside requests (the per-user operations).
    """

    def __init__(
        self,
        *,
        max_sessions: int = 100_000,
        rotation_grace: int = 5,
        max_sessions_per_user: int | None = None,
        serializer: Serializer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_sessions < 1:
            raise ConfigurationError("max_sessions must be at least 1")
        if rotation_grace < 0:
            raise ConfigurationError("rotation_grace must not be negative (0 disables it)")
        if max_sessions_per_user is not None and max_sessions_per_user < 1:
            raise ConfigurationError("max_sessions_per_user must be at least 1, or None")
        self.max_sessions = max_sessions
        self.rotation_grace = rotation_grace
        self.max_sessions_per_user = max_sessions_per_user
        self.serializer: Serializer = serializer or JSONSerializer()
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        # user ID -> the IDs of that user's records (live sessions and grace aliases),
        # in creation order; pruned whenever a user's list is read or written.
        self._users: dict[str, dict[str, None]] = {}
        # Called with the ID of each session this store ends that its caller did not
        # name: evicted by max_sessions_per_user, or reached through grace aliases
        # (the hybrid backend stops their access tokens with it).
        self.on_end: Callable[[str], None] | None = None
        # Hooks for the events only the store sees (revoked); the middleware installs
        # its own here when this has none.
        self.events = Emitter(None)
        self._evicted: list[tuple[str, str]] = []  # to report once the save is done
        self._sweep_at = _MIN_SWEEP  # the store size that triggers the next sweep

    def __len__(self) -> int:
        """Records held, including expired ones not yet swept and grace aliases."""
        return len(self._entries)

    async def load(
        self,
        token: str,
        *,
        now: float,
        policy: ExpiryPolicy | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> SessionRecord | None:
        key = checked_id(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(key)
            return None
        try:
            data = self.serializer.loads(entry.blob)
        except SerializationError as exc:
            logger.warning("session %s: stored record is corrupt (%s); removed", key[:12], exc)
            self._drop(key)
            return None
        if entry.alias_of is not None:
            record = replace(
                entry.meta, data=data, read_only=True, extra={"alias_of": entry.alias_of}
            )
            return record
        meta = entry.meta
        if (
            policy is not None
            and policy.refresh_due(meta, now)
            and not policy.is_expired(meta, now)
        ):
            meta.last_seen = now
            meta.ip, meta.user_agent = ip, user_agent
            entry.expires_at = now + policy.ttl(meta, now)
            self._bump(key, entry)
            return replace(meta, data=data, refreshed=True, extra={})
        # Its own extra (SessionRecord.extra): never the entry's, which every load shares.
        return replace(meta, data=data, extra={})

    async def save(
        self,
        token: str | None,
        record: SessionRecord,
        delta: Delta,
        *,
        now: float,
        ttl: int,
        rotate: bool,
    ) -> str:
        if token is None:
            blob = self.serializer.dumps(delta.updates)
            new = self._create(record, blob, now, ttl)
            self._index(record, now)
            await self._report_evicted()
            return new
        key = token_id(token)
        entry = self._live(key, now)
        if delta.replace:
            blob = self.serializer.dumps(delta.updates)
        else:
            data = self.serializer.loads(entry.blob)
            data.update(delta.updates)
            for removed in delta.removed:
                data.pop(removed, None)
            blob = self.serializer.dumps(data)
            if rotate:
                # The new session holds what parallel saves stored too; the record
                # says so (as RedisBackend's merging rotation does), for a later
                # commit of it and for a hybrid's access token.
                record.data = data
        previous_user = entry.meta.user_id
        if not rotate:
            entry.meta = _meta(record, key)
            entry.blob = blob
            entry.expires_at = now + ttl
            self._bump(key, entry)
            if record.user_id != previous_user:
                self._unindex(previous_user, key)
                self._index(record, now)
                await self._report_evicted()
            return token
        new = self._create(record, blob, now, ttl)
        if self.rotation_grace:
            # The alias keeps the pre-rotation data: whoever else holds the old token
            # (a fixation attacker at login) learns nothing it could not read before.
            # It stays in its user's index so revoking the user ends it too.
            entry.alias_of = record.session_id
            entry.expires_at = min(entry.expires_at, now + self.rotation_grace)
            self._entries[record.session_id].previous = key
        else:
            self._drop(key)
        self._index(record, now)
        await self._report_evicted()
        return new

    async def touch(self, token: str, record: SessionRecord, *, now: float, ttl: int) -> str | None:
        key = token_id(token)
        entry = self._live(key, now)
        entry.meta.last_seen = record.last_seen
        entry.meta.ip, entry.meta.user_agent = record.ip, record.user_agent
        entry.expires_at = now + ttl
        self._bump(key, entry)
        return None

    async def delete(self, token: str, record: SessionRecord) -> None:
        # Logging out on an old cookie during the grace ends the session it led to,
        # however many rotations ago, and every alias that leads to it (the ones
        # before this cookie's too).
        self._end(token_id(token), None)

    async def exists(self, session_id: str) -> bool:
        """Whether the session ``session_id`` is live (not ended, not expired, not a
        rotated session's grace alias)."""
        entry = self._entries.get(session_id)
        return entry is not None and entry.alias_of is None and entry.expires_at > self.clock()

    async def aclose(self) -> None:
        self._entries.clear()
        self._users.clear()

    # -- per-user operations ---------------------------------------------------------

    async def list_sessions(self, user_id: str, *, current: str | None = None) -> list[SessionInfo]:
        now = self.clock()
        return [
            SessionInfo(
                session_id=key,
                user_id=user_id,
                created_at=entry.meta.created_at,
                last_seen=entry.meta.last_seen,
                expires_at=entry.expires_at,
                ip=entry.meta.ip,
                user_agent=entry.meta.user_agent,
                current=key == current,
            )
            for key, entry in self._live_of(user_id, now)
        ]

    async def revoke(self, session_id: str) -> bool:
        entry = self._entries.get(session_id)
        if entry is None or entry.alias_of is not None:
            return False
        if entry.expires_at <= self.clock():
            self._drop(session_id)  # expired already, and not yet swept
            return False
        user = entry.meta.user_id
        # Ended before the hooks are awaited: a rotation while one runs would turn
        # session_id into a grace alias and keep the session live under its new ID.
        self._end(session_id, user)
        if self.events:
            await self.events.emit(SessionEvent("revoked", session_hash(session_id), user))
        return True

    async def _user_ids(self, user_id: str) -> list[str]:
        """Every ID in the user's index: live sessions and grace aliases."""
        return list(self._users.get(user_id, ()))

    async def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        now = self.clock()
        live = {key for key, _ in self._live_of(user_id, now)}
        kept = set()
        if keep is not None:
            kept.add(keep)
            current = self._entries.get(keep)
            if current is not None and current.alias_of is not None:
                kept.add(current.alias_of)  # rotated meanwhile: it lives on under its new ID
        ended = []
        for key in list(self._users.get(user_id, ())):
            entry = self._entries.get(key)
            if key in kept or (entry is not None and entry.alias_of in kept):
                continue
            if key not in live:
                # A grace alias: its session is among the members, or was rebound to
                # another user, whose it now is.
                self._drop(key)
                continue
            # With its grace aliases, also those outside the index: the anonymous
            # session's ID that the login rotated into this user's has no user.
            self._end(key, user_id)
            ended.append(key)
        # The hooks run once every session has ended: a device that rotated while one
        # of them ran would keep its new session.
        if self.events:
            for key in ended:
                await self.events.emit(SessionEvent("revoked", session_hash(key), user_id))
        return len(ended)

    async def revoke_all(self) -> int:
        """End every session in the store, bound to a user or not, and every grace
        alias; returns how many live sessions ended."""
        now = self.clock()
        ended = [
            (key, entry.meta.user_id)
            for key, entry in self._entries.items()
            if entry.alias_of is None and entry.expires_at > now
        ]
        self._entries.clear()
        self._users.clear()
        if self.events:
            for key, user_id in ended:
                await self.events.emit(
                    SessionEvent("revoked", session_hash(key), user_id, reason="all sessions")
                )
        return len(ended)

    # -- internals -----------------------------------------------------------------

    def _live(self, key: str, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None or entry.alias_of is not None or entry.expires_at <= now:
            raise SessionGone("session no longer exists")
        return entry

    def _live_of(self, user_id: str, now: float) -> list[tuple[str, _Entry]]:
        """The user's live sessions, oldest first; drops dead index entries."""
        keys = self._users.get(user_id)
        if not keys:
            return []
        live = []
        for key in list(keys):
            entry = self._entries.get(key)
            if entry is None or entry.expires_at <= now or entry.meta.user_id != user_id:
                del keys[key]
            elif entry.alias_of is None:
                live.append((key, entry))
        if not keys:
            del self._users[user_id]
        live.sort(key=lambda item: item[1].meta.created_at)
        return live

    async def _report_evicted(self) -> None:
        evicted, self._evicted = self._evicted, []
        if self.events:
            for key, user in evicted:
                await self.events.emit(
                    SessionEvent(
                        "revoked", session_hash(key), user, reason="session limit per user"
                    )
                )

    def _index(self, record: SessionRecord, now: float) -> None:
        user = record.user_id
        if user is None:
            return
        current = record.session_id
        self._users.setdefault(user, {})[current] = None
        cap = self.max_sessions_per_user
        if cap is None:
            return
        # The session being saved is the login in progress: never evicted. The
        # others go least recently logged in (or rotated) first; creation time would
        # evict a login whose anonymous browsing began before the other devices'.
        others = [item for item in self._live_of(user, now) if item[0] != current]
        others.sort(key=lambda item: item[1].meta.rotated_at)
        for key, _ in others[: max(0, len(others) + 1 - cap)]:
            logger.info("user's session limit reached: ended session %s", key[:12])
            self._end(key, user)
            if self.on_end is not None:
                self.on_end(key)
            self._evicted.append((key, user))

    def _end(self, key: str, user: str | None) -> None:
        """Drop the session ``key`` with its grace aliases. A ``key`` that is a grace
        alias (rotated since the caller read it) leads to the session it was rotated
        into, followed up to _MAX_HOPS. Then the IDs that session was rotated from,
        and the ones those were rotated from (up to _MAX_HOPS), found through each
        session's ``previous`` and, for a bound one, its user's index. A ``previous``
        counts only while it is still the alias of that session. Every ID ended but
        ``key`` (the one the caller named) goes to on_end."""
        named = key
        doomed = set()
        for _ in range(_MAX_HOPS):
            entry = self._entries.get(key)
            if entry is None or entry.alias_of is None:
                break
            doomed.add(key)
            key = entry.alias_of
        doomed.add(key)
        newer = key
        for _ in range(_MAX_HOPS):
            entry = self._entries.get(newer)
            older = None if entry is None else entry.previous
            alias = None if older is None else self._entries.get(older)
            if older is None or alias is None or alias.alias_of != newer:
                break
            doomed.add(older)
            newer = older
        if user is not None:
            for _ in range(_MAX_HOPS):
                more = [
                    other
                    for other in self._users.get(user, ())
                    if other not in doomed
                    and (alias := self._entries.get(other)) is not None
                    and alias.alias_of in doomed
                ]
                if not more:
                    break
                doomed.update(more)
        for other in doomed:
            self._drop(other)
            if other != named and self.on_end is not None:
                self.on_end(other)

    def _unindex(self, user: str | None, key: str) -> None:
        if user is not None and user in self._users:
            self._users[user].pop(key, None)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._unindex(entry.meta.user_id, key)

    def _create(self, record: SessionRecord, blob: bytes, now: float, ttl: int) -> str:
        self._make_room(now)
        while True:  # never overwrite: the equivalent of SET NX
            token = new_token()
            key = token_id(token)
            if key not in self._entries:
                break
        record.session_id = key
        self._entries[key] = _Entry(_meta(record, key), blob, now + ttl)
        return token

    def _bump(self, key: str, entry: _Entry) -> None:
        # Re-inserting keeps the dict in least-recently-written order for eviction.
        del self._entries[key]
        self._entries[key] = entry

    def _make_room(self, now: float) -> None:
        entries = self._entries
        if len(entries) >= self._sweep_at:
            # Expired records and grace aliases go whenever the store has doubled
            # since the last sweep: O(1) per creation amortized, and the store never
            # holds more than about twice its live sessions.
            for key in [k for k, e in entries.items() if e.expires_at <= now]:
                self._drop(key)
            self._sweep_at = max(_MIN_SWEEP, 2 * len(entries))
        if len(entries) < self.max_sessions:
            return
        for key in [k for k, e in entries.items() if e.expires_at <= now]:
            self._drop(key)
        # Free a tenth at once so the O(n) sweep above runs once per max_sessions/10
        # creations, not on every one.
        target = self.max_sessions - max(1, self.max_sessions // 10)
        if len(entries) > target:
            # One pass over the oldest: deleting a dict's first key one at a time
            # rescans the freed slots each time (quadratic at 100,000 sessions).
            oldest = list(itertools.islice(entries, len(entries) - target))
            for evicted in oldest:
                self._drop(evicted)
            logger.info("memory backend full: evicted the %d least recently written", len(oldest))


def _meta(record: SessionRecord, key: str) -> SessionRecord:
    return replace(
        record, session_id=key, data={}, read_only=False, reissue=False, refreshed=False, extra={}
    )
