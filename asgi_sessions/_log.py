"""The package logger, and the only way a token may appear in a log line."""

from __future__ import annotations

import hashlib
import logging

logger = logging.getLogger("asgi_sessions")


def fingerprint(token: str | bytes) -> str:
    """A short, non-reversible hash of a token for log lines (12 hex digits)."""
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()[:12]
