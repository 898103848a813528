"""MemoryBackend: the embedded default, with the semantics of the Redis backend."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from asgi_sessions._log import logger
from asgi_sessions.backends._tokens import checked_id, new_token, token_id
from asgi_sessions.backends.base import Delta, SessionRecord
from asgi_sessions.errors import ConfigurationError, SerializationError, SessionGone
from asgi_sessions.serializers import JSONSerializer, Serializer

__all__ = ["MemoryBackend"]


@dataclass(slots=True)
class _Entry:
    meta: SessionRecord  # data is kept serialized in ``blob``; meta.data stays empty
    blob: bytes
    expires_at: float
    # Set on the grace alias of a rotated session: the ID of the live session.
    alias_of: str | None = None


class MemoryBackend:
    """Sessions in this process's memory, for development and single-process apps.

    Same semantics as :class:`RedisBackend`: opaque 256-bit tokens stored only as a
    SHA-256, a TTL on every record, unknown IDs never adopted, delta writes (two
    requests that change different keys both land), no re-creation of a session
    deleted during a request, and rotation with a read-only grace alias that serves
    the pre-rotation data for ``rotation_grace`` seconds (0 disables it).

    At most ``max_sessions`` records are kept: when full, expired records are
    dropped first, then the least recently written. Data is stored serialized (JSON
    by default), so a request never shares objects with the store or another request.
    Not shared between processes: use Redis for more than one worker.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 100_000,
        rotation_grace: int = 5,
        serializer: Serializer | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ConfigurationError("max_sessions must be at least 1")
        if rotation_grace < 0:
            raise ConfigurationError("rotation_grace must not be negative (0 disables it)")
        self.max_sessions = max_sessions
        self.rotation_grace = rotation_grace
        self.serializer: Serializer = serializer or JSONSerializer()
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        """Records held, including expired ones not yet swept and grace aliases."""
        return len(self._entries)

    async def load(self, token: str, *, now: float) -> SessionRecord | None:
        key = checked_id(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        try:
            data = self.serializer.loads(entry.blob)
        except SerializationError as exc:
            logger.warning("session %s: stored record is corrupt (%s); removed", key[:12], exc)
            del self._entries[key]
            return None
        record = replace(entry.meta, data=data)
        if entry.alias_of is not None:
            record.read_only = True
            record.extra = {"alias_of": entry.alias_of}
        return record

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
            return self._create(record, blob, now, ttl)
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
        if not rotate:
            entry.meta = _meta(record, key)
            entry.blob = blob
            entry.expires_at = now + ttl
            self._bump(key, entry)
            return token
        new = self._create(record, blob, now, ttl)
        if self.rotation_grace:
            # The alias keeps the pre-rotation data: whoever else holds the old token
            # (a fixation attacker at login) learns nothing it could not read before.
            entry.alias_of = record.session_id
            entry.expires_at = min(entry.expires_at, now + self.rotation_grace)
        else:
            del self._entries[key]
        return new

    async def touch(self, token: str, record: SessionRecord, *, now: float, ttl: int) -> str | None:
        key = token_id(token)
        entry = self._live(key, now)
        entry.meta.last_seen = record.last_seen
        entry.expires_at = now + ttl
        self._bump(key, entry)
        return None

    async def delete(self, token: str, record: SessionRecord) -> None:
        entry = self._entries.pop(token_id(token), None)
        if entry is not None and entry.alias_of is not None:
            # Logging out on the old cookie during the grace ends the new session too.
            self._entries.pop(entry.alias_of, None)

    async def aclose(self) -> None:
        self._entries.clear()

    # -- internals -----------------------------------------------------------------

    def _live(self, key: str, now: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None or entry.alias_of is not None or entry.expires_at <= now:
            raise SessionGone("session no longer exists")
        return entry

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
        if len(entries) < self.max_sessions:
            return
        for key in [k for k, e in entries.items() if e.expires_at <= now]:
            del entries[key]
        # Free a tenth at once so the O(n) sweep above runs once per max_sessions/10
        # creations, not on every one.
        target = self.max_sessions - max(1, self.max_sessions // 10)
        if len(entries) > target:
            # One pass over the oldest: deleting a dict's first key one at a time
            # rescans the freed slots each time (quadratic at 100,000 sessions).
            oldest = list(itertools.islice(entries, len(entries) - target))
            for evicted in oldest:
                del entries[evicted]
            logger.info("memory backend full: evicted the %d least recently written", len(oldest))


def _meta(record: SessionRecord, key: str) -> SessionRecord:
    return replace(record, session_id=key, data={}, read_only=False, reissue=False, extra={})
