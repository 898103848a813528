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
from typing import Any, Protocol, runtime_checkable

from asgi_sessions.serializers import Serializer

__all__ = ["Delta", "SessionBackend", "SessionRecord"]


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
    # Set by a server-side backend when the token is the grace alias of a rotated
    # session: the request may read it but nothing it does is written.
    read_only: bool = False
    # Set by a backend that wants a fresh cookie value on this response even if no
    # refresh is due (a JWT signed by a retired key).
    reissue: bool = False
    # Opaque per-backend state carried from load to commit (e.g. the alias target).
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

    serializer: Serializer

    async def load(self, token: str, *, now: float) -> SessionRecord | None:
        """Return the record for ``token``, or ``None`` if it is unknown or expired.

        Raises :class:`InvalidToken`, without any I/O, when ``token`` is malformed,
        forged or of the wrong kind.
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
