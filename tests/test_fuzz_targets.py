"""Fuzz targets (issue 7, item 1), each driving the whole middleware where it can:

* the Cookie header parser: arbitrary and near-valid headers against a model of the
  reading rules, and through the middleware (at most one Set-Cookie per cookie we
  could have written);
* the JWT load path: random, mutated and *correctly signed* tokens whose headers
  carry odd ``alg``/``kid``/``typ``/``crit``/``b64``/``jku``/``x5u``/``jwk``/``x5c``
  values and whose claims are arbitrary JSON (NaN, huge numbers, deep nesting); the
  ``jku``/``x5u`` URLs point at a loopback listener that must never be contacted;
* the msgpack load path: the stored Redis record of a live session replaced by random
  bytes, mutations of its real bytes, well-formed msgpack of the wrong shape, huge
  declared lengths and deep nesting, in every field the load reads (the view and the
  refresh schedule), for the Redis backend and the hybrid backend's refresh.

Every request must get the app's 200 (never a 500 or a 503 from healthy Redis), an
exception never escapes, and the Python memory a request allocates (tracemalloc's
peak) stays under ``MEMORY_BOUND``.

Size: ``ASGI_SESSIONS_FUZZ_EXAMPLES`` examples per target (default 200, for CI). With
``ASGI_SESSIONS_FUZZ_SECONDS`` set, each target instead runs fresh hypothesis runs of
that many examples one after another, without the example database, until that many
seconds have passed; the figures (examples, requests, peak memory) are printed in the
run's "figures" section.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import math
import os
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_sessions import HybridBackend, JWTBackend, SessionMiddleware
from asgi_sessions.backends._tokens import token_id
from asgi_sessions.backends.redis import RedisBackend
from asgi_sessions.cookies import MAX_CHUNKS, CookieSettings
from asgi_sessions.errors import SerializationError
from asgi_sessions.msgpack_serializer import MsgpackSerializer
from tests.asgi import http_scope
from tests.figures import report

EXAMPLES = int(os.environ.get("ASGI_SESSIONS_FUZZ_EXAMPLES", "200"))
SECONDS = float(os.environ.get("ASGI_SESSIONS_FUZZ_SECONDS", "0"))
SECRET = "fuzz-target-secret-of-at-least-32-bytes!"
# Python memory one request may allocate at its peak, inputs included (the largest
# generated input is about 70 KB): a hostile length or depth that allocated for
# what it declares would blow far past this.
MEMORY_BOUND = 4 * 1024 * 1024

# The targets test what hostile input does, not latency: on a loaded machine (a long
# run shares its cores) the default 0.5 s socket timeout fired once, a correct 503.
_PATIENT: dict[str, Any] = {"socket_timeout": 5.0, "operation_timeout": 10.0}

_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


class Target:
    """One target's loop: a fresh event loop, the figures, and the memory check."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.name = name
        self._own_loop = loop is None
        self.loop = asyncio.new_event_loop() if loop is None else loop
        self.examples = 0
        self.requests = 0
        self.peak = 0

    def request(self, app: Any, target: str, cookie: bytes | None) -> tuple[int, list[bytes], Any]:
        """One GET through ``app``: status, Set-Cookie values, JSON body."""
        path, _, query = target.partition("?")
        headers = [(b"user-agent", b"fuzz/1.0")]
        if cookie is not None:
            headers.append((b"cookie", cookie))
        scope = http_scope(path, query, headers)
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        self.loop.run_until_complete(app(scope, receive, send))
        used = tracemalloc.get_traced_memory()[1] - before
        self.peak = max(self.peak, used)
        assert used < MEMORY_BOUND, f"one request allocated {used} bytes at its peak"
        self.requests += 1
        start = sent[0]
        cookies = [v for k, v in start.get("headers", []) if k == b"set-cookie"]
        body = b"".join(m.get("body", b"") for m in sent[1:])
        try:
            return start["status"], cookies, json.loads(body) if body else None
        except ValueError:
            return start["status"], cookies, body  # not the app's answer: the status says

    def run(self, body: Callable[..., None], examples: int = EXAMPLES, **strategies: Any) -> None:
        """``body`` as a hypothesis test of ``strategies``, once (CI), or for a long
        run fresh runs one after another (each with its own random seed and no
        example database) until ``SECONDS`` have passed."""
        started = time.monotonic()
        once = settings(_SETTINGS, max_examples=examples)
        tracemalloc.start()
        try:
            once(given(**strategies)(body))()
            while SECONDS and time.monotonic() - started < SECONDS:
                settings(once, database=None)(given(**strategies)(body))()
        finally:
            tracemalloc.stop()
        report(
            f"fuzz {self.name}",
            examples=self.examples,
            requests=self.requests,
            seconds=round(time.monotonic() - started),
            peak_request_kib=round(self.peak / 1024),
        )

    def close(self) -> None:
        if self._own_loop:
            self.loop.close()


async def data_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/read answers the session as JSON (values that JSON has no type for as their
    repr), /set?k=v writes, /touch writes nothing but is a request with a session."""
    session = scope["session"]
    if scope["path"] == "/set":
        for key, value in parse_qsl(scope["query_string"].decode()):
            session[key] = value
    body = json.dumps(dict(session), default=repr).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _session_cookie(cookies: list[bytes], name: bytes = b"session") -> bytes:
    for value in cookies:
        key, _, rest = value.partition(b"=")
        if key == name:
            return rest.split(b";", 1)[0]
    raise AssertionError(f"no {name!r} cookie in {cookies}")


# -- the Cookie header parser --------------------------------------------------

_VALUE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_NAMES = st.sampled_from(
    [
        *("session", "session.0", "session.1", "session.3", "session.4", "session.00"),
        *("session.99", "session.", "session.-1", "session.x", "Session", " session"),
        *("sessionx", "other"),
    ]
)
_VALUES = st.one_of(
    st.text(alphabet=_VALUE_CHARS, max_size=80),
    st.text(alphabet=_VALUE_CHARS, min_size=4000, max_size=4200),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["", " ", '"quoted"', "a=b", "a b", "\x00", "\xff"]),
)
_PARTS = st.one_of(
    st.tuples(_NAMES, st.sampled_from(["=", " = ", "= ", "=="]), _VALUES).map("".join),
    st.text(max_size=40),
)
COOKIE_HEADERS = st.one_of(
    st.lists(_PARTS, max_size=8).map(lambda p: "; ".join(p).encode("latin-1", "replace")),
    st.lists(_PARTS, max_size=8).map(lambda p: ";".join(p).encode("latin-1", "replace")),
    st.binary(max_size=200),
    # Many chunk cookies: the response may expire only cookies we could have set.
    st.integers(1, 2000).map(
        lambda n: "; ".join(f"session.{i % 100}=x" for i in range(n)).encode()
    ),
    st.integers(1, 2000).map(lambda n: b"; ".join([b"session.1=x"] * n)),
)


def _model(header: bytes, max_chunks: int) -> str | None:
    """The session cookie's value by the documented reading rules, from scratch."""
    plain: list[bytes] = []
    chunks: dict[bytes, list[bytes]] = {}
    for part in header.split(b";"):
        if b"=" not in part:
            continue
        key, raw = part.strip().split(b"=", 1)
        key = key.strip()
        if key == b"session":
            plain.append(raw.strip())
        elif (
            key.startswith(b"session.")
            and key[8:].isdigit()
            and len(key[8:]) <= 2
            and str(int(key[8:])).encode() == key[8:]  # name.01 is not a chunk of ours
            and int(key[8:]) < max_chunks  # past it: left out (expired on the next write)
        ):
            chunks.setdefault(key[8:], []).append(raw.strip())
    if len(plain) > 1:
        return None
    if plain:
        value = plain[0]
    else:
        indices = [int(k) for k in chunks]
        if not chunks or any(len(v) > 1 for v in chunks.values()):
            return None
        if len(set(indices)) != len(indices) or sorted(indices) != list(range(len(indices))):
            return None
        value = b"".join(chunks[k][0] for k in sorted(chunks, key=int))
    if not value or len(value) > max_chunks * (4096 - len("session") - 4):
        return None
    if any(chr(c) not in _VALUE_CHARS for c in value):
        return None
    return value.decode()


@pytest.fixture(scope="module")
def jwt_app() -> Any:
    return SessionMiddleware(data_app, backend=JWTBackend(SECRET))


def test_fuzz_cookie_header_parser(jwt_app: Any) -> None:
    """Against the model of the reading rules, and through the middleware: a 200 with
    an empty session (a read) or just what the request wrote, and no more Set-Cookie
    values than the cookies we could have written (the plain one and the chunks of the
    highest max_cookie_chunks), each name once, whatever the request repeats."""
    target = Target("cookie header")
    codec = CookieSettings(name="session")

    def fuzz(header: bytes, path: str) -> None:
        target.examples += 1
        read = codec.read_header(header)
        assert read.value == _model(header, codec.max_chunks)
        assert read.value is None or read.problem is None
        assert len(read.names) <= 1 + MAX_CHUNKS
        status, cookies, body = target.request(jwt_app, path, header)
        assert status == 200
        assert body == ({} if path == "/read" else {"k": "v"})
        names = [value.partition(b"=")[0] for value in cookies]
        assert len(names) <= 1 + MAX_CHUNKS
        assert len(set(names)) == len(names)
        if path == "/read":
            for value in cookies:
                assert b"Max-Age=0" in value  # only expirations: nothing was stored

    try:
        target.run(fuzz, header=COOKIE_HEADERS, path=st.sampled_from(["/read", "/set?k=v"]))
    finally:
        target.close()


# -- the JWT load path ---------------------------------------------------------


class Listener:
    """A loopback TCP listener that counts connections: the jku/x5u target."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close()


_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _odd_header(kid: str, alg: str, url: str) -> st.SearchStrategy[dict[str, Any]]:
    odd = st.one_of(_JSON, st.just(url), st.just(f"{url}/keys.json"))
    return st.fixed_dictionaries(
        {},
        optional={
            "alg": st.one_of(
                st.sampled_from(
                    [
                        *(alg, "none", "None", "NONE", "HS256", "HS384", "HS512", "RS256"),
                        *("ES256", "EdDSA", "PS256", "", "hs256", alg + " "),
                    ]
                ),
                _JSON,
            ),
            "kid": st.one_of(
                st.sampled_from([kid, kid + "x", "", "../../etc/passwd", "0", "null", kid * 3]),
                _JSON,
            ),
            "typ": st.one_of(st.sampled_from(["JWT", "jwt", "at+jwt", "JOSE", ""]), _JSON),
            "crit": st.one_of(st.just(["exp"]), st.just([]), st.just(["b64"]), _JSON),
            "b64": st.one_of(st.booleans(), _JSON),
            "jku": odd,
            "x5u": odd,
            "jwk": st.one_of(st.just({"kty": "oct", "k": _b64(b"attacker key")}), _JSON),
            "x5c": st.one_of(st.just(["MIIB"]), _JSON),
            "cty": st.one_of(st.just("JWT"), _JSON),
            "zip": st.one_of(st.just("DEF"), _JSON),
        },
    )


def _odd_claims(now: int) -> st.SearchStrategy[dict[str, Any]]:
    times = st.one_of(
        st.just(now),
        st.just(now + 3600),
        st.just(now - 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**64), max_value=2**64),
        _JSON,
    )
    deep = st.integers(1, 200).map(lambda n: {"d": json.loads("[" * n + "]" * n)})
    return st.fixed_dictionaries(
        {},
        optional={
            "aud": st.one_of(
                st.sampled_from(["asgi-sessions", "asgi-sessions-access", ["asgi-sessions"]]),
                _JSON,
            ),
            "sid": st.one_of(st.just("a" * 32), st.text(max_size=200), _JSON),
            "iat": times,
            "exp": times,
            "nbf": times,
            "crt": times,
            "rot": times,
            "fix": times,
            "dat": st.one_of(st.dictionaries(st.text(max_size=10), _JSON, max_size=5), deep, _JSON),
            "idi": st.one_of(st.integers(), _JSON),
            "brs": st.one_of(st.just(True), _JSON),
            "uid": st.one_of(st.text(max_size=20), _JSON),
            "fam": st.one_of(st.text(max_size=200), _JSON),
            "iss": _JSON,
            "sub": _JSON,
            "jti": _JSON,
        },
    )


# Payloads too deep for json.dumps to write: raw JSON text.
_DEEP_PAYLOADS = st.integers(1, 30_000).map(
    lambda n: RawJSON('{"sid":"' + "a" * 32 + '","dat":{"d":' + "[" * n + "]" * n + "}}")
)


class RawJSON(str):
    """JSON text to sign as it is."""


def _sign(header: Any, claims: Any, secret: str) -> str:
    """A compact JWS of ``header`` and ``claims`` (any JSON, NaN included, as
    Python's json writes it, or :class:`RawJSON` text) with a valid HS256 signature
    under ``secret``."""
    payload = claims if isinstance(claims, RawJSON) else json.dumps(claims)
    signing_input = (_b64(json.dumps(header).encode()) + "." + _b64(payload.encode())).encode()
    signature = hmac.digest(secret.encode(), signing_input, "sha256")
    return signing_input.decode() + "." + _b64(signature)


def _mutate(token: str, draw: Any) -> str:
    raw = bytearray(token.encode())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "swap", "truncate", "dup"]))
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            raw.insert(at, ord(draw(st.sampled_from(_VALUE_CHARS + "=+/ "))))
        elif kind == "delete":
            del raw[at]
        elif kind == "swap":
            parts = bytes(raw).split(b".")
            draw(st.randoms()).shuffle(parts)
            raw = bytearray(b".".join(parts))
        elif kind == "truncate":
            del raw[at:]
        else:
            raw[at:at] = raw[at : at + draw(st.integers(1, 64))]
    return raw.decode("latin-1")


@pytest.fixture(params=["jwt", "hybrid"])
def token_backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, Any]]:
    loop = asyncio.new_event_loop()
    if request.param == "jwt":
        backend: Any = JWTBackend(SECRET)
    else:
        store = RedisBackend(
            request.getfixturevalue("redis_url"),
            prefix=f"fuzz{uuid.uuid4().hex[:8]}:",
            **_PATIENT,
        )
        backend = HybridBackend(store, secret=SECRET)
    yield request.param, backend, loop
    loop.run_until_complete(backend.aclose())
    loop.close()


def test_fuzz_jwt_load_path(token_backend: tuple[str, Any, Any]) -> None:
    """Random, mutated and validly signed odd tokens: a 200 every time, an empty
    session unless the token is one the backend accepts, and then the session holds
    exactly the token's data; a header that names another algorithm, a ``crit`` or
    ``b64``, or a ``typ`` other than JWT is refused even with a valid signature; the
    ``jku``/``x5u`` URLs are never fetched; and a write on top of whatever loaded
    also answers 200."""
    kind, backend, loop = token_backend
    target = Target(f"jwt load path ({kind})", loop)
    listener = Listener()
    app = SessionMiddleware(data_app, backend=backend)
    now = int(time.time())
    # A real token of this backend, for the mutations and its header's kid and alg.
    status, cookies, _ = target.request(app, "/set?user=alice", None)
    assert status == 200
    real = _session_cookie(cookies).decode()
    access = real.rpartition(".")[0] if kind == "hybrid" else real
    ours = json.loads(base64.urlsafe_b64decode(access.split(".")[0] + "=="))
    refresh = real.rpartition(".")[2] if kind == "hybrid" else ""
    url = f"http://127.0.0.1:{listener.port}"

    @st.composite
    def tokens(draw: Any) -> tuple[str, bool]:
        """A cookie value and whether it was signed with the right secret."""
        choice = draw(st.sampled_from(["random", "mutated", "signed", "signed-ours"]))
        if choice == "random":
            segment = st.text(alphabet=_VALUE_CHARS.replace(".", ""), max_size=300)
            value = ".".join(draw(st.lists(segment, min_size=1, max_size=5)))
            return value, False
        if choice == "mutated":
            return _mutate(real, draw), False
        header: Any = draw(_odd_header(ours["kid"], ours["alg"], url))
        if choice == "signed-ours":
            header = {**ours, **{k: v for k, v in header.items() if k not in ours}}
        claims = draw(st.one_of(_odd_claims(now), _JSON, _DEEP_PAYLOADS))
        value = _sign(header, claims, SECRET)
        if kind == "hybrid":
            value += "." + refresh
        return value, True

    def fuzz(case: tuple[str, bool], path: str) -> None:
        value, signed = case
        target.examples += 1
        cookie = b"session=" + value.encode("latin-1")
        status, _, body = target.request(app, path, cookie)
        assert status == 200
        if signed and path == "/read" and body != {}:
            header = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
            claims = json.loads(base64.urlsafe_b64decode(value.split(".")[1] + "=="))
            assert header.get("alg") == ours["alg"]
            assert header.get("typ") == "JWT"
            assert "crit" not in header
            assert "b64" not in header
            assert body == json.loads(json.dumps(claims["dat"], default=repr))

    try:
        target.run(fuzz, case=tokens(), path=st.sampled_from(["/read", "/set?k=v"]))
        assert listener.connections == 0, "a token's jku or x5u URL was fetched"
    finally:
        listener.close()
        target.close()


# -- the msgpack load path -----------------------------------------------------

_MSGPACK_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(msgpack.Timestamp, st.integers(-(2**40), 2**40), st.integers(0, 999_999_999)),
)
_MSGPACK = st.recursive(
    _MSGPACK_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=4)), inner, max_size=4),
        st.dictionaries(st.integers(-3, 3), inner, max_size=2),
    ),
    max_leaves=20,
)
_TIMES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 10**12, 10**13, 2**53, 1.7e9]),
    _MSGPACK,
)
_NUMBER_TEXT = st.one_of(
    st.sampled_from([b"nan", b"-nan", b"inf", b"-inf", b"1e300", b"-1e300", b"1e999", b"0x10"]),
    st.sampled_from([b"0", b"-1", b"1e-300", b"4320", b"43200", b"1e10", b"1e20", b"", b"x"]),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()),
)
# Headers that declare up to 4 GiB of content that is not there.
_HUGE = st.sampled_from(
    [
        *(b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"),
        *(b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff", b"\xde\xff\xff"),
        *(b"\x95\xdd\xff\xff\xff\xff", b"\x95\x80\x93\xcb\x7f\xf8" + b"\x00" * 6),
    ]
)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]


@st.composite
def stored_fields(draw: Any, real: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The stored hash of a live session, with one or more fields replaced."""
    fields = dict(real)
    view = real[b"x"]
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([b"x", b"x", b"x", b"t", b"z", b"m", b"s", b"a"]))
        kind = draw(
            st.sampled_from(
                [
                    *("random", "mutated", "shape", "huge", "deep", "times", "text"),
                    *("schedule", "data", "data"),
                ]
            )
        )
        if kind == "random":
            value = draw(st.binary(max_size=300))
        elif kind == "mutated":
            value = _mutate(view.decode("latin-1"), draw).encode("latin-1")
        elif kind == "shape":
            value = _pack(draw(st.one_of(_MSGPACK, st.lists(_MSGPACK, min_size=5, max_size=5))))
        elif kind == "huge":
            value = draw(_HUGE) + draw(st.binary(max_size=16))
        elif kind == "deep":
            value = b"\x91" * draw(st.integers(1, 60_000)) + b"\xc0"
        elif kind == "times":
            # The view's shape with odd times and data: [m, s, due, alias, data].
            meta = {"c": draw(_TIMES), "r": draw(_TIMES)}
            if draw(st.booleans()):
                meta["f"] = draw(_TIMES)
            if draw(st.booleans()):
                meta["i"] = draw(_TIMES)
            seen = [draw(_TIMES), draw(st.one_of(st.none(), _MSGPACK)), None]
            data = draw(st.dictionaries(st.text(max_size=6), _MSGPACK, max_size=3))
            value = _pack([meta, seen, draw(_TIMES), draw(st.none() | _MSGPACK), data])
        elif kind == "data":
            # The real view with other data: values the access token or the
            # serializer's checks refuse, big strings, deep lists.
            meta, seen, due, alias, _ = msgpack.unpackb(view)
            data = draw(
                st.dictionaries(
                    st.text(max_size=6),
                    st.one_of(
                        _MSGPACK,
                        st.sampled_from([b"bytes", float("inf"), msgpack.Timestamp(1, 0)]),
                        st.text(min_size=5000, max_size=30_000),
                        st.integers(1, 100).map(lambda n: json.loads("[" * n + "]" * n)),
                    ),
                    min_size=1,
                    max_size=3,
                )
            )
            value = _pack([meta, seen, due, alias, data])
        elif kind == "schedule":
            # A refresh due now, by a "period idle cap" of odd numbers.
            fields[b"t"] = draw(st.sampled_from([b"0", b"-inf", b"nan", b"1"]))
            field, value = b"z", b" ".join(draw(st.lists(_NUMBER_TEXT, min_size=3, max_size=3)))
        else:
            # t ("due") and z ("period idle cap") are text that the load script
            # parses with Lua's tonumber, which takes nan, inf and hex.
            parts = draw(st.lists(_NUMBER_TEXT, min_size=0, max_size=4))
            value = b" ".join(parts)
        fields[field] = value
    if draw(st.booleans()):
        fields[b"t"] = b"0"  # the refresh is due: the load script parses z
    return fields


@pytest.fixture(params=["redis", "hybrid"])
def store_app(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, Any, RedisBackend, Any, Any]]:
    loop = asyncio.new_event_loop()
    store = RedisBackend(
        request.getfixturevalue("redis_url"), prefix=f"fuzz{uuid.uuid4().hex[:8]}:", **_PATIENT
    )
    clock = [time.time()]
    backend: Any = store if request.param == "redis" else HybridBackend(store, secret=SECRET)
    app = SessionMiddleware(data_app, backend=backend, clock=lambda: clock[0])
    yield request.param, app, store, clock, loop
    loop.run_until_complete(backend.aclose())
    loop.close()


def test_fuzz_msgpack_load_path(store_app: tuple[str, Any, RedisBackend, Any, Any]) -> None:
    """A live session's stored fields replaced by hostile bytes: the next request
    (a read or a write; on the hybrid backend, the refresh once the access token has
    expired) gets a 200, never a 500 or a 503; a record it cannot use is removed,
    and what a request does get is a session of plain str keys."""
    kind, app, store, clock, loop = store_app
    target = Target(f"msgpack load path ({kind})", loop)
    redis = store.client
    serializer = MsgpackSerializer()

    def live_session() -> tuple[bytes, str, dict[bytes, bytes]]:
        status, cookies, _ = target.request(app, "/set?a=1&b=two", None)
        assert status == 200
        cookie = _session_cookie(cookies)
        refresh = cookie.decode().rpartition(".")[2] if kind == "hybrid" else cookie.decode()
        key = f"{store.prefix}s:{token_id(refresh)}"
        stored = loop.run_until_complete(redis.hgetall(key))
        assert b"x" in stored, "the session's record is not under the key the target fuzzes"
        return cookie, key, stored

    _, _, real = live_session()

    def fuzz(data: Any, path: str) -> None:
        target.examples += 1
        clock[0] = time.time()
        cookie, key, _ = live_session()
        fields = data.draw(stored_fields(real))
        loop.run_until_complete(redis.delete(key))
        loop.run_until_complete(redis.hset(key, mapping=fields))
        loop.run_until_complete(redis.expire(key, 3600))
        # This process remembers when each session's refresh is due and each view it
        # decoded: forget both, so the load runs the script that reads t and z, and
        # decodes what is stored now.
        store._due.clear()
        store._views.clear()
        if kind == "hybrid":
            clock[0] += 3600  # the access token has expired: the refresh loads the record
        else:
            clock[0] += data.draw(st.sampled_from([0, 500, 5000]))  # a refresh may be due
        status, _, body = target.request(app, path, b"session=" + cookie)
        assert status == 200
        assert type(body) is dict
        assert all(type(k) is str for k in body)
        if kind == "redis" and path == "/read":
            left = loop.run_until_complete(redis.hget(key, "x"))
            if left is None:
                assert body == {}, "a record was removed, yet its data was served"
            else:
                try:
                    serializer.unpack(left)
                except SerializationError:
                    # A refresh rebuilt the view from fields that were corrupt: the
                    # next load must remove the record, not serve or keep it.
                    status, _, body = target.request(app, "/read", b"session=" + cookie)
                    assert status == 200
                    assert body == {}
                    assert loop.run_until_complete(redis.hget(key, "x")) is None
        loop.run_until_complete(_delete_prefix(redis, store.prefix))

    try:
        target.run(fuzz, data=st.data(), path=st.sampled_from(["/read", "/set?k=v"]))
    finally:
        loop.run_until_complete(_delete_prefix(redis, store.prefix))
        target.close()


async def _delete_prefix(redis: Any, prefix: str) -> None:
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        await redis.delete(key)


def test_fuzz_msgpack_serializer_loads() -> None:
    """The serializer on its own, at many more examples: any bytes either load as a
    session of storable values (which dump back and load equal) or raise
    SerializationError, and nothing else."""
    target = Target("msgpack serializer")
    serializer = MsgpackSerializer()

    def fuzz(raw: bytes) -> None:
        target.examples += 1
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            data = serializer.loads(raw)
        except SerializationError:
            data = None
        used = tracemalloc.get_traced_memory()[1] - before
        target.peak = max(target.peak, used)
        assert used < MEMORY_BOUND
        if data is not None:
            again = serializer.loads(serializer.dumps(data))
            assert again.keys() == data.keys()
            for key, value in data.items():
                same = again[key]
                if type(value) is float and math.isnan(value):
                    raise AssertionError("NaN loaded")
                assert same == value
                assert type(same) is type(value)

    raw = st.one_of(
        st.binary(max_size=400),
        _MSGPACK.map(_pack),
        st.dictionaries(st.text(max_size=6), _MSGPACK, max_size=4).map(_pack),
        st.tuples(_HUGE, st.binary(max_size=16)).map(b"".join),
        st.integers(1, 60_000).map(lambda n: b"\x81\xa1k" + b"\x91" * n + b"\xc0"),
    )
    try:
        target.run(fuzz, examples=EXAMPLES * 2, raw=raw)
    finally:
        target.close()


def test_memory_bound_catches_an_allocation_per_declared_length() -> None:
    """The bound is not vacuous: a request whose app allocates what a hostile 4 GiB
    length would make a careless decoder allocate (here only 8 MiB) fails it."""
    target = Target("memory bound self-check")

    async def greedy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        blob = bytearray(8 * 1024 * 1024)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}" if blob else b""})

    tracemalloc.start()
    try:
        with pytest.raises(AssertionError, match="allocated"):
            target.request(SessionMiddleware(greedy, backend=JWTBackend(SECRET)), "/", None)
    finally:
        tracemalloc.stop()
        target.close()


def test_sign_helper_makes_tokens_the_backend_accepts() -> None:
    """The signed-token strategy is meaningful: our own header and valid claims,
    signed by ``_sign``, load as a session (so the refusals above are the backend's
    checks, not a broken signer)."""
    backend = JWTBackend(SECRET)
    app = SessionMiddleware(data_app, backend=backend)
    target = Target("sign self-check")
    tracemalloc.start()
    try:
        _, cookies, _ = target.request(app, "/set?user=alice", None)
        real = _session_cookie(cookies).decode()
        header = json.loads(base64.urlsafe_b64decode(real.split(".")[0] + "=="))
        claims = json.loads(base64.urlsafe_b64decode(real.split(".")[1] + "=="))
        claims["dat"] = {"user": "mallory"}
        forged = _sign(header, claims, SECRET)
        assert target.request(app, "/read", b"session=" + forged.encode())[2] == {"user": "mallory"}
        wrong = _sign(header, claims, SECRET + "x")
        assert target.request(app, "/read", b"session=" + wrong.encode())[2] == {}
    finally:
        tracemalloc.stop()
        target.close()
