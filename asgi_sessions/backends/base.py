"""The backend protocol: what the middleware needs from a session store.

A backend turns a cookie value (the *token*) into a :class:`SessionRecord` and back.
``save`` returns the cookie value, so a server-side store (the token is a random
key) and a client-side one (the token *is* the signed data) share one interface.
Every method receives ``now`` from the middleware's clock, so one injected clock
drives the whole flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from asgi_sessions.errors import InvalidToken
from asgi_sessions.serializers import Serializer

if TYPE_CHECKING:
    from asgi_sessions.policy import ExpiryPolicy

__all__ = [
    "Delta",
    "GraceAliases",
    "SessionBackend",
    "SessionInfo",
    "SessionRecord",
    "UserSessions",
    "is_grace_alias",
]


@dataclass(slots=True)
class SessionRecord:
    """One session as a backend stores it: the data plus the metadata expiry needs.

    ``session_id`` is the public handle of the session: safe to log, show and use to
    revoke it, never usable as a cookie (server-side backends use a hash of the
    token). Times are seconds since the epoch from the middleware's clock.
    """

    session_id: str
    data: dict[str, Any]
    created_at: float
    last_seen: float
    rotated_at: float
    # Per-session expiry overrides set by Session.set_expiry(); None means the
    # middleware's policy applies.
    idle_timeout: int | None = None
    fixed_expiry: float | None = None
    browser_session: bool = False
    user_id: str | None = None
    # The latest moment the session can be alive (absolute deadline or fixed expiry),
    # set by the middleware before a save: per-user indexes are scored by it.
    absolute_expiry: float | None = None
    # Set by the middleware before a save or touch: (refresh period, idle timeout in
    # force) in seconds, so a backend can slide the expiry by itself on a later load
    # (the Redis backend's script does); None for a fixed expiry, which never slides.
    sliding: tuple[int, int] | None = None
    # The client as last seen by a save or refresh (for the per-user device list).
    ip: str | None = None
    user_agent: str | None = None
    # Set by a server-side backend when the token is the grace alias of a rotated
    # session: the request may read it but nothing it does is written.
    read_only: bool = False
    # Set by a backend that wants a fresh cookie value on this response even if no
    # refresh is due (a JWT signed by a retired key, a hybrid refresh). The
    # middleware clears it before a commit that can send no cookie (when a WebSocket
    # ends): a backend must then not rotate the token the browser keeps using.
    reissue: bool = False
    # Set by a backend that extended the expiry while loading (the refresh folded
    # into the load's round trip): the middleware re-sends the cookie so its
    # Max-Age slides too, and does not touch the record again.
    refreshed: bool = False
    # Opaque per-backend state carried from load to commit (e.g. the alias target).
    # Every load hands out its own dict, shared with neither the store nor another
    # load, so a backend over a store (the hybrid) may write its request's state here.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delta:
    """What a request changed: keys to set, keys to remove, or a full replacement.

    Server-side backends apply ``updates`` and ``removed`` onto the stored data so
    two requests that change different keys both land; with ``replace`` the stored
    data becomes ``updates`` exactly.
    """

    updates: Mapping[str, Any]
    removed: frozenset[str] = frozenset()
    replace: bool = False


@runtime_checkable
class SessionBackend(Protocol):
    """A session store. Every method may raise :class:`BackendError`; none raises
    anything else for bad input."""

    @property
    def serializer(self) -> Serializer: ...

    async def load(
        self,
        token: str,
        *,
        now: float,
        policy: ExpiryPolicy | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> SessionRecord | None:
        """Return the record for ``token``, or ``None`` if it is unknown or expired.

        Raises :class:`InvalidToken`, without any I/O, when ``token`` is malformed,
        forged or of the wrong kind. A server-side backend given ``policy`` may fold
        a due refresh into the load (extend the expiry, store ``now`` as
        ``last_seen`` and the client's ``ip``/``user_agent``) and then sets
        ``record.refreshed``; a backend that cannot simply ignores these arguments.
        """
        ...

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
        """Persist ``delta`` for ``record`` and return the cookie value to send.

        ``token`` is ``None`` for a new session: the backend creates it without ever
        overwriting another. With ``rotate`` the session gets a new token and the
        old one stops working (server-side: after a short read-only grace). The
        record's metadata (times, expiry overrides, user) is written as given.
        ``ttl`` is the number of seconds the stored record may live. Raises
        :class:`SessionGone` when an existing session was deleted meanwhile: a
        save never re-creates it.
        """
        ...

    async def touch(self, token: str, record: SessionRecord, *, now: float, ttl: int) -> str | None:
        """Extend the session's expiry to ``ttl`` seconds and store ``record.last_seen``
        without rewriting the data. Returns a new cookie value, or ``None`` when the
        cookie stays the same. Raises :class:`SessionGone` as ``save`` does."""
        ...

    async def delete(self, token: str, record: SessionRecord) -> None:
        """Remove the session (and any grace alias of it). Never raises for an
        unknown session."""
        ...

    async def aclose(self) -> None:
        """Release connections the backend owns."""
        ...


@runtime_checkable
class GraceAliases(Protocol):
    """Optional, for a backend whose ``load`` may serve a rotated session's old token
    as live (the hybrid backend's access token outlives a rotation): it answers
    :func:`is_grace_alias` itself."""

    async def is_grace_alias(self, token: str, *, now: float) -> bool:
        """Whether ``token`` is now the read-only grace alias of a rotated session.
        Never raises for a malformed token (False); may raise :class:`BackendError`."""
        ...


async def is_grace_alias(backend: SessionBackend, token: str, *, now: float) -> bool:
    """Whether ``token``, whose session a save or touch just found gone
    (:class:`SessionGone`), is the grace alias of a rotation (a parallel request of
    the browser rotated it: the browser has or gets the new cookie) rather than an
    ended session. The backend's own answer (:class:`GraceAliases`), else whether
    ``load`` marks it ``read_only``; False for a token the backend refuses."""
    if isinstance(backend, GraceAliases):
        return await backend.is_grace_alias(token, now=now)
    try:
        record = await backend.load(token, now=now)
    except InvalidToken:
        return False
    return record is not None and record.read_only


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One of a user's live sessions, as a device list shows it. Never holds a token.

    ``expires_at`` is when the store will drop the record if it sees no more
    activity; ``current`` marks the session of the request that asked.
    """

    session_id: str
    user_id: str
    created_at: float
    last_seen: float
    expires_at: float | None
    ip: str | None
    user_agent: str | None
    current: bool = False


@runtime_checkable
class UserSessions(Protocol):
    """Per-user session management, for server-side backends.

    A session joins its user's index when it is saved with ``record.user_id`` set
    (``Session.bind_user()``). Every method works inside and outside a request (admin
    code, a CLI) and never needs a token: sessions are named by their public ID.
    """

    async def list_sessions(self, user_id: str, *, current: str | None = None) -> list[SessionInfo]:
        """The user's live sessions, oldest first; prunes dead index entries."""
        ...

    async def revoke(self, session_id: str) -> bool:
        """End one session (and any grace alias of it). False if it did not exist."""
        ...

    async def revoke_user(self, user_id: str, *, keep: str | None = None) -> int:
        """End all of a user's sessions except ``keep``; returns how many ended."""
        ...
