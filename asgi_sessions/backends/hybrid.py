"""HybridBackend: a short-lived signed access token in front of a server-side session.

The cookie holds two tokens, ``<access JWT>.<refresh token>``:

- the **access token** is a JWT (signed like :class:`JWTBackend`'s, under its own
  audience) carrying the session's ID, its family, its metadata and a copy of its
  data; it lives ``access_ttl`` seconds (15 minutes by default);
- the **refresh token** is the server-side session's own token in the store (a
  :class:`RedisBackend` or :class:`MemoryBackend`), which keeps only its SHA-256.

A request whose access token is valid is answered from the token alone: no store
round trip. Once it has expired (or is within ``refresh_margin`` seconds of it), the
same request loads the session from the store with the refresh token, and its
commit rotates it: the store writes the session under a new token, and the old one
becomes the store's read-only grace alias for ``rotation_grace`` seconds. The
response carries a new access token and the new refresh token. A response that
commits nothing (a 5xx, an exception from the app, a WebSocket refused before it was
accepted) can carry no cookie, so it rotates nothing: the browser's pair still works.
Parallel requests of the browser that carried the same expired pair all succeed:
exactly one rotates, the others find the alias when they commit and send no cookie,
so the browser keeps the winner's. One slower than the grace (a long poll) finds the
spent marker (below) of a session that lives on, and sends no cookie either.

After ``rotate()`` (a login) the old pair's access token is still valid. In the
process that rotated, and everywhere with ``check_revocation``, it is answered by the
store: the read-only grace alias, then nothing (a spent refresh token). In other
processes it serves its copy of the pre-rotation data until it expires; a write
with it is refused by the store, and the response leaves the browser's new cookie
alone.

Reuse detection: every rotation leaves a *spent* marker for the old token's ID,
naming the session's family (the ID the session was created with), and points the
family at its current ID. A spent refresh token presented after the grace (a copy
stolen and replayed, or the victim's browser after the thief rotated) revokes the
family's current session and fires a ``suspicious`` event.

Revocation latency: revoking a session (logout, ``revoke``, ``revoke_user``, a reuse,
a veto) ends it in the store at once, so its next refresh fails. An access token
already issued stays valid until it expires, in other processes, unless
``check_revocation=True``: then each request with a valid access token also checks
that its session is still live (one command), and revocation is immediate
everywhere. This process remembers what it revoked, for ``access_ttl`` seconds,
and refuses those access tokens at once; it keeps at most 10,000 revocations, and
when it must forget one still in force, every access token issued before it is
checked against the store instead (a refresh), which knows the session is gone.

Store commands (Redis): a request with a valid access token, none
(``check_revocation``: one ``HMGET``). A write: one (the store's delta write). A
refresh: 5 in 4 round trips: the store's load (1) when the request starts; at its
commit, the rotation (2, one after the other: the new session, then the old one's
alias) and the spent and family markers (2, sent together); a session bound to a
user also updates the user's index (one script, before the old one's alias, then one
``HMGET`` per entry of the index, sent together).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol

from asgi_sessions._bounded import make_room
from asgi_sessions._log import logger
from asgi_sessions.backends._tokens import TOKEN_LENGTH, checked_id
from asgi_sessions.backends.base import Delta, SessionInfo, SessionRecord
from asgi_sessions.backends.jwt import (
    _FAMILY,
    MAX_TOKEN_LENGTH,
    JWTBackend,
    JWTKey,
    _too_large,
    _Verified,
)
from asgi_sessions.backends.memory import MemoryBackend
from asgi_sessions.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    InvalidToken,
    SerializationError,
    SessionGone,
    SessionTooLarge,
)
from asgi_sessions.events import Emitter, EventHook, EventName, SessionEvent, session_hash
from asgi_sessions.policy import seconds
from asgi_sessions.serializers import JSONSerializer, Serializer

if TYPE_CHECKING:
    from asgi_sessions.backends.redis import RedisBackend
    from asgi_sessions.policy import ExpiryPolicy

__all__ = ["HybridBackend", "Revalidate"]

_REFRESH: Final = "hybrid.refresh"  # SessionRecord.extra: the store token in force
_DUE: Final = "hybrid.due"  # set by a load that found the refresh due: the commit rotates
# The store's session IDs (the SHA-256 of a token in hex) all have this length: an
# access token's size is known before the store names a new session.
_ID_STAND_IN: Final = "0" * 64
# The most revoked, and rotated, session IDs this process remembers (see _note).
_NOTED_LIMIT: Final = 10_000

Revalidate = Callable[[str | None, Mapping[str, Any]], Awaitable[bool]]
"""``revalidate(user_id, data) -> bool``: called on every refresh (never on a request
with a valid access token); False ends the session (user deleted, disabled, or
their password changed)."""


class _Store(Protocol):
    """What the hybrid backend needs of its server-side store."""

    serializer: Any

    async def load(
        self,
        token: str,
        *,
        now: float,
        policy: ExpiryPolicy | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> SessionRecord | None: ...

    async def save(
        self,
        token: str | None,
        record: SessionRecord,
        delta: Delta,
        *,
        now: float,
        ttl: int,
        rotate: bool,
    ) -> str: ...

    async def touch(
        self, token: str, record: SessionRecord, *, now: float, ttl: int
    ) -> str | None: ...

    async def delete(self, token: str, record: SessionRecord) -> None: ...

    async def aclose(self) -> None: ...

    async def exists(self, session_id: str) -> bool: ...

    async def list_sessions(
        self, user_id: str, *, current: str | None = None
    ) -> list[SessionInfo]: ...

    async def revoke(self, session_id: str) -> bool: ...

    async def revoke_user(self, user_id: str, *, keep: str | None = None) -> int: ...

    async def revoke_all(self) -> int: ...

    async def _user_ids(self, user_id: str) -> list[str]: ...


class _BothSerializer:
    """Values must fit both the access token (JSON) and the store: refused when set
    if either cannot round-trip them."""

    def __init__(self, token: Serializer, store: Serializer) -> None:
        self._token = token
        self._store = store

    def check(self, key: str, value: Any) -> None:
        self._token.check(key, value)
        self._store.check(key, value)

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        return self._token.dumps(data)

    def loads(self, raw: bytes) -> dict[str, Any]:
        return self._token.loads(raw)


class _Ledger:
    """Spent refresh-token IDs -> family, and family -> current session ID."""

    async def spend(self, old_id: str, new_id: str, family: str, ttl: int) -> None:
        raise NotImplementedError

    async def family_of_spent(self, session_id: str) -> str | None:
        raise NotImplementedError

    async def current(self, family: str) -> str | None:
        raise NotImplementedError

    async def forget(self, family: str) -> None:
        raise NotImplementedError


class _MemoryLedger(_Ledger):
    def __init__(self, clock: Callable[[], float], limit: int) -> None:
        self._clock = clock
        self._limit = limit
        self._spent: dict[str, tuple[str, float]] = {}
        self._families: dict[str, tuple[str, float]] = {}

    def _put(self, table: dict[str, tuple[str, float]], key: str, value: str, ttl: int) -> None:
        now = self._clock()
        if len(table) >= self._limit:
            for stale in [k for k, (_, until) in table.items() if until <= now]:
                del table[stale]
            make_room(table, self._limit)
        table[key] = (value, now + ttl)

    def _get(self, table: dict[str, tuple[str, float]], key: str) -> str | None:
        item = table.get(key)
        if item is None:
            return None
        if item[1] <= self._clock():
            del table[key]
            return None
        return item[0]

    async def spend(self, old_id: str, new_id: str, family: str, ttl: int) -> None:
        self._put(self._spent, old_id, family, ttl)
        self._put(self._families, family, new_id, ttl)

    async def family_of_spent(self, session_id: str) -> str | None:
        return self._get(self._spent, session_id)

    async def current(self, family: str) -> str | None:
        return self._get(self._families, family)

    async def forget(self, family: str) -> None:
        self._families.pop(family, None)


class _RedisLedger(_Ledger):
    def __init__(self, store: RedisBackend) -> None:
        self._store = store
        self._prefix = store.prefix + "h:"

    async def spend(self, old_id: str, new_id: str, family: str, ttl: int) -> None:
        client = self._store.client
        await self._store._run(
            asyncio.gather(
                client.set(f"{self._prefix}s:{old_id}", family, px=ttl * 1000),
                client.set(f"{self._prefix}f:{family}", new_id, px=ttl * 1000),
            )
        )

    async def _get(self, key: str) -> str | None:
        raw = await self._store._run(self._store.client.get(key))
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def family_of_spent(self, session_id: str) -> str | None:
        return await self._get(f"{self._prefix}s:{session_id}")

    async def current(self, family: str) -> str | None:
        return await self._get(f"{self._prefix}f:{family}")

    async def forget(self, family: str) -> None:
        await self._store._run(self._store.client.delete(f"{self._prefix}f:{family}"))


def _in_force(table: dict[str, float], session_id: str, now: float) -> bool:
    """Whether ``table`` (see HybridBackend._note) holds ``session_id`` in force; an
    entry past its time is dropped."""
    until = table.get(session_id)
    if until is None:
        return False
    if now < until:
        return True
    del table[session_id]
    return False


class HybridBackend:
    """Sessions held server-side in ``store``, fronted by a short-lived access token.

    ``store`` is a :class:`RedisBackend` or :class:`MemoryBackend`: it keeps the data
    and the metadata, does the delta writes, the per-user index and the rotation
    grace (``rotation_grace`` of the store is also the window in which parallel
    requests may present the same spent refresh token, so a store whose grace is
    under 1 second raises :class:`ConfigurationError`). ``secret`` or ``keys`` sign
    the access tokens, as for :class:`JWTBackend`, under ``audience`` (so a plain
    JWT session token is never accepted as an access token, nor the reverse).

    ``access_ttl`` (seconds or a timedelta, default 15 minutes) is the access token's
    lifetime and so the longest a revocation can take to reach other processes
    unless ``check_revocation`` is on. ``refresh_margin`` seconds before it expires,
    the next request refreshes. ``revalidate`` (see :data:`Revalidate`) can veto a
    refresh. ``on_event`` hooks (see :mod:`asgi_sessions.events`) get ``refreshed``
    (a refresh-token rotation), ``revoked`` (a veto, a reuse) and ``suspicious``
    (refresh-token reuse), besides the middleware's own events; the middleware's
    hooks are used when none are given here.

    A write goes to the store as a delta and re-issues the access token with the
    request's copy of the data; a concurrent write by another request reaches the
    access tokens of other requests at their next refresh. Values must be storable
    both in the JSON access token and in the store, and are refused when set if not.
    A write whose access token would be over 64 KiB, or whose cookie value over
    ``max_value_size``, raises :class:`SessionTooLarge` before anything is stored.

    ``max_value_size`` is the longest cookie value the middleware can send (what
    its ``max_cookie_chunks`` cookies hold): :class:`SessionMiddleware` sets it;
    ``None`` (outside a middleware) checks only the access token's 64 KiB.
    """

    max_value_size: int | None

    def __init__(
        self,
        store: RedisBackend | MemoryBackend,
        *,
        secret: str | bytes | None = None,
        keys: Sequence[JWTKey] | None = None,
        access_ttl: int | timedelta = 900,
        refresh_margin: int | timedelta = 10,
        check_revocation: bool = False,
        revalidate: Revalidate | None = None,
        on_event: EventHook | Sequence[EventHook] | None = None,
        audience: str = "asgi-sessions-access",
        issuer: str | None = None,
        leeway: int | timedelta = 30,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from asgi_sessions.backends.redis import RedisBackend

        if isinstance(store, RedisBackend):
            self._ledger: _Ledger = _RedisLedger(store)
        elif isinstance(store, MemoryBackend):
            self._ledger = _MemoryLedger(store.clock, store.max_sessions)
        else:
            raise ConfigurationError(
                f"store must be a RedisBackend or MemoryBackend, got {type(store).__name__}"
            )
        if store.rotation_grace < 1:
            # Parallel requests of a browser present the pair a refresh is rotating;
            # with no grace each of them is a spent token, taken for a stolen one.
            raise ConfigurationError(
                "HybridBackend needs a store with rotation_grace of at least 1 second "
                f"(got {store.rotation_grace}): without it, every request the browser sends "
                "alongside a refresh looks like refresh-token theft and logs the user out; "
                "set rotation_grace on the store (the default is 5)"
            )
        self.access_ttl = seconds(access_ttl, "access_ttl")
        self.refresh_margin = seconds(refresh_margin, "refresh_margin")
        if self.access_ttl < 1:
            raise ConfigurationError("access_ttl must be at least 1 second")
        if self.refresh_margin >= self.access_ttl:
            raise ConfigurationError(
                f"refresh_margin ({self.refresh_margin}s) must be below access_ttl "
                f"({self.access_ttl}s), or every request would refresh"
            )
        if revalidate is not None and not callable(revalidate):
            raise ConfigurationError("revalidate must be an async callable or None")
        self.store: _Store = store
        self._tokens = JWTBackend(
            secret,
            keys=keys,
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            cache_size=cache_size,
        )
        self.serializer = _BothSerializer(JSONSerializer(), store.serializer)
        store.on_end = self._mark_revoked
        self.check_revocation = check_revocation
        self.revalidate = revalidate
        self._events = Emitter(None)
        self.events = Emitter(on_event)
        self.clock = clock
        # What this process revoked (session ID -> until when its access tokens may
        # still be presented), so they stop here at once.
        self._revoked: dict[str, float] = {}
        # Sessions this process rotated (old ID -> until when its access tokens may
        # still be presented): those are answered by the store, not the token.
        self._rotated: dict[str, float] = {}
        # refresh token -> its session ID (a format check and a SHA-256 saved), bounded
        # like the verified-token cache.
        self._ids: dict[str, str] = {}
        # revoke_all(): access tokens issued before this second stop here at once.
        self._revoked_before = -math.inf
        self.max_value_size = None

    # -- the SessionBackend protocol ------------------------------------------------

    async def load(
        self,
        token: str,
        *,
        now: float,
        policy: ExpiryPolicy | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> SessionRecord | None:
        if type(token) is not str:
            raise InvalidToken("token is not a str")
        access, dot, refresh = token.rpartition(".")
        if not dot or not access:
            raise InvalidToken("not an access and refresh token pair")
        ids = self._ids
        session_id = ids.get(refresh)
        if session_id is None:
            session_id = checked_id(refresh)  # a malformed token never reaches the store
            make_room(ids, self._tokens.cache_size or 1)
            ids[refresh] = session_id
        entry = self._access(access)
        if entry.sid != session_id:
            raise InvalidToken("the access token belongs to another session")
        if now < entry.nb_limit:
            raise InvalidToken("token is not valid yet (iat or nbf in the future)")
        family = entry.family or session_id
        expires = entry.exp_limit - self._tokens.leeway
        # After revoke_all() an access token issued before it is not enough: the
        # store decides (iat is whole seconds, so one of that same second asks too).
        if (
            now < expires - self.refresh_margin
            and entry.issued >= self._revoked_before
            and not (self._rotated and self._was_rotated(session_id, now))
        ):
            if self._is_revoked(session_id, now):
                return None
            if self.check_revocation and not await self.store.exists(session_id):
                # Ended, or rotated (by another process): the store tells which, and
                # serves a rotation's read-only grace alias to the browser's
                # requests still in flight with this pair.
                return await self._refresh(refresh, session_id, family, now, policy, ip, user_agent)
            record = entry.record()
            record.extra[_REFRESH] = refresh
            record.extra[_FAMILY] = family
            return record
        return await self._refresh(refresh, session_id, family, now, policy, ip, user_agent)

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
        refresh = None if token is None else record.extra.get(_REFRESH)
        if token is not None and refresh is None:
            raise SessionGone("no refresh token for this session")
        old_id = record.session_id
        family = record.extra.get(_FAMILY)
        # The refresh this request's load found due rotates the refresh token with
        # this write, unless the middleware can send no cookie (reissue cleared).
        refreshing = record.extra.pop(_DUE, False) and record.reissue
        if refreshing:
            record.rotated_at = now
        data = record.data
        raw = self._tokens.serializer.dumps(data).decode()
        self._check_fits(record, raw, now, ttl)  # first: nothing is stored if it does not
        new = await self.store.save(
            refresh, record, delta, now=now, ttl=ttl, rotate=rotate or refreshing
        )
        if record.data is not data:
            # A rotation merged what parallel requests stored: the token carries it.
            raw = self._tokens.serializer.dumps(record.data).decode()
        if token is None or family is None:
            family = record.session_id
        elif rotate or refreshing:
            await self._spend(old_id, record, family, now)
            if rotate:
                self._mark_rotated(old_id, now)
        record.extra[_REFRESH] = new
        record.extra[_FAMILY] = family
        if refreshing and not rotate:
            # The session got a new ID; the middleware reports the refresh itself
            # (its touch), and a rotation it asked for (rotate).
            await self._event(
                "rotated",
                record,
                record.ip,
                record.user_agent,
                "refresh token rotated",
                previous=session_hash(old_id),
            )
        return self._issue(record, new, now, ttl, raw)

    async def touch(self, token: str, record: SessionRecord, *, now: float, ttl: int) -> str | None:
        refresh = record.extra.get(_REFRESH)
        if refresh is None:
            raise SessionGone("no refresh token for this session")
        if record.extra.get(_DUE):
            # The refresh found due at load: the response can carry the new pair now.
            return await self.save(token, record, Delta({}), now=now, ttl=ttl, rotate=False)
        await self.store.touch(refresh, record, now=now, ttl=ttl)
        return self._issue(record, refresh, now, ttl)

    async def delete(self, token: str, record: SessionRecord) -> None:
        refresh = record.extra.get(_REFRESH)
        if refresh is None:
            _, _, refresh = token.rpartition(".")
        await self.store.delete(refresh, record)
        # A grace alias's: the store ended the session it leads to as well, and tells
        # this backend so (on_end), whose access tokens (the new pair) stop here too.
        self._mark_revoked(record.session_id)

    async def aclose(self) -> None:
        await self._tokens.aclose()
        await self.store.aclose()

    async def exists(self, session_id: str) -> bool:
        """Whether the session is live in the store (WebSockets check this)."""
        return await self.store.exists(session_id)

    async def is_grace_alias(self, token: str, *, now: float) -> bool:
        """Whether the pair's refresh token was rotated into a session that is still
        live: the store's read-only grace alias of it, or, once that has expired, a
        spent token whose family's current session exists (see
        :class:`~asgi_sessions.backends.base.GraceAliases`). The store decides: the
        access token stays valid after a rotation done in another process, or after
        the request that holds it was loaded. False for a malformed pair or an ended
        session; one store command, three more when the alias is gone."""
        if type(token) is not str:
            return False
        _, dot, refresh = token.rpartition(".")
        if not dot:
            return False
        try:
            record = await self.store.load(refresh, now=now)
        except InvalidToken:
            return False
        if record is not None:
            return record.read_only
        # A request slower than the grace (a long poll) that loaded the pair before a
        # parallel refresh: the session lives on under the browser's new pair, which
        # this response must leave alone. Asked only at a commit that found the
        # session gone; a spent token presented at a load is still a reuse.
        family = await self._ledger.family_of_spent(checked_id(refresh))
        if family is None:
            return False
        current = await self._ledger.current(family) or family
        return await self.store.exists(current)

    # -- per-user operations (the store's, and this process stops the access tokens) ---

    async def list_sessions(self, user_id: str, *, current: str | None = None) -> list[SessionInfo]:
        return await self.store.list_sessions(user_id, current=current)

    async def revoke(self, session_id: str) -> bool:
        self._mark_revoked(session_id)
        return await self.store.revoke(session_id)

    async def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        # Grace aliases too: a parallel request's access token may name one.
        for session_id in await self.store._user_ids(user_id):
            if session_id != keep:
                self._mark_revoked(session_id)
        return await self.store.revoke_user(user_id, keep=keep)

    async def revoke_all(self) -> int:
        """End every session in the store (see the store's ``revoke_all``). This
        process refuses every access token issued before now at once; other
        processes refuse them at their next refresh (within ``access_ttl``), or at
        once with ``check_revocation``."""
        self._revoked_before = math.floor(self.clock()) + 1
        return await self.store.revoke_all()

    # -- internals -----------------------------------------------------------------

    def _access(self, access: str) -> _Verified:
        tokens = self._tokens
        entry = tokens._cache.get(access)
        if entry is None:
            entry = tokens._verify(access)  # InvalidToken for anything forged or malformed
            tokens._remember(access, entry)
        return entry

    def _issue(
        self, record: SessionRecord, refresh: str, now: float, ttl: int, raw: str | None = None
    ) -> str:
        if raw is None:
            raw = self._tokens.serializer.dumps(record.data).decode()
        access = self._tokens._issue(record, raw, now=now, ttl=min(ttl, self.access_ttl))
        return f"{access}.{refresh}"

    def _check_fits(self, record: SessionRecord, raw: str, now: float, ttl: int) -> None:
        """Raise :class:`SessionTooLarge` if the cookie value a save would return is
        over a limit; the store has not named a new session yet, so its ID (and a
        new family's) stands in at its fixed length."""
        tokens = self._tokens
        claims = tokens._claims(record, now=now, ttl=min(ttl, self.access_ttl))
        claims["sid"] = claims["fam"] = _ID_STAND_IN
        length = tokens._token_length(claims, raw)
        if length > MAX_TOKEN_LENGTH:
            raise SessionTooLarge(_too_large(length))
        value = length + 1 + TOKEN_LENGTH
        if self.max_value_size is not None and value > self.max_value_size:
            raise SessionTooLarge(
                f"the session does not fit in cookies: its cookie value would be {value} "
                f"bytes, over the {self.max_value_size} that max_cookie_chunks allows"
            )

    async def _refresh(
        self,
        refresh: str,
        session_id: str,
        family: str,
        now: float,
        policy: ExpiryPolicy | None,
        ip: str | None,
        user_agent: str | None,
    ) -> SessionRecord | None:
        store = self.store
        record = await store.load(refresh, now=now)
        if record is None:
            await self._check_reuse(session_id, ip, user_agent)
            return None
        if record.read_only:
            # A parallel request of this browser rotated the pair a moment ago: serve
            # the data read-only; the browser keeps the winner's new cookie.
            record.extra[_REFRESH] = refresh
            return record
        if policy is not None and policy.is_expired(record, now):
            return None
        try:
            self._tokens.serializer.dumps(record.data)
        except SerializationError as exc:
            # The store holds data an access token cannot carry (bytes, a datetime:
            # written by something other than this backend, whose writes refuse
            # them): a record that is not ours, removed like any corrupt record.
            logger.warning(
                "session %s: stored data cannot go into an access token (%s); removed",
                session_id[:12],
                exc,
            )
            await store.delete(refresh, record)
            self._mark_revoked(session_id)
            return None
        if self.revalidate is not None and not await self._revalidate(record):
            logger.info("session %s: refresh vetoed by revalidate(); ended", session_id[:12])
            await store.delete(refresh, record)
            self._mark_revoked(session_id)
            await self._event("revoked", record, ip, user_agent, "revalidate() vetoed the refresh")
            return None
        record.extra[_REFRESH] = refresh
        record.extra[_FAMILY] = family
        # The rotation is the commit's (touch or save), with the new pair's cookie: a
        # response that commits nothing (a 5xx, an exception, a socket refused
        # before accept) sends no cookie, and the browser keeps using this pair.
        # Rotated here, that pair would be spent: a reuse once the grace ended.
        record.extra[_DUE] = True
        record.reissue = True
        return record

    @property
    def events(self) -> Emitter:
        return self._events

    @events.setter
    def events(self, value: Emitter) -> None:
        # The store's revocations are this backend's events too.
        self._events = value
        if not self.store.events:  # type: ignore[attr-defined]
            self.store.events = value  # type: ignore[attr-defined]

    async def _revalidate(self, record: SessionRecord) -> bool:
        assert self.revalidate is not None
        try:
            return await self.revalidate(record.user_id, MappingProxyType(record.data)) is True
        except Exception as exc:
            # The app's check could not run (its database is down, say): like a store
            # failure, the request fails closed (503) or, with fail_open, goes on
            # without a session; the session itself is left alone.
            raise BackendUnavailable(f"revalidate() raised {type(exc).__name__}") from exc

    async def _spend(self, old_id: str, record: SessionRecord, family: str, now: float) -> None:
        """Leave the spent marker of a rotation the store has done."""
        try:
            await self._ledger.spend(
                old_id, record.session_id, family, self._family_ttl(record, now)
            )
        except BackendError as exc:
            # The store rotated already: failing the commit would lose the new pair
            # and log the browser out. What is lost is the reuse detection of this
            # one spent token (a replay of it is merely unknown).
            logger.warning(
                "session %s: rotated, but its spent marker was not stored (%s)",
                old_id[:12],
                exc,
            )

    def _mark_rotated(self, session_id: str, now: float) -> None:
        """Send the access tokens of a session this process rotated to the store (its
        read-only grace alias, then nothing) for as long as they can be presented."""
        self._note(self._rotated, session_id, now)

    def _was_rotated(self, session_id: str, now: float) -> bool:
        return _in_force(self._rotated, session_id, now)

    def _family_ttl(self, record: SessionRecord, now: float) -> int:
        # A spent token can be replayed for as long as the family could live.
        until = record.absolute_expiry or now + 366 * 86400
        return max(1, math.ceil(until - now))

    async def _check_reuse(self, session_id: str, ip: str | None, user_agent: str | None) -> None:
        family = await self._ledger.family_of_spent(session_id)
        if family is None:
            return  # unknown, expired or revoked: just anonymous
        current = await self._ledger.current(family) or family
        if not await self.store.exists(current):
            # The family's session has ended already (a logout, which also ended the
            # grace aliases of its pre-refresh pairs, or a revoke): nothing to revoke,
            # and a request of the browser still in flight with an old pair is no
            # attack. Anonymous, as any ended session's token.
            return
        logger.warning(
            "refresh token reuse for session %s (family %s): family revoked",
            session_id[:12],
            family[:12],
        )
        await self.store.revoke(current)  # emits "revoked" for the family's session
        await self._ledger.forget(family)
        self._mark_revoked(current)
        if self._events:
            await self._events.emit(
                SessionEvent(
                    "suspicious",
                    session_hash(session_id),
                    ip=ip,
                    user_agent=user_agent,
                    reason="refresh token reuse: the session family was revoked",
                )
            )

    def _mark_revoked(self, session_id: str) -> None:
        self._note(self._revoked, session_id, self.clock())

    def _is_revoked(self, session_id: str, now: float) -> bool:
        revoked = self._revoked
        return bool(revoked) and _in_force(revoked, session_id, now)

    def _note(self, table: dict[str, float], session_id: str, now: float) -> None:
        """Keep ``session_id``'s access tokens from being answered here (``table``:
        the revoked or the rotated IDs, oldest first) until they can no longer be
        presented. At the bound, entries past their time go first; entries still in
        force that must go are not forgotten: every access token issued by the newest
        of them (iat is whole seconds) then goes to the store, which knows those
        sessions are gone or rotated."""
        lasts = self.access_ttl + self._tokens.leeway
        table.pop(session_id, None)  # re-inserted last: the dict stays oldest first
        if len(table) >= _NOTED_LIMIT:
            for stale in [k for k, until in table.items() if until <= now]:
                del table[stale]
            if len(table) >= _NOTED_LIMIT:
                oldest = list(itertools.islice(table, _NOTED_LIMIT // 8))
                newest = max(table.pop(key) for key in oldest) - lasts
                self._revoked_before = max(self._revoked_before, math.floor(newest) + 1)
        table[session_id] = now + lasts

    async def _event(
        self,
        name: EventName,
        record: SessionRecord,
        ip: str | None,
        user_agent: str | None,
        reason: str | None = None,
        previous: str | None = None,
    ) -> None:
        if self._events:
            await self._events.emit(
                SessionEvent(
                    name,
                    session_hash(record.session_id),
                    record.user_id,
                    ip,
                    user_agent,
                    reason,
                    previous,
                )
            )
