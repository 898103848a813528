"""Opaque session tokens for server-side backends: 256 random bits from ``secrets``,
stored only as their SHA-256 so a dump of the store yields no usable cookie."""

from __future__ import annotations

import hashlib
import re
import secrets

from asgi_sessions.errors import InvalidToken

TOKEN_BYTES = 32
TOKEN_LENGTH = 43  # len(base64url(32 bytes)) without padding
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{43}")


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_id(token: str) -> str:
    """The public, storable ID of a token: its SHA-256 in hex."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def checked_id(token: str) -> str:
    """``token_id`` of a well-formed token; :class:`InvalidToken` otherwise, so a
    malformed cookie causes no I/O at all."""
    if len(token) != TOKEN_LENGTH or not _TOKEN.fullmatch(token):
        raise InvalidToken("not a session token of this backend")
    return token_id(token)
