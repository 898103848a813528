"""The cookie codec: read the session cookie from raw Cookie header bytes and render
Set-Cookie header values, with chunking for values over the browser's 4096-byte limit.

Reading rules (documented in the README):

* the session cookie is looked up by exact name; a second cookie of that same name in
  one request is suspicious (a cookie-tossing attempt from a sibling domain, or a
  stale cookie under another path) and the request gets an empty session;
* a value too long to be ours, or with a character outside ``A-Z a-z 0-9 - _ .``, is
  malformed and never reaches a backend;
* without ``name``, the chunks ``name.0``, ``name.1``, ... are joined in order; a
  missing or repeated chunk makes the value malformed. A chunk at or past
  ``max_chunks`` (but under ``MAX_CHUNKS``, so one a configuration could have written)
  is left out of the value and only noted, so the next Set-Cookie expires it: a browser
  that kept chunks from before ``max_cookie_chunks`` was lowered is not locked out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from asgi_sessions.errors import ConfigurationError

__all__ = ["CookieRead", "CookieSettings"]

# RFC 6265 section 4.1.1: a cookie name is an RFC 7230 token.
_TOKEN_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Every value we issue is URL-safe base64, optionally dot-separated (a JWT).
_VALUE = re.compile(rb"[A-Za-z0-9_.\-]+")
_DOMAIN = re.compile(r"\.?[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?")
_PATH_FORBIDDEN = re.compile(r"[\x00-\x20;\x7f-\U0010ffff]")

BROWSER_COOKIE_LIMIT = 4096  # bytes of name + "=" + value a browser keeps per cookie
MAX_CHUNKS = 50  # the most max_cookie_chunks allows: chunk names run name.0 to name.49
_EXPIRED = b"; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"

SameSite = Literal["lax", "strict", "none"]


@dataclass(frozen=True, slots=True)
class CookieRead:
    """What a request carried: the session cookie's value (``None`` if absent or
    unusable), whether it was unusable and why, and every session-cookie name seen
    (so stale chunks can be cleared)."""

    value: str | None = None
    problem: str | None = None
    names: tuple[str, ...] = ()


_ABSENT = CookieRead()
_CACHE_ENTRIES = 1024
_CACHED_HEADER_LIMIT = 2048  # bytes: at most about 2 MiB of cached headers


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """Validated cookie attributes, rendered once.

    Refuses at construction: a name that is not an RFC 6265 token, ``SameSite=None``
    or ``Partitioned`` without ``Secure``, a ``__Secure-`` name without ``Secure``, and
    a ``__Host-`` name without ``Secure``, with a ``Domain`` or with a ``Path`` other
    than ``/``.
    """

    name: str = "session"
    path: str = "/"
    domain: str | None = None
    secure: bool = True
    http_only: bool = True
    same_site: SameSite = "lax"
    partitioned: bool = False
    max_chunks: int = 4
    _suffix: bytes = field(init=False, repr=False)
    _name_bytes: bytes = field(init=False, repr=False)
    # Cookie header -> what it holds: a browser sends the same header on every
    # request, so parsing it once saves the split and the checks on the hot path.
    _parsed: dict[bytes, CookieRead] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _TOKEN_NAME.fullmatch(name):
            raise ConfigurationError(
                f"cookie_name {name!r} is not a valid cookie name: use letters, digits and "
                "!#$%&'*+-.^_`|~ only (RFC 6265)"
            )
        same_site = str(self.same_site).lower()
        if same_site not in ("lax", "strict", "none"):
            raise ConfigurationError(
                f"same_site must be 'lax', 'strict' or 'none', got {self.same_site!r}"
            )
        object.__setattr__(self, "same_site", same_site)
        lowered = name.lower()
        if same_site == "none" and not self.secure:
            raise ConfigurationError(
                "same_site='none' requires https_only=True: browsers drop SameSite=None "
                "cookies without Secure"
            )
        if self.partitioned and not self.secure:
            raise ConfigurationError("partitioned=True requires https_only=True (CHIPS)")
        if lowered.startswith(("__secure-", "__host-")) and not self.secure:
            raise ConfigurationError(
                f"cookie_name {name!r} has a __Secure-/__Host- prefix, which requires "
                "https_only=True"
            )
        if lowered.startswith("__host-") and (self.domain is not None or self.path != "/"):
            raise ConfigurationError(
                f"cookie_name {name!r} has the __Host- prefix, which requires domain=None "
                "and path='/'"
            )
        if (
            not isinstance(self.path, str)
            or not self.path.startswith("/")
            or _PATH_FORBIDDEN.search(self.path)
        ):
            raise ConfigurationError(
                f"path {self.path!r} must start with '/' and contain no spaces, ';' or "
                "non-ASCII characters"
            )
        if self.domain is not None and not (
            isinstance(self.domain, str) and _DOMAIN.fullmatch(self.domain)
        ):
            raise ConfigurationError(f"domain {self.domain!r} is not a valid cookie domain")
        if not 1 <= self.max_chunks <= MAX_CHUNKS:
            raise ConfigurationError(f"max_cookie_chunks must be between 1 and {MAX_CHUNKS}")

        parts = [f"; Path={self.path}"]
        if self.domain is not None:
            parts.append(f"; Domain={self.domain}")
        if self.http_only:
            parts.append("; HttpOnly")
        if self.secure:
            parts.append("; Secure")
        parts.append(f"; SameSite={same_site.capitalize()}")
        if self.partitioned:
            parts.append("; Partitioned")
        object.__setattr__(self, "_suffix", "".join(parts).encode("latin-1"))
        object.__setattr__(self, "_name_bytes", name.encode("latin-1"))
        object.__setattr__(self, "_parsed", {})

    @property
    def max_value_size(self) -> int:
        """The longest cookie value that fits in ``max_chunks`` browser cookies."""
        return self.max_chunks * self._chunk_size()

    def _chunk_size(self) -> int:
        # name.NN= : leave room for two index digits.
        return BROWSER_COOKIE_LIMIT - len(self._name_bytes) - 4

    # -- reading ---------------------------------------------------------------

    def read(self, headers: Iterable[tuple[bytes, bytes]]) -> CookieRead:
        """Find the session cookie in raw ASGI headers. Never raises."""
        name = self._name_bytes
        found: list[bytes] | None = None
        for key, header in headers:
            if key == b"cookie" and name in header:
                if found is None:
                    found = [header]
                else:
                    found.append(header)
        if found is None:
            return _ABSENT
        return self.read_header(found[0] if len(found) == 1 else b"; ".join(found))

    def read_header(self, header: bytes) -> CookieRead:
        """:meth:`read` for the value of the one ``Cookie`` header that names the
        session cookie (or all such headers joined with ``"; "``)."""
        cache = self._parsed
        read = cache.get(header)
        if read is None:
            read = self._parse(header)
            if len(header) <= _CACHED_HEADER_LIMIT:
                if len(cache) >= _CACHE_ENTRIES:
                    cache.clear()  # a bound; refilled by the next requests
                cache[header] = read
        return read

    def _parse(self, header: bytes) -> CookieRead:
        name = self._name_bytes
        chunk_prefix = name + b"."
        value: bytes | None = None
        duplicate = False
        chunks: dict[int, bytes] = {}
        bad_chunk = False
        # Each name once, and only names we could have written: every one of them
        # may get an expiring Set-Cookie, so a header that repeats a name thousands
        # of times must not multiply the response's headers.
        names: dict[str, None] = {}
        for part in header.split(b";"):
            key, eq, raw = part.strip().partition(b"=")
            if not eq:
                continue
            key = key.strip()
            if key == name:
                names[self.name] = None
                if value is not None:
                    duplicate = True
                value = raw.strip()
            elif key.startswith(chunk_prefix):
                index_text = key[len(chunk_prefix) :]
                # Chunks are named name.0 to name.49: "name.01" is not one of ours.
                if (
                    not index_text.isdigit()
                    or len(index_text) > 2
                    or (len(index_text) == 2 and index_text[0] == 0x30)
                ):
                    continue
                index = int(index_text)
                if index >= MAX_CHUNKS:
                    continue
                names[key.decode("ascii")] = None
                if index >= self.max_chunks:
                    continue  # written under a higher max_cookie_chunks: expired next time
                if index in chunks:
                    bad_chunk = True
                chunks[index] = raw.strip()
        seen = tuple(names)
        if duplicate:
            return CookieRead(None, "duplicate session cookie", seen)
        if value is None:
            if not chunks:
                return CookieRead(None, None, seen)
            if bad_chunk or sorted(chunks) != list(range(len(chunks))):
                return CookieRead(None, "incomplete or repeated cookie chunks", seen)
            value = b"".join(chunks[i] for i in range(len(chunks)))
        if not value:
            return CookieRead(None, None, seen)
        if len(value) > self.max_value_size:
            return CookieRead(None, f"cookie value of {len(value)} bytes is too long", seen)
        if not _VALUE.fullmatch(value):
            return CookieRead(None, "cookie value has characters we never issue", seen)
        return CookieRead(value.decode("ascii"), None, seen)

    # -- writing ---------------------------------------------------------------

    def render(self, value: str, max_age: int | None, seen: Sequence[str] = ()) -> list[bytes]:
        """Set-Cookie values that store ``value``, chunked if it is over the browser
        limit, plus deletions of any chunk (or unchunked cookie) the request carried
        that the new value does not overwrite.

        Raises :class:`ValueError` if ``value`` needs more than ``max_chunks`` cookies.
        """
        raw = value.encode("ascii")
        attrs = self._suffix if max_age is None else b"; Max-Age=%d%s" % (max_age, self._suffix)
        name = self._name_bytes
        if len(name) + 1 + len(raw) <= BROWSER_COOKIE_LIMIT:
            out = [name + b"=" + raw + attrs]
            out.extend(self._expire(n) for n in seen if n != self.name)
            return out
        size = self._chunk_size()
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        if len(pieces) > self.max_chunks:
            raise ValueError(
                f"cookie value of {len(raw)} bytes needs {len(pieces)} cookies, over "
                f"max_cookie_chunks={self.max_chunks}"
            )
        written = {f"{self.name}.{i}" for i in range(len(pieces))}
        out = [b"%s.%d=%s%s" % (name, i, piece, attrs) for i, piece in enumerate(pieces)]
        out.extend(self._expire(n) for n in seen if n not in written)
        return out

    def render_delete(self, seen: Sequence[str] = ()) -> list[bytes]:
        """Set-Cookie values that expire the session cookie and every chunk seen."""
        names = dict.fromkeys([self.name, *seen])
        return [self._expire(n) for n in names]

    def _expire(self, name: str) -> bytes:
        return name.encode("latin-1") + b"=" + _EXPIRED + self._suffix

    def owns(self, set_cookie: bytes) -> bool:
        """Whether a Set-Cookie header value (set by the app) targets our cookie."""
        key = set_cookie.partition(b"=")[0].strip()
        return key == self._name_bytes or (
            key.startswith(self._name_bytes + b".") and key[len(self._name_bytes) + 1 :].isdigit()
        )
