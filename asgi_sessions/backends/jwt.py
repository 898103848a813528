"""JWTBackend: the whole session lives in a signed JWT in the cookie (no server state).

Token format (compact JWS, one per session cookie, chunked by the cookie codec when
it is over the browser limit; what ``jwt.encode``/``jwt.decode`` produce and accept):

* header: ``alg`` (the key's algorithm), ``kid`` (which configured key signed it),
  ``typ: "JWT"``;
* claims: ``aud`` (the configured audience), ``iss`` (if configured), ``sid`` (the
  session ID), ``iat`` (last refresh, whole seconds), ``exp``, ``crt`` (creation
  time), ``rot`` (last rotation), ``dat`` (the session data); and only when set,
  ``idi`` (per-session idle timeout, seconds), ``fix`` (fixed expiry), ``brs``
  (browser-session cookie) and ``uid`` (user ID).

The compact serialization is built and parsed here, with pyjwt's algorithm objects
doing the signing and verifying on keys prepared once: ``jwt.decode`` would re-run
its key-format detection and a per-character base64 check on every token.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

import jwt
from jwt.algorithms import Algorithm, has_crypto

from asgi_sessions._log import fingerprint, logger
from asgi_sessions.backends.base import Delta, SessionRecord
from asgi_sessions.errors import ConfigurationError, InvalidToken, SessionGone, SessionTooLarge
from asgi_sessions.policy import ExpiryPolicy, seconds
from asgi_sessions.serializers import JSONSerializer, Serializer

__all__ = ["JWTBackend", "JWTKey"]

_HMAC: Final = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"})
_ALGORITHMS: Final = _HMAC | _ASYMMETRIC
_KID: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Issued tokens are refused above this, and anything longer is rejected before any
# decoding: 16 full browser cookies, far beyond what proxies forward by default.
MAX_TOKEN_LENGTH: Final = 64 * 1024
# Our header is about 100 base64 characters; a bigger one is not ours.
_MAX_HEADER_LENGTH: Final = 512
# Times are seconds since the epoch, at most 10**12 (the year 33658): a deny-list
# TTL derived from a later one would be outside what Redis's SET PX accepts.
_MAX_TIME: Final = 10**12
_MAX_SID_LENGTH: Final = 128
_HMAC_MINIMUM: Final = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2
# The HMAC algorithms' hashes: for these the one-shot ``hmac.digest`` (what pyjwt's
# HMACAlgorithm computes with an ``hmac.new`` object) signs and verifies.
_HMAC_HASH: Final = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
# base64url <-> base64, for binascii's one-call codecs.
_FROM_URLSAFE: Final = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
_RAW_DATA: Final = "jwt.dat"  # key in SessionRecord.extra: the data's JSON as loaded
# Key in SessionRecord.extra: the session family a token carries in its ``fam`` claim
# (the hybrid backend's access tokens; plain JWT sessions have none).
_FAMILY: Final = "jwt.fam"
# Key in SessionRecord.extra, with revocation: the session's absolute deadline under
# the middleware's policy, which no token of the session outlives (its deny entry's end).
_DEADLINE: Final = "jwt.deadline"
# What a failed signature check may raise besides returning False (pyjwt's algorithm
# objects turn cryptography's InvalidSignature into False themselves).
_VERIFY_ERRORS: Final = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    RecursionError,
    NotImplementedError,
)


@dataclass(frozen=True, slots=True)
class JWTKey:
    """One signing or verifying key of a :class:`JWTBackend`.

    ``kid`` (1 to 64 characters of ``A-Z a-z 0-9 . _ -``) names the key in the
    token header. ``algorithm`` is one of HS256, HS384, HS512, RS256, RS384, RS512,
    PS256, ES256, ES384 or EdDSA; never ``none``.

    * HS*: ``key`` is the shared secret (``str`` or ``bytes``, at least as many
      bytes as the hash: 32 for HS256); ``public_key`` must stay ``None``.
    * asymmetric (needs ``pyjwt[crypto]``): ``key`` is the private key (PEM
      ``str``/``bytes`` or a ``cryptography`` key object), or ``None`` for a
      retired key that only verifies; ``public_key`` is the verifying key, derived
      from ``key`` when ``None``.

    The key material is validated when the backend is built; ``kid`` and
    ``algorithm`` are validated here.
    """

    kid: str
    key: Any = field(repr=False)
    algorithm: str = "HS256"
    public_key: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not _KID.fullmatch(self.kid):
            raise ConfigurationError(
                f"JWTKey kid {self.kid!r} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
            )
        if not isinstance(self.algorithm, str) or self.algorithm not in _ALGORITHMS:
            if isinstance(self.algorithm, str) and self.algorithm.lower() == "none":
                raise ConfigurationError(
                    f"JWTKey {self.kid!r}: algorithm 'none' means unsigned tokens, which "
                    "anyone could forge; use HS256 or an asymmetric algorithm"
                )
            raise ConfigurationError(
                f"JWTKey {self.kid!r}: algorithm {self.algorithm!r} is not supported; use "
                f"one of {', '.join(sorted(_ALGORITHMS))}"
            )


@dataclass(frozen=True, slots=True)
class _Key:
    """A configured key with its material parsed once and the header it signs under."""

    kid: str
    algorithm: str
    alg: Algorithm  # pyjwt's algorithm object: sign() and verify() on prepared keys
    signing: Any  # prepared private key or HMAC secret; None for a verify-only key
    verifying: Any  # prepared public key or HMAC secret
    # The base64url header segment of the tokens this key signs: exactly what
    # jwt.encode(..., algorithm=algorithm, headers={"kid": kid}) writes.
    header: bytes = field(init=False)

    def __post_init__(self) -> None:
        text = json.dumps(
            {"alg": self.algorithm, "kid": self.kid, "typ": "JWT"},
            separators=(",", ":"),
            sort_keys=True,
        )
        object.__setattr__(self, "header", _b64encode(text.encode()))


class _Verified:
    """What a verified token tells, enough to rebuild its record on a cache hit.

    Flat data (no nested list or dict) is kept as a dict and copied per hit; nested
    data is kept as JSON text and decoded per hit, so a request never shares a
    mutable object with the cache or with another request.
    """

    __slots__ = (
        "browser",
        "created",
        "data",
        "exp_limit",
        "family",
        "fixed",
        "idle",
        "issued",
        "nb_limit",
        "raw",
        "reissue",
        "rotated",
        "sid",
        "user",
    )

    def __init__(
        self,
        claims: dict[str, Any],
        data: dict[str, Any] | None,
        raw: str | None,
        reissue: bool,
        leeway: int,
    ) -> None:
        self.sid: str = claims["sid"]
        self.issued: float = claims["iat"]
        self.created: float = claims["crt"]
        self.rotated: float = claims["rot"]
        self.idle: int | None = claims.get("idi")
        self.fixed: float | None = claims.get("fix")
        self.browser: bool = claims.get("brs", False)
        self.user: str | None = claims.get("uid")
        self.family: str | None = claims.get("fam")
        self.data = data
        self.raw = raw
        self.reissue = reissue
        self.exp_limit: float = claims["exp"] + leeway
        nbf = claims.get("nbf")
        self.nb_limit: float = (self.issued if nbf is None else max(self.issued, nbf)) - leeway

    def record(self) -> SessionRecord:
        extra: dict[str, Any]
        if self.data is not None:
            data = self.data.copy()
            extra = {}
        else:
            assert self.raw is not None
            data = json.loads(self.raw)
            extra = {_RAW_DATA: self.raw}
        return SessionRecord(
            session_id=self.sid,
            data=data,
            created_at=self.created,
            last_seen=self.issued,
            rotated_at=self.rotated,
            idle_timeout=self.idle,
            fixed_expiry=self.fixed,
            browser_session=self.browser,
            user_id=self.user,
            reissue=self.reissue,
            extra=extra,
        )


class JWTBackend:
    """Client-side sessions: the data lives in a signed JWT in the cookie.

    Give exactly one of ``secret`` (one HS256 key, at least 32 bytes; its ``kid`` is
    a short SHA-256 prefix of it) or ``keys``. With ``keys`` the first key signs
    and every key verifies: to rotate, put the new key first and keep the old one
    after it until the longest session has expired. A token signed by an older key
    is re-issued under the first key on the response that reads it; a token whose
    ``kid`` is no longer configured is rejected.

    Verification pins the algorithm to the one configured for the token's ``kid``
    (never the token's own ``alg``), and requires ``typ: "JWT"``, exactly the
    configured ``aud`` (so other JWTs signed with the same key are not sessions),
    ``iss`` when ``issuer`` is set, and the session claims with strict types. Times
    are checked against the middleware's clock with ``leeway`` seconds of slack:
    past ``exp`` the token is expired (``load`` returns ``None``); ``iat`` or ``nbf``
    in the future make it invalid. Anything malformed or forged raises
    :class:`InvalidToken` and nothing else.

    Verified tokens are kept in a cache of at most ``cache_size`` entries (oldest
    evicted first; 0 disables it), keyed by the exact token, so a busy session is
    verified once per process; each hit gets its own copy of the data. Memory is
    about ``cache_size`` times the token plus data size.

    The whole session travels in every request: keep it small. A token over 4096
    bytes is split by the middleware into ``name.0``, ``name.1``, ... cookies (at
    most ``max_cookie_chunks``); ``save`` raises :class:`SessionTooLarge` for a token
    over ``MAX_TOKEN_LENGTH`` (64 KiB), which ``load`` would refuse.

    Without ``revocation``, tokens cannot be revoked: ``delete``, ``invalidate()``
    and ``rotate()`` replace or expire the browser's cookie, but a copy of an
    earlier token stays valid until its ``exp`` (at most the idle timeout after it
    was issued). Keep the idle timeout short, or give a Redis server.

    ``revocation`` (a Redis URL, ``redis.asyncio.Redis`` or ``RedisCluster``) makes
    logout final: ``delete`` (``invalidate()``, logout) puts the session ID on a deny
    list, ``rotate()`` does so after ``rotation_grace`` seconds (parallel requests
    with the old token still pass meanwhile), and :meth:`revoke_user` sets a per-user
    "not before" time that ends every session of the user last rotated before it
    (keep one with ``keep=``). Each request with a token then costs one Redis command
    (``MGET`` of the two entries, which share a Cluster slot), a write or refresh one
    more (the same ``MGET``: a request still running when its session was logged out
    or revoked issues no new token, and its response expires the cookie), and a
    failing Redis fails the request as for :class:`RedisBackend`. A deny entry lives
    until the session's absolute deadline (the middleware's ``absolute_timeout``
    after creation; ``max_session_age`` when ``load`` was given no policy), which
    no token carrying that session ID outlives; a user's "not before" lives
    ``max_session_age`` seconds, which must cover your longest session.
    Pass the middleware's ``clock`` when it has one: revocation times are compared
    with the times the middleware gives.
    """

    serializer: Serializer

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        keys: Sequence[JWTKey] | None = None,
        audience: str = "asgi-sessions",
        issuer: str | None = None,
        leeway: int | timedelta = 30,
        cache_size: int = 10_000,
        revocation: Any = None,
        revocation_prefix: str = "asgi_sessions:jwt:",
        rotation_grace: int = 5,
        max_session_age: int | timedelta = timedelta(days=30),
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (secret is None) == (keys is None):
            raise ConfigurationError(
                "JWTBackend needs exactly one of secret= (an HS256 secret) or keys= "
                f"(a list of JWTKey, the first one signs); {_hint(32)}"
            )
        if secret is not None:
            if not isinstance(secret, str | bytes):
                raise ConfigurationError("secret must be a str or bytes")
            raw = secret.encode() if isinstance(secret, str) else secret
            if len(raw) < _HMAC_MINIMUM["HS256"]:
                raise ConfigurationError(
                    f"secret is {len(raw)} bytes; an HS256 secret must be at least 32 random "
                    f"bytes: {_hint(32)}"
                )
            keys = [JWTKey(hashlib.sha256(raw).hexdigest()[:8], secret)]
        assert keys is not None
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence) or not keys:
            raise ConfigurationError("keys must be a non-empty list of JWTKey")
        prepared: dict[str, _Key] = {}
        for item in keys:
            if not isinstance(item, JWTKey):
                raise ConfigurationError(
                    f"keys must hold JWTKey objects, got {type(item).__name__}"
                )
            if item.kid in prepared:
                raise ConfigurationError(
                    f"two keys share kid {item.kid!r}; every kid must be unique"
                )
            prepared[item.kid] = _prepare(item)
        signer = prepared[keys[0].kid]
        if signer.signing is None:
            raise ConfigurationError(
                f"the first key ({signer.kid!r}) signs new tokens, so it needs a private "
                "key; verify-only keys (key=None) may only follow it"
            )
        if not isinstance(audience, str) or not audience:
            raise ConfigurationError("audience must be a non-empty str")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ConfigurationError("issuer must be a non-empty str or None")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size must be an int >= 0 (0 disables the cache)")

        self.serializer = JSONSerializer()
        self.audience = audience
        self.issuer = issuer
        self.leeway = seconds(leeway, "leeway")
        self.cache_size = cache_size
        self._keys = prepared
        self._signer = signer
        self._signature_size: int | None = None  # the signer's, found on first need
        # Our own header segments, byte for byte: the usual token skips header parsing.
        self._headers = {key.header: key for key in prepared.values()}
        # OrderedDict: popitem(last=False) is O(1), where deleting a plain dict's
        # first key rescans the deleted slots at its front on every eviction.
        self._cache: OrderedDict[str, _Verified] = OrderedDict()
        self._encoder = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
        )
        if rotation_grace < 0:
            raise ConfigurationError("rotation_grace must not be negative (0 disables it)")
        self.rotation_grace = rotation_grace
        self.max_session_age = seconds(max_session_age, "max_session_age")
        self.clock = clock  # the middleware's: revocation times are compared with its now
        self._revocation: Any = None
        if revocation is not None:
            try:
                from asgi_sessions.backends.redis import RedisBackend
            except ImportError as exc:  # pragma: no cover - the "redis" extra is missing
                raise ConfigurationError(
                    f"revocation needs the redis extra (pip install 'asgi-sessions[redis]'): {exc}"
                ) from None
            # Its client handling: timeouts, a bounded retry, errors as BackendUnavailable.
            self._revocation = RedisBackend(revocation, prefix=revocation_prefix)

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
        # ip/user_agent: a refresh needs a new token, issued by touch() on the
        # response, so there is nothing to fold into the load.
        if type(token) is not str:
            raise InvalidToken("token is not a str")
        entry = self._cache.get(token)
        if entry is None:
            entry = self._verify(token)
            if now > entry.exp_limit:
                return None
            if now < entry.nb_limit:
                raise InvalidToken("token is not valid yet (iat or nbf in the future)")
            if entry.reissue:
                logger.info(
                    "session token %s is signed by a retired key; re-issuing it under %r",
                    fingerprint(token),
                    self._signer.kid,
                )
            self._remember(token, entry)
        else:
            if now > entry.exp_limit:
                del self._cache[token]
                return None
            if now < entry.nb_limit:
                raise InvalidToken("token is not valid yet (iat or nbf in the future)")
        if self._revocation is None:
            return entry.record()
        if await self._revoked(entry, now):
            logger.info("session token %s was revoked", fingerprint(token))
            return None
        record = entry.record()
        if policy is not None:
            record.extra[_DEADLINE] = policy.absolute_deadline(record)
        return record

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
        # The token carries everything, so the full data is written and delta unused.
        if token is not None and self._revocation is not None:
            old = await self._still_live(token, now)
            if rotate and old is not None:
                await self._deny(old, record, at=now + self.rotation_grace)
        if token is None or rotate or not record.session_id:
            record.session_id = secrets.token_urlsafe(16)
        raw = self.serializer.dumps(record.data).decode()
        return self._issue(record, raw, now=now, ttl=ttl)

    async def touch(self, token: str, record: SessionRecord, *, now: float, ttl: int) -> str | None:
        # The data goes back out exactly as it came in: like a server-side touch, a
        # nested value mutated in place without mark_modified() is not persisted.
        if self._revocation is not None:
            await self._still_live(token, now)
        raw = record.extra.get(_RAW_DATA)
        if type(raw) is not str:
            raw = self.serializer.dumps(record.data).decode()
        if not record.session_id:
            record.session_id = secrets.token_urlsafe(16)
        return self._issue(record, raw, now=now, ttl=ttl)

    async def delete(self, token: str, record: SessionRecord) -> None:
        # Without a deny list there is no server state: the middleware expires the
        # cookie, and a copy of the token stays valid until its exp.
        if self._revocation is None:
            return None
        try:
            entry = self._cache.get(token) or self._verify(token)
        except InvalidToken:
            return None
        await self._deny(entry, record, at=None)

    async def revoke_user(self, user_id: str, *, keep: str | None = None) -> None:
        """End every session of ``user_id`` last rotated (logged in) before now,
        except the one whose ID is ``keep``. Needs ``revocation``."""
        revocation = self._revocation
        if revocation is None:
            raise ConfigurationError("revoke_user() needs JWTBackend(revocation=<Redis>)")
        value = f"{self.clock()!r} {keep or ''}"
        await revocation._run(
            revocation.client.set(self._user_key(user_id), value, ex=self.max_session_age)
        )

    async def aclose(self) -> None:
        self._cache.clear()
        if self._revocation is not None:
            await self._revocation.aclose()

    # -- revocation --------------------------------------------------------------

    def _user_key(self, user_id: str | None) -> str:
        # The braces are a Cluster hash tag: a token's two entries share one slot, so
        # a load reads both with one MGET.
        tag = "-" if user_id is None else hashlib.sha256(user_id.encode()).hexdigest()[:32]
        return f"{self._revocation.prefix}{{{tag}}}:u"

    def _deny_key(self, entry: _Verified) -> str:
        digest = hashlib.sha256(entry.sid.encode()).hexdigest()[:32]
        return self._user_key(entry.user)[:-1] + "d:" + digest

    async def _deny(self, entry: _Verified, record: SessionRecord, *, at: float | None) -> None:
        """Deny the token's session ID from ``at`` (now when None) for as long as any
        token with that ID can live: a request that was still running issued one
        with a later ``exp``, and its Set-Cookie may reach the browser last."""
        now = self.clock()
        deadline = record.extra.get(_DEADLINE)
        if type(deadline) is not float and type(deadline) is not int:
            deadline = entry.created + self.max_session_age
        ttl = math.ceil(max(entry.exp_limit, deadline + self.leeway) - now)
        if ttl <= 0:
            return
        revocation = self._revocation
        value = repr(now if at is None else at)
        await revocation._run(revocation.client.set(self._deny_key(entry), value, ex=ttl))

    async def _still_live(self, token: str, now: float) -> _Verified | None:
        """The verified entry of the token a commit re-issues (``None`` if it does
        not verify); raises :class:`SessionGone` if the session was logged out or
        revoked since the request loaded it, so nothing brings it back."""
        try:
            entry = self._cache.get(token) or self._verify(token)
        except InvalidToken:
            return None
        if await self._revoked(entry, now):
            raise SessionGone("the session was logged out or revoked during the request")
        return entry

    async def _revoked(self, entry: _Verified, now: float) -> bool:
        revocation = self._revocation
        denied, user = await revocation._run(
            revocation.client.mget(self._deny_key(entry), self._user_key(entry.user))
        )
        try:
            if denied is not None and now >= float(denied):
                return True
            if user is not None and entry.user is not None:
                not_before, _, keep = user.decode().partition(" ")
                if entry.rotated < float(not_before) and entry.sid != keep:
                    return True
        except (ValueError, UnicodeDecodeError):
            logger.warning("unreadable revocation entry for a session; treated as revoked")
            return True
        return False

    # -- internals -----------------------------------------------------------------

    def _remember(self, token: str, entry: _Verified) -> None:
        cache = self._cache
        if len(cache) >= self.cache_size:
            if not self.cache_size:
                return
            cache.popitem(last=False)
        cache[token] = entry

    def _issue(self, record: SessionRecord, raw: str, *, now: float, ttl: int) -> str:
        claims = self._claims(record, now=now, ttl=ttl)
        payload = self._payload(claims, raw)
        signer = self._signer
        signing_input = signer.header + b"." + _b64encode(payload)
        digest = _HMAC_HASH.get(signer.algorithm)
        if digest is not None:
            signature = hmac.digest(signer.signing, signing_input, digest)
        else:
            signature = signer.alg.sign(signing_input, signer.signing)
        token = (signing_input + b"." + _b64encode(signature)).decode("ascii")
        if len(token) > MAX_TOKEN_LENGTH:
            raise SessionTooLarge(_too_large(len(token)))
        if self.cache_size:
            # The next request with this token is then a cache hit. The cache gets its
            # own objects: the app may still hold the session's nested values.
            if _nested(record.data):
                entry = _Verified(claims, None, raw, False, self.leeway)
            else:
                entry = _Verified(claims, dict(record.data), None, False, self.leeway)
            self._remember(token, entry)
        return token

    def _token_length(self, claims: dict[str, Any], raw: str) -> int:
        """The length of the token ``_issue`` would sign for ``claims`` and ``raw``,
        without signing it: the signatures of a key all have one length."""
        size = self._signature_size
        if size is None:
            signer = self._signer
            digest = _HMAC_HASH.get(signer.algorithm)
            if digest is not None:
                size = hashlib.new(digest).digest_size
            else:
                size = len(signer.alg.sign(b"", signer.signing))
            self._signature_size = size
        payload = len(self._payload(claims, raw))
        return len(self._signer.header) + 1 + _b64_length(payload) + 1 + _b64_length(size)

    def _payload(self, claims: dict[str, Any], raw: str) -> bytes:
        head = self._encoder.encode(claims)
        # raw is the serializer's checked JSON object text: splice it in rather than
        # encoding the data a second time.
        return f'{head[:-1]},"dat":{raw}}}'.encode()

    def _claims(self, record: SessionRecord, *, now: float, ttl: int) -> dict[str, Any]:
        claims: dict[str, Any] = {"aud": self.audience}
        if self.issuer is not None:
            claims["iss"] = self.issuer
        claims["sid"] = record.session_id
        # Flooring iat (and so last_seen) can only bring the idle deadline earlier.
        claims["iat"] = math.floor(record.last_seen)
        claims["exp"] = math.ceil(now + ttl)
        claims["crt"] = _compact(record.created_at)
        claims["rot"] = _compact(record.rotated_at)
        if record.idle_timeout is not None:
            claims["idi"] = record.idle_timeout
        if record.fixed_expiry is not None:
            claims["fix"] = _compact(record.fixed_expiry)
        if record.browser_session:
            claims["brs"] = True
        if record.user_id is not None:
            claims["uid"] = record.user_id
        family = record.extra.get(_FAMILY)
        if family is not None:
            claims["fam"] = family
        return claims

    def _verify(self, token: str) -> _Verified:
        """Check the token fully (shape, header, signature, claims); never raises
        anything but :class:`InvalidToken`."""
        if len(token) > MAX_TOKEN_LENGTH or not _SHAPE.fullmatch(token):
            raise InvalidToken("not a JWT of this backend (shape, charset or length)")
        # _SHAPE: three non-empty segments of the base64url alphabet, so ASCII.
        raw = token.encode("ascii")
        head, body, crypto = raw.split(b".")
        key = self._headers.get(head)
        if key is None:
            key = self._key_for(head)
        signature = _b64decode(crypto, "signature")
        signing_input = raw[: len(head) + 1 + len(body)]
        digest = _HMAC_HASH.get(key.algorithm)
        try:
            if digest is not None:
                # Constant-time, as pyjwt's HMACAlgorithm.verify compares.
                valid = hmac.compare_digest(
                    hmac.digest(key.verifying, signing_input, digest), signature
                )
            else:
                valid = key.alg.verify(signing_input, key.verifying, signature)
        except _VERIFY_ERRORS as exc:
            raise InvalidToken(f"JWT rejected: {type(exc).__name__}") from None
        if valid is not True:
            raise InvalidToken("JWT signature does not verify")
        # Only now is the payload decoded: nothing an attacker wrote is parsed before
        # the signature has been checked.
        try:
            # From str: json.loads(bytes) first guesses the encoding, and JSON text in
            # a JWS is UTF-8 (RFC 7519 section 7.2).
            claims = json.loads(_b64decode(body, "payload").decode())
        except (ValueError, RecursionError):
            raise InvalidToken("JWT payload is not JSON") from None
        if type(claims) is not dict:
            raise InvalidToken("JWT claims are not an object")
        problem = self._check_claims(claims)
        if problem is not None:
            raise InvalidToken(f"JWT claims rejected: {problem}")
        data: dict[str, Any] = claims["dat"]
        reissue = key.kid != self._signer.kid
        if _nested(data):
            text = self._encoder.encode(data)
            return _Verified(claims, None, text, reissue, self.leeway)
        return _Verified(claims, data, None, reissue, self.leeway)

    def _key_for(self, segment: bytes) -> _Key:
        """The configured key named by a (not yet verified) header that is not byte
        for byte one of ours, which must still say what ours says: typ JWT, the key's
        own alg, no crit/b64."""
        if len(segment) > _MAX_HEADER_LENGTH:
            raise InvalidToken("JWT header is too long")
        try:
            header = json.loads(_b64decode(segment, "header"))
        except (ValueError, RecursionError):
            raise InvalidToken("JWT header is not base64url JSON") from None
        if type(header) is not dict:
            raise InvalidToken("JWT header is not an object")
        kid = header.get("kid")
        key = self._keys.get(kid) if type(kid) is str else None
        if key is None:
            raise InvalidToken("JWT kid is missing or names no configured key")
        if header.get("alg") != key.algorithm:
            raise InvalidToken("JWT alg is not the algorithm configured for its kid")
        if header.get("typ") != "JWT" or "crit" in header or "b64" in header:
            raise InvalidToken("JWT header is not a session token header")
        return key

    def _check_claims(self, claims: dict[str, Any]) -> str | None:
        """What is wrong with verified claims, or None. Besides the session claims
        this is what ``jwt.decode`` checked: ``aud`` is exactly the audience (not a
        list), ``iss`` is the issuer when one is set, ``sub`` and ``jti`` are strings
        when present. Times are checked by the caller against the injected clock."""
        sid = claims.get("sid")
        if type(sid) is not str or not 0 < len(sid) <= _MAX_SID_LENGTH:
            return "sid"
        if claims.get("aud") != self.audience:
            return "aud"
        if self.issuer is not None and claims.get("iss") != self.issuer:
            return "iss"
        if "sub" in claims and type(claims["sub"]) is not str:
            return "sub"
        if "jti" in claims and type(claims["jti"]) is not str:
            return "jti"
        for name in ("exp", "iat", "crt", "rot"):
            if not _is_time(claims.get(name)):
                return name
        if "nbf" in claims and not _is_time(claims["nbf"]):
            return "nbf"
        if type(claims.get("dat")) is not dict:
            return "dat"
        if "idi" in claims:
            idle = claims["idi"]
            if type(idle) is not int or not 0 < idle <= _MAX_TIME:
                return "idi"
        if "fix" in claims and not _is_time(claims["fix"]):
            return "fix"
        if "brs" in claims and claims["brs"] is not True:
            return "brs"
        if "uid" in claims and type(claims["uid"]) is not str:
            return "uid"
        if "fam" in claims and (
            type(claims["fam"]) is not str or not 0 < len(claims["fam"]) <= _MAX_SID_LENGTH
        ):
            return "fam"
        return None


def _too_large(length: int) -> str:
    return (
        f"the session token would be {length} bytes, over the limit of {MAX_TOKEN_LENGTH}; "
        "store less in the session or use a server-side backend"
    )


def _b64_length(size: int) -> int:
    """The length of ``size`` bytes in unpadded base64url."""
    return (4 * size + 2) // 3


def _b64encode(raw: bytes) -> bytes:
    """Base64url without padding (RFC 7515 section 2)."""
    return binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE).rstrip(b"=")


def _b64decode(segment: bytes, name: str) -> bytes:
    """The bytes of a canonical unpadded base64url segment whose alphabet ``_SHAPE``
    has checked; anything else raises :class:`InvalidToken`: a length of 1 mod 4, or
    unused low bits set in the last character (which decode to the same bytes as the
    canonical character, so a token would have several spellings)."""
    if len(segment) % 4 == 1:
        raise InvalidToken(f"JWT {name} is not base64url (length)")
    try:
        decoded = binascii.a2b_base64(
            segment.translate(_FROM_URLSAFE) + b"=" * (-len(segment) % 4), strict_mode=True
        )
    except (ValueError, binascii.Error):
        raise InvalidToken(f"JWT {name} is not base64url") from None
    if _b64encode(decoded) != segment:
        raise InvalidToken(f"JWT {name} is not canonical base64url")
    return decoded


def _is_time(value: Any) -> bool:
    kind = type(value)
    if kind is int:
        return bool(0 <= value <= _MAX_TIME)
    return kind is float and math.isfinite(value) and 0 <= value <= _MAX_TIME


def _compact(value: float) -> float:
    """An integral float as an int, so the token says ``1700000000`` and not
    ``1700000000.0``; other values are kept exactly."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _nested(data: dict[str, Any]) -> bool:
    """Whether ``data`` holds a list or dict, which a shallow copy would share."""
    for value in data.values():
        kind = type(value)
        if kind is dict or kind is list:
            return True
    return False


# -- key preparation ------------------------------------------------------------------


def _hint(size: int) -> str:
    return f'generate one with: python -c "import secrets; print(secrets.token_urlsafe({size}))"'


def _prepare(item: JWTKey) -> _Key:
    algorithm = item.algorithm
    if algorithm in _HMAC:
        return _prepare_hmac(item)
    if not has_crypto:
        raise ConfigurationError(
            f"JWTKey {item.kid!r}: {algorithm} needs the cryptography package; install "
            "asgi-sessions[jwt-crypto] (pyjwt[crypto])"
        )
    algo = jwt.get_algorithm_by_name(algorithm)
    signing: Any = None
    if item.key is not None:
        try:
            signing = algo.prepare_key(item.key)
        except Exception as exc:
            raise ConfigurationError(
                f"JWTKey {item.kid!r}: key is not a usable {algorithm} private key: {exc}"
            ) from exc
        if not callable(getattr(signing, "sign", None)):
            raise ConfigurationError(
                f"JWTKey {item.kid!r}: key must be a {algorithm} private key; give a public "
                "key as public_key= with key=None for a verify-only key"
            )
    if item.public_key is not None:
        try:
            verifying = algo.prepare_key(item.public_key)
        except Exception as exc:
            raise ConfigurationError(
                f"JWTKey {item.kid!r}: public_key is not a usable {algorithm} key: {exc}"
            ) from exc
        if callable(getattr(verifying, "sign", None)):
            verifying = verifying.public_key()
        if signing is not None and _spki(verifying) != _spki(signing.public_key()):
            raise ConfigurationError(
                f"JWTKey {item.kid!r}: public_key does not belong to the private key"
            )
    elif signing is not None:
        verifying = signing.public_key()
    else:
        raise ConfigurationError(
            f"JWTKey {item.kid!r}: give a private key (key=) or, for a verify-only key, public_key="
        )
    problem = algo.check_key_length(verifying)
    if problem:
        raise ConfigurationError(f"JWTKey {item.kid!r}: {problem}")
    return _Key(item.kid, algorithm, algo, signing, verifying)


def _prepare_hmac(item: JWTKey) -> _Key:
    minimum = _HMAC_MINIMUM[item.algorithm]
    if item.public_key is not None:
        raise ConfigurationError(
            f"JWTKey {item.kid!r}: {item.algorithm} is a shared-secret algorithm and takes "
            "no public_key (did you mean an RS/PS/ES/EdDSA algorithm?)"
        )
    if not isinstance(item.key, str | bytes) or not item.key:
        raise ConfigurationError(
            f"JWTKey {item.kid!r}: {item.algorithm} needs a secret (str or bytes); "
            + _hint(minimum)
        )
    algo = jwt.get_algorithm_by_name(item.algorithm)
    try:
        secret = algo.prepare_key(item.key)
    except jwt.InvalidKeyError as exc:
        # e.g. a PEM public key given as an HMAC secret: the algorithm-confusion setup.
        raise ConfigurationError(f"JWTKey {item.kid!r}: {exc}") from None
    if len(secret) < minimum:
        raise ConfigurationError(
            f"JWTKey {item.kid!r}: the {item.algorithm} secret is {len(secret)} bytes; it "
            f"must be at least {minimum} random bytes: {_hint(minimum)}"
        )
    return _Key(item.kid, item.algorithm, algo, secret, secret)


def _spki(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der: bytes = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return der
