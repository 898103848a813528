"""Session events: what happened to a session, for audit logs and metrics.

Pass hooks to :class:`~asgi_sessions.SessionMiddleware` (``on_event=``); each is
called with one :class:`SessionEvent` per event. A hook may be a plain function or
a coroutine function (then awaited, on the request's path: keep it quick). A hook
that raises is logged and ignored: an audit sink that fails never fails a request.

Events never carry anything that could be replayed: ``session`` is a 12-hex-digit
SHA-256 prefix of the session's ID (of the cookie value, for a cookie that named no
session), never a token or a raw ID.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

from asgi_sessions._log import fingerprint
from asgi_sessions.errors import ConfigurationError

__all__ = ["EventHook", "EventName", "SessionEvent", "log_events"]

EventName = Literal[
    "created", "rotated", "refreshed", "invalidated", "revoked", "expired", "suspicious"
]

events_logger = logging.getLogger("asgi_sessions.events")


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One event.

    ``name``: ``created`` (a new session was stored), ``rotated`` (it got a new ID:
    login, ``rotate()``, periodic rotation; ``previous`` is the old ID's hash),
    ``refreshed`` (its idle expiry was extended), ``invalidated`` (logout or
    ``invalidate()``), ``revoked`` (ended by ``revoke``/``revoke_user``, a per-user
    cap, or a refresh veto), ``expired`` (a cookie arrived for a session past its
    deadline) and ``suspicious`` (a forged, malformed or unknown token, duplicate
    session cookies, a reused refresh token: ``reason`` says which).
    """

    name: EventName
    session: str | None = None  # fingerprint of the session ID
    user_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    reason: str | None = None
    previous: str | None = None  # rotated: fingerprint of the ID before
    at: float = field(default_factory=time.time)


EventHook = Callable[[SessionEvent], "Awaitable[None] | None"]


def session_hash(session_id: str | None) -> str | None:
    """The form in which events (and logs) name a session."""
    return None if not session_id else fingerprint(session_id)


class Emitter:
    """The hooks of one middleware (or backend), called in order."""

    __slots__ = ("hooks",)

    def __init__(self, hooks: EventHook | Iterable[EventHook] | None) -> None:
        if hooks is None:
            self.hooks: tuple[EventHook, ...] = ()
        elif callable(hooks):
            self.hooks = (hooks,)
        else:
            self.hooks = tuple(hooks)
        for hook in self.hooks:
            if not callable(hook):
                raise ConfigurationError(f"on_event hooks must be callable, got {hook!r}")

    def __bool__(self) -> bool:
        return bool(self.hooks)

    async def emit(self, event: SessionEvent) -> None:
        for hook in self.hooks:
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                events_logger.warning(
                    "on_event hook %r raised %s on a %s event; ignored",
                    getattr(hook, "__qualname__", hook),
                    type(exc).__name__,
                    event.name,
                )


def log_events(event: SessionEvent) -> None:
    """A ready hook: one structured line per event on the ``asgi_sessions.events``
    logger (``warning`` for ``suspicious``, ``info`` otherwise), as JSON::

        session event {"name": "created", "session": "3f2a...", "user_id": "ann", ...}
    """
    level = logging.WARNING if event.name == "suspicious" else logging.INFO
    if events_logger.isEnabledFor(level):
        fields = {k: v for k, v in asdict(event).items() if v is not None}
        events_logger.log(level, "session event %s", json.dumps(fields, sort_keys=True))
