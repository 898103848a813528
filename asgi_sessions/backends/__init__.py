"""Session stores. Each implements :class:`SessionBackend`."""

from asgi_sessions.backends.base import Delta, SessionBackend, SessionRecord
from asgi_sessions.backends.memory import MemoryBackend

__all__ = ["Delta", "MemoryBackend", "SessionBackend", "SessionRecord"]
