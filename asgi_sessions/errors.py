"""Every exception asgi-sessions raises, in one tree.

    SessionError
    ├── ConfigurationError          bad settings, raised at start-up (also a ValueError)
    ├── SerializationError          a value the backend cannot store as given (also a TypeError)
    │   └── SessionTooLarge         the serialized session exceeds the configured limit
    ├── InvalidToken                a cookie value that is malformed, forged or of the wrong kind
    ├── SessionGone                 the record disappeared (logout, revoke) during the request
    └── BackendError                the store failed
        └── BackendUnavailable      the store could not be reached in time

`InvalidToken` and `SessionGone` never reach the application: the middleware turns
them into an empty session and a log line. `BackendUnavailable` becomes a 503 unless
the middleware runs in fail-open mode.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "InvalidToken",
    "SerializationError",
    "SessionError",
    "SessionGone",
    "SessionTooLarge",
]


class SessionError(Exception):
    """Base class of every exception raised by asgi-sessions."""


class ConfigurationError(SessionError, ValueError):
    """A setting is invalid; the message says which one and what to change."""


class SerializationError(SessionError, TypeError):
    """A session value cannot be stored so that it loads back equal.

    Raised when the value is written (``session[key] = value``), naming the key,
    so the failure is found by the code that caused it and not on the next load.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class SessionTooLarge(SerializationError):
    """The serialized session is larger than the backend accepts."""


class InvalidToken(SessionError):
    """A cookie value failed validation: bad charset, length, shape or signature."""


class SessionGone(SessionError):
    """The session's record was deleted while the request ran (logout, revoke)."""


class BackendError(SessionError):
    """The session store failed."""


class BackendUnavailable(BackendError):
    """The session store could not be reached within its timeout."""


class SessionRevoked(SessionError):
    """Raised by any access to a WebSocket's session once the middleware has seen
    that the session was ended elsewhere (logout, revoke) while the socket was open:
    the socket must not go on acting on stale data. Catch it to close gracefully."""
