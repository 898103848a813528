"""asgi-sessions: server-side and signed-JWT sessions as a pure ASGI middleware.

The public API is this flat namespace; the modules behind it are implementation.
Optional backends import lazily so the core needs no third-party package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgi_sessions.backends.base import (
    Delta,
    GraceAliases,
    SessionBackend,
    SessionInfo,
    SessionRecord,
    UserSessions,
)
from asgi_sessions.backends.memory import MemoryBackend
from asgi_sessions.cookies import CookieSettings
from asgi_sessions.errors import (
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    InvalidToken,
    SerializationError,
    SessionError,
    SessionGone,
    SessionRevoked,
    SessionTooLarge,
)
from asgi_sessions.middleware import SessionMiddleware
from asgi_sessions.policy import ExpiryPolicy
from asgi_sessions.serializers import JSONSerializer, Serializer
from asgi_sessions.session import Session

if TYPE_CHECKING:
    from asgi_sessions.backends.hybrid import HybridBackend
    from asgi_sessions.backends.jwt import JWTBackend, JWTKey
    from asgi_sessions.backends.redis import RedisBackend
    from asgi_sessions.msgpack_serializer import MsgpackSerializer

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigurationError",
    "CookieSettings",
    "Delta",
    "ExpiryPolicy",
    "GraceAliases",
    "HybridBackend",
    "InvalidToken",
    "JSONSerializer",
    "JWTBackend",
    "JWTKey",
    "MemoryBackend",
    "MsgpackSerializer",
    "RedisBackend",
    "SerializationError",
    "Serializer",
    "Session",
    "SessionBackend",
    "SessionError",
    "SessionGone",
    "SessionInfo",
    "SessionMiddleware",
    "SessionRecord",
    "SessionRevoked",
    "SessionTooLarge",
    "UserSessions",
    "__version__",
]

_LAZY = {
    "HybridBackend": "asgi_sessions.backends.hybrid",
    "JWTBackend": "asgi_sessions.backends.jwt",
    "JWTKey": "asgi_sessions.backends.jwt",
    "RedisBackend": "asgi_sessions.backends.redis",
    "MsgpackSerializer": "asgi_sessions.msgpack_serializer",
}


def __getattr__(name: str) -> Any:
    # JWTBackend and HybridBackend need pyjwt (the "jwt" extra), RedisBackend redis
    # and msgpack (the "redis" extra): import them only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'asgi_sessions' has no attribute {name!r}")
