"""JWTBackend: driven through the real middleware with hostile and honest tokens.

Every hostile token must give an empty session, a 200 and no Set-Cookie, and must
never be logged raw. Hand-made tokens are built with ``forge`` (raw base64url JSON
plus an HMAC computed here), and a positive control shows that the same helper
with honest inputs is accepted, so each rejection is for the reason tested.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from asgi_sessions import (
    ConfigurationError,
    Delta,
    InvalidToken,
    JWTBackend,
    JWTKey,
    SessionMiddleware,
    SessionRecord,
)
from asgi_sessions._log import fingerprint
from asgi_sessions.backends.jwt import MAX_TOKEN_LENGTH
from tests.conftest import FakeClock

SECRET = "tB4u7-WJx3sI1yYhZk9v0cQe2LmN5pRaGfDdoEiXqUw"  # 43 bytes, like token_urlsafe(32)
KID = "k1"
AUD = "asgi-sessions"
T0 = 1_700_000_000.0  # FakeClock's start


# -- helpers ----------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def forge(
    header: Any,
    claims: Any,
    *,
    secret: str | bytes = SECRET,
    sign: bool = True,
    digest: Any = hashlib.sha256,
) -> str:
    """A compact JWS built by hand: an HMAC (SHA-256 unless ``digest``) over
    ``header.claims`` with ``secret``, whatever the header says; or no signature."""
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    if not sign:
        return signing_input + "."
    key = secret.encode() if isinstance(secret, str) else secret
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(signature)}"


def header(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"alg": "HS256", "kid": KID, "typ": "JWT"}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not ...}


def claims(now: float = T0, **changes: Any) -> dict[str, Any]:
    """Honest session claims; pass ``name=...`` (Ellipsis) to drop one."""
    values: dict[str, Any] = {
        "aud": AUD,
        "sid": "forged-session-id",
        "iat": int(now),
        "exp": int(now) + 3600,
        "crt": int(now),
        "rot": int(now),
        "dat": {"user": "mallory"},
    }
    values.update(changes)
    return {k: v for k, v in values.items() if v is not ...}


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (
        json.loads(base64.urlsafe_b64decode(pad(head))),
        json.loads(base64.urlsafe_b64decode(pad(body))),
    )


def set_cookies(response: Any) -> list[str]:
    return list(response.headers.get_list("set-cookie"))


def session_cookie(response: Any, name: str = "session") -> str:
    for value in set_cookies(response):
        key, _, rest = value.partition("=")
        if key == name:
            return rest.split(";", 1)[0]
    raise AssertionError(f"no Set-Cookie for {name}: {set_cookies(response)}")


def run(coro: Any) -> Any:
    """Run a backend coroutine that never suspends (the JWT backend does no I/O)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("coroutine suspended")


def new_record(now: float = T0, **data: Any) -> SessionRecord:
    return SessionRecord(session_id="", data=data, created_at=now, last_seen=now, rotated_at=now)


# -- the app ------------------------------------------------------------------------


async def show(request: Request) -> JSONResponse:
    session = request.session
    return JSONResponse({"data": dict(session), "id": session.id})


async def update(request: Request) -> JSONResponse:
    request.session.update(await request.json())
    return JSONResponse({"id": request.session.id})


async def replace(request: Request) -> JSONResponse:
    request.session.clear()
    request.session.update(await request.json())
    return JSONResponse({"id": request.session.id})


async def rotate(request: Request) -> JSONResponse:
    request.session.rotate()
    return JSONResponse({"id": request.session.id})


async def invalidate(request: Request) -> JSONResponse:
    request.session.invalidate()
    return JSONResponse({})


async def append(request: Request) -> JSONResponse:
    # In-place mutation of a nested value, deliberately not marked modified.
    items = request.session["items"]
    items.append("x")
    return JSONResponse({"items": items})


async def expiry(request: Request) -> JSONResponse:
    body = await request.json()
    if "at" in body:
        request.session.set_expiry(datetime.fromtimestamp(body["at"], UTC))
    else:
        request.session.set_expiry(body["seconds"])
    return JSONResponse({})


ROUTES = [
    Route("/", show),
    Route("/set", update, methods=["POST"]),
    Route("/replace", replace, methods=["POST"]),
    Route("/rotate", rotate, methods=["POST"]),
    Route("/invalidate", invalidate, methods=["POST"]),
    Route("/append", append, methods=["POST"]),
    Route("/expiry", expiry, methods=["POST"]),
]


def client_for(backend: JWTBackend, clock: FakeClock, **settings: Any) -> TestClient:
    app = SessionMiddleware(Starlette(routes=ROUTES), backend=backend, clock=clock, **settings)
    return TestClient(app, base_url="https://testserver")


@pytest.fixture
def backend() -> JWTBackend:
    return JWTBackend(keys=[JWTKey(KID, SECRET)])


@pytest.fixture
def client(backend: JWTBackend, clock: FakeClock) -> TestClient:
    return client_for(backend, clock)


def login(client: TestClient, **data: Any) -> str:
    response = client.post("/set", json=data or {"user": "alice"})
    assert response.status_code == 200
    return session_cookie(response)


def assert_rejected(client: TestClient, token: str | bytes) -> None:
    raw = token.encode() if isinstance(token, str) else token
    response = client.get("/", headers={"cookie": b"session=" + raw})
    assert response.status_code == 200
    assert response.json() == {"data": {}, "id": None}
    assert set_cookies(response) == []


def assert_accepted(client: TestClient, token: str) -> dict[str, Any]:
    response = client.get("/", headers={"cookie": f"session={token}"})
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["data"], "expected the token to be accepted"
    return body


# -- keys for the asymmetric algorithms (generated once, RSA is slow) ------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_private(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def pem_public(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# == round trip and token format =====================================================


def test_round_trip_and_token_format(client: TestClient) -> None:
    response = client.post("/set", json={"user": "alice", "roles": ["admin"], "n": 1})
    token = session_cookie(response)
    cookie = set_cookies(response)[0]
    assert "HttpOnly" in cookie
    assert "Secure" in cookie
    assert "SameSite=Lax" in cookie
    assert token.count(".") == 2

    head, body = parts(token)
    assert head == {"alg": "HS256", "kid": KID, "typ": "JWT"}
    assert body["aud"] == AUD
    assert body["iat"] == int(T0)
    assert body["crt"] == int(T0)
    assert body["rot"] == int(T0)
    assert body["exp"] > body["iat"]
    assert body["dat"] == {"user": "alice", "roles": ["admin"], "n": 1}
    assert isinstance(body["sid"], str)
    assert len(body["sid"]) >= 22  # 128 bits
    assert not {"idi", "fix", "brs", "uid", "iss"} & body.keys()

    shown = client.get("/")
    assert shown.json() == {
        "data": {"user": "alice", "roles": ["admin"], "n": 1},
        "id": body["sid"],
    }
    assert set_cookies(shown) == []  # nothing changed, no refresh due


def test_secret_shortcut_uses_hs256_and_a_sha256_kid(clock: FakeClock) -> None:
    client = client_for(JWTBackend(SECRET), clock)
    head, _ = parts(login(client))
    assert head["alg"] == "HS256"
    assert head["kid"] == hashlib.sha256(SECRET.encode()).hexdigest()[:8]
    assert client.get("/").json()["data"] == {"user": "alice"}


def test_hand_made_token_with_honest_inputs_is_accepted(client: TestClient) -> None:
    # The positive control for every forge() below.
    body = assert_accepted(client, forge(header(), claims()))
    assert body == {"data": {"user": "mallory"}, "id": "forged-session-id"}


def test_issuer_is_written_and_required(clock: FakeClock) -> None:
    backend = JWTBackend(keys=[JWTKey(KID, SECRET)], issuer="https://example.com")
    client = client_for(backend, clock)
    assert parts(login(client))[1]["iss"] == "https://example.com"
    assert_accepted(client, forge(header(), claims(iss="https://example.com")))
    assert_rejected(client, forge(header(), claims()))
    assert_rejected(client, forge(header(), claims(iss="https://evil.example")))
    assert_rejected(client, forge(header(), claims(iss=["https://example.com"])))
    assert_rejected(client, forge(header(), claims(iss=None)))


def test_registered_claims_we_do_not_use_are_accepted_when_well_formed(
    client: TestClient,
) -> None:
    # As jwt.decode did: sub and jti are only checked to be strings; iss is ignored
    # when no issuer is configured.
    assert_accepted(client, forge(header(), claims(sub="alice", jti="j-1", iss="anyone")))


# == hostile tokens ==================================================================


def test_tampered_payload_is_rejected(client: TestClient) -> None:
    token = login(client, user="alice", admin=False)
    head, body, signature = token.split(".")
    payload = parts(token)[1]
    payload["dat"]["admin"] = True
    assert_rejected(client, f"{head}.{b64json(payload)}.{signature}")
    # One flipped character in the signature.
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert_rejected(client, f"{head}.{body}.{flipped}")
    # The honest token still works.
    assert_accepted(client, token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_alg_none_is_rejected(client: TestClient, alg: str, signed: bool) -> None:
    assert_rejected(client, forge(header(alg=alg), claims(), sign=signed))


def test_other_hmac_algorithm_with_the_right_secret_is_rejected(clock: FakeClock) -> None:
    # The algorithm is pinned to the key's: with a secret long enough for HS512, an
    # HS512 signature by that very secret would verify if the token's alg were used.
    secret = SECRET + "-" + SECRET[:20]  # 64 bytes
    client = client_for(JWTBackend(keys=[JWTKey(KID, secret)]), clock)
    assert_accepted(client, forge(header(), claims(), secret=secret))
    for alg, digest in (("HS512", hashlib.sha512), ("HS384", hashlib.sha384)):
        assert_rejected(client, forge(header(alg=alg), claims(), secret=secret, digest=digest))


def test_hs256_forged_with_the_rsa_public_key_is_rejected(
    clock: FakeClock, rsa_key: rsa.RSAPrivateKey
) -> None:
    backend = JWTBackend(keys=[JWTKey("rsa", rsa_key, "RS256")])
    client = client_for(backend, clock)
    public_pem = pem_public(rsa_key)
    # Algorithm confusion: HMAC keyed with the (public) PEM the server verifies with.
    assert_rejected(client, forge(header(kid="rsa"), claims(), secret=public_pem))
    assert_rejected(client, forge(header(kid="rsa", alg="RS256"), claims(), secret=public_pem))
    # Control: the same claims properly signed with the private key are accepted.
    honest = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa"})
    assert_accepted(client, honest)


def test_wrong_secret_is_rejected(client: TestClient) -> None:
    assert_rejected(client, forge(header(), claims(), secret="another-secret-" * 4))


@pytest.mark.parametrize("name", ["exp", "iat", "sid", "aud", "crt", "rot", "dat"])
def test_missing_required_claim_is_rejected(client: TestClient, name: str) -> None:
    assert_rejected(client, forge(header(), claims(**{name: ...})))


@pytest.mark.parametrize(
    "changes",
    [
        {"sid": 5},
        {"sid": ""},
        {"sid": "s" * 200},
        {"exp": "soon"},
        {"exp": True},
        {"exp": None},
        {"exp": -1},
        {"iat": [1]},
        {"crt": "yesterday"},
        {"rot": False},
        {"dat": ["a"]},
        {"dat": "x"},
        {"dat": None},
        {"idi": "60"},
        {"idi": True},
        {"idi": 0},
        {"fix": "never"},
        {"brs": "yes"},
        {"brs": False},
        {"uid": 7},
        {"nbf": "now"},
        {"sub": 5},
        {"sub": None},
        {"jti": ["j"]},
    ],
    ids=repr,
)
def test_claims_of_the_wrong_type_are_rejected(client: TestClient, changes: dict[str, Any]) -> None:
    assert_rejected(client, forge(header(), claims(**changes)))


def test_non_finite_times_are_rejected(client: TestClient) -> None:
    for literal in ("NaN", "Infinity", "1e400"):
        body = json.dumps(claims()).replace(f'"exp": {int(T0) + 3600}', f'"exp": {literal}')
        assert literal in body
        signing_input = f"{b64json(header())}.{b64(body.encode())}"
        sig = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
        assert_rejected(client, f"{signing_input}.{b64(sig)}")


@pytest.mark.parametrize("name", ["iat", "nbf"])
def test_issued_in_the_future_beyond_leeway_is_rejected(client: TestClient, name: str) -> None:
    assert_rejected(client, forge(header(), claims(**{name: int(T0) + 31})))


@pytest.mark.parametrize("name", ["iat", "nbf"])
def test_issued_in_the_future_within_leeway_is_accepted(client: TestClient, name: str) -> None:
    assert_accepted(client, forge(header(), claims(**{name: int(T0) + 29})))


@pytest.mark.parametrize(
    "kid",
    ["unknown", 5, ["k1"], {"k": "k1"}, None, "k" * 5000, "K1", ...],
    ids=["unknown", "int", "list", "dict", "null", "huge", "case", "missing"],
)
def test_unknown_or_junk_kid_is_rejected(client: TestClient, kid: Any) -> None:
    assert_rejected(client, forge(header(kid=kid), claims()))


@pytest.mark.parametrize(
    "changes",
    [{"aud": "another-app"}, {"aud": ...}, {"aud": [AUD]}, {"aud": [AUD, "another-app"]}],
    ids=["other", "missing", "list", "list-with-ours"],
)
def test_token_for_another_audience_is_rejected(
    client: TestClient, changes: dict[str, Any]
) -> None:
    assert_rejected(client, forge(header(), claims(**changes)))


@pytest.mark.parametrize("typ", ["at+jwt", "jwt", "JWS", None, ...])
def test_token_of_another_type_is_rejected(client: TestClient, typ: Any) -> None:
    assert_rejected(client, forge(header(typ=typ), claims()))


def test_access_token_signed_with_the_same_key_is_rejected(client: TestClient) -> None:
    # What another part of the app might sign with the same secret.
    access = jwt.encode(
        {"sub": "alice", "exp": int(T0) + 900, "iat": int(T0)},
        SECRET,
        algorithm="HS256",
        headers={"kid": KID},
    )
    assert_rejected(client, access)


def test_crit_header_is_rejected(client: TestClient) -> None:
    assert_rejected(client, forge(header(crit=["exp"]), claims()))
    assert_rejected(client, forge(header(b64=False), claims()))


def test_wrong_number_of_segments_is_rejected(client: TestClient) -> None:
    token = login(client)
    client.cookies.clear()
    head, body, sig = token.split(".")
    for bad in (
        f"{head}.{body}",
        f"{head}.{body}.{sig}.{sig}",
        f"{head}.{body}.{sig}.{sig}.{sig}",
        f"{head}..{sig}",
        f".{body}.{sig}",
        f"{head}.{body}.",
        "...",
        "abc",
    ):
        assert_rejected(client, bad)


def test_oversize_token_is_rejected(client: TestClient, backend: JWTBackend) -> None:
    huge = forge(header(), claims(dat={"pad": "x" * 20_000}))
    assert_rejected(client, huge)  # the cookie codec refuses it before the backend
    with pytest.raises(InvalidToken):
        run(backend.load("a" * MAX_TOKEN_LENGTH + ".b.c", now=T0))
    with pytest.raises(InvalidToken):
        run(backend.load(forge(header(pad="x" * 600), claims()), now=T0))  # huge header


def test_non_ascii_cookie_is_rejected(client: TestClient, backend: JWTBackend) -> None:
    token = forge(header(), claims())
    assert_rejected(client, token.encode()[:10] + "é".encode() + token.encode()[10:])
    assert_rejected(client, b"\xff\xfe." + token.encode())
    for bad in ("é" + token, token + "\u2024", token.replace(".", "\uff0e")):
        with pytest.raises(InvalidToken):
            run(backend.load(bad, now=T0))


def test_expired_token_is_rejected_with_the_injected_clock(
    client: TestClient, clock: FakeClock
) -> None:
    # exp in the past while iat/crt are recent: only exp (plus leeway) ends it.
    assert_accepted(client, forge(header(), claims(exp=int(T0) - 29)))
    assert_rejected(client, forge(header(), claims(exp=int(T0) - 31)))
    # A token the app issued, once the clock is past its exp + leeway.
    clock.advance(10)
    token = login(client)
    exp = parts(token)[1]["exp"]
    client.cookies.clear()
    clock.now = exp + 31
    assert_rejected(client, token)


def test_rejections_are_logged_without_the_raw_token(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = forge(header(), claims(aud="another-app"))
    with caplog.at_level(logging.INFO, logger="asgi_sessions"):
        assert_rejected(client, token)
    assert fingerprint(token) in caplog.text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_load_raises_only_invalid_token_for_every_single_character_change(
    backend: JWTBackend,
) -> None:
    token = run(backend.save(None, new_record(user="a"), Delta({}), now=T0, ttl=600, rotate=False))
    backend._cache.clear()
    alphabet = "AQgw_-.=+/ é"
    for index in range(len(token)):
        for char in alphabet:
            if token[index] == char:
                continue
            mutated = token[:index] + char + token[index + 1 :]
            with pytest.raises(InvalidToken):
                run(backend.load(mutated, now=T0))
    assert run(backend.load(token, now=T0)).data == {"user": "a"}


_FUZZ_BACKEND = JWTBackend(keys=[JWTKey(KID, SECRET)])
_JWT_LIKE = r"[A-Za-z0-9_\-]{0,80}(\.[A-Za-z0-9_\-]{0,80}){0,4}"


@settings(max_examples=200, deadline=None, database=None)
@given(st.one_of(st.text(max_size=300), st.from_regex(_JWT_LIKE, fullmatch=True)))
def test_load_raises_only_invalid_token_for_any_input(value: str) -> None:
    try:
        result = run(_FUZZ_BACKEND.load(value, now=T0))
    except InvalidToken:
        return
    assert result is None


def test_load_rejects_values_that_are_not_strings(backend: JWTBackend) -> None:
    for value in (None, b"a.b.c", 5, ["a.b.c"]):
        with pytest.raises(InvalidToken):
            run(backend.load(value, now=T0))  # type: ignore[arg-type]


# == expiry through the middleware ====================================================

EXPIRY = {"idle_timeout": 3600, "absolute_timeout": 7200, "refresh_after": 600}


def test_refresh_throttle_and_absolute_timeout(backend: JWTBackend, clock: FakeClock) -> None:
    client = client_for(backend, clock, **EXPIRY)
    first = login(client)

    clock.advance(599)
    response = client.get("/")
    assert response.json()["data"] == {"user": "alice"}
    assert set_cookies(response) == []  # refresh not due yet

    clock.advance(2)  # 601 s since the last write
    response = client.get("/")
    refreshed = session_cookie(response)
    assert refreshed != first
    assert "Max-Age=3600" in set_cookies(response)[0]
    old, new = parts(first)[1], parts(refreshed)[1]
    assert new["sid"] == old["sid"]
    assert new["crt"] == old["crt"] == int(T0)  # the creation time is kept
    assert new["iat"] == int(T0) + 601
    assert new["exp"] == int(T0) + 601 + 3600
    assert new["dat"] == {"user": "alice"}

    # Keep the session busy: refreshes continue, but the absolute timeout holds.
    for _ in range(10):
        clock.advance(601)
        assert client.get("/").json()["data"] == {"user": "alice"}
    assert clock.now - T0 < 7200
    clock.now = T0 + 7200
    response = client.get("/")
    assert response.json() == {"data": {}, "id": None}


def test_idle_timeout(backend: JWTBackend, clock: FakeClock) -> None:
    client = client_for(backend, clock, idle_timeout=3600, refresh_after=600)
    login(client)
    clock.advance(3599)
    assert client.get("/").json()["data"] == {"user": "alice"}  # refreshed here
    clock.advance(3599)
    assert client.get("/").json()["data"] == {"user": "alice"}
    clock.advance(3601)
    response = client.get("/")
    assert response.json() == {"data": {}, "id": None}
    assert set_cookies(response) == []


def test_per_session_expiry_claims_round_trip(backend: JWTBackend, clock: FakeClock) -> None:
    client = client_for(backend, clock, **EXPIRY)
    login(client)

    token = session_cookie(client.post("/expiry", json={"seconds": 120}))
    assert parts(token)[1]["idi"] == 120
    clock.advance(121)
    assert client.get("/").json()["data"] == {}  # the short idle timeout applied

    login(client)
    token = session_cookie(client.post("/expiry", json={"seconds": 0}))
    assert parts(token)[1]["brs"] is True
    response = client.post("/set", json={"more": 1})
    assert "Max-Age" not in set_cookies(response)[0]  # still a browser-session cookie

    at = int(clock.now) + 300
    token = session_cookie(client.post("/expiry", json={"at": at}))
    assert parts(token)[1]["fix"] == at
    clock.advance(299)
    assert client.get("/").json()["data"] == {"user": "alice", "more": 1}
    clock.advance(2)
    assert client.get("/").json()["data"] == {}


@pytest.mark.anyio
async def test_record_fields_map_to_claims_and_back(backend: JWTBackend) -> None:
    record = new_record(T0 + 0.25, user="a")
    record.created_at = T0 - 100.5
    record.rotated_at = T0 - 50
    record.idle_timeout = 90
    record.fixed_expiry = T0 + 999.75
    record.browser_session = True
    record.user_id = "user-42"
    token = await backend.save(None, record, Delta({}), now=T0 + 0.25, ttl=90, rotate=False)
    body = parts(token)[1]
    assert body["sid"] == record.session_id
    assert body["crt"] == T0 - 100.5
    assert body["rot"] == int(T0) - 50
    assert body["iat"] == int(T0)
    assert body["exp"] == int(T0) + 91
    assert body["idi"] == 90
    assert body["fix"] == T0 + 999.75
    assert body["brs"] is True
    assert body["uid"] == "user-42"
    for cached in (True, False):
        if not cached:
            backend._cache.clear()
        loaded = await backend.load(token, now=T0 + 1)
        assert loaded is not None
        assert (loaded.session_id, loaded.data) == (record.session_id, {"user": "a"})
        assert (loaded.created_at, loaded.last_seen, loaded.rotated_at) == (
            T0 - 100.5,
            int(T0),
            T0 - 50,
        )
        assert (loaded.idle_timeout, loaded.fixed_expiry, loaded.browser_session) == (
            90,
            T0 + 999.75,
            True,
        )
        assert loaded.user_id == "user-42"
        assert not loaded.reissue
        assert not loaded.read_only


@pytest.mark.anyio
async def test_touch_always_reissues_and_keeps_sid_and_data(backend: JWTBackend) -> None:
    token = await backend.save(
        None, new_record(items=[1]), Delta({}), now=T0, ttl=600, rotate=False
    )
    record = await backend.load(token, now=T0 + 100)
    assert record is not None
    record.last_seen = T0 + 100
    touched = await backend.touch(token, record, now=T0 + 100, ttl=600)
    assert touched is not None
    assert touched != token
    old, new = parts(token)[1], parts(touched)[1]
    assert new["sid"] == old["sid"]
    assert new["dat"] == {"items": [1]}
    assert new["iat"] == int(T0) + 100
    assert new["exp"] == int(T0) + 700
    assert new["crt"] == int(T0)
    await backend.delete(touched, record)  # stateless: nothing to do, never raises
    await backend.aclose()


@pytest.mark.anyio
async def test_save_mints_a_sid_only_for_new_or_rotated_sessions(backend: JWTBackend) -> None:
    record = new_record(user="a")
    token = await backend.save(None, record, Delta({}), now=T0, ttl=600, rotate=False)
    sid = record.session_id
    assert sid
    again = await backend.save(token, record, Delta({}), now=T0, ttl=600, rotate=False)
    assert parts(again)[1]["sid"] == sid
    rotated = await backend.save(again, record, Delta({}), now=T0, ttl=600, rotate=True)
    assert parts(rotated)[1]["sid"] == record.session_id != sid


# == lifecycle through the middleware ================================================


def test_rotate_changes_the_session_id(client: TestClient) -> None:
    first = login(client, user="alice")
    before = client.get("/").json()["id"]
    response = client.post("/rotate")
    rotated = session_cookie(response)
    assert rotated != first
    after = client.get("/").json()
    assert after["data"] == {"user": "alice"}
    assert after["id"] == parts(rotated)[1]["sid"] != before
    assert parts(rotated)[1]["crt"] == parts(first)[1]["crt"]


def test_invalidate_expires_the_cookie(client: TestClient) -> None:
    login(client)
    response = client.post("/invalidate")
    cookies = set_cookies(response)
    assert len(cookies) == 1
    assert cookies[0].startswith("session=;")
    assert "Max-Age=0" in cookies[0]
    assert client.get("/").json() == {"data": {}, "id": None}


def test_large_session_is_chunked_and_shrinking_clears_stale_chunks(
    client: TestClient,
) -> None:
    login(client, user="alice")
    big = "".join(f"{i:05d}" for i in range(900))  # a token of about 6300 bytes
    response = client.post("/set", json={"blob": big})
    cookies = set_cookies(response)
    names = [c.split("=", 1)[0] for c in cookies]
    assert names == ["session.0", "session.1", "session"]
    assert "Max-Age=0" in cookies[2]  # the unchunked cookie it replaces
    assert all(len(c.split(";", 1)[0]) <= 4096 for c in cookies)

    response = client.get("/")
    assert response.json()["data"] == {"user": "alice", "blob": big}
    assert set_cookies(response) == []

    response = client.post("/replace", json={"user": "bob"})
    cookies = set_cookies(response)
    names = [c.split("=", 1)[0] for c in cookies]
    assert names[0] == "session"
    assert sorted(names[1:]) == ["session.0", "session.1"]
    assert "Max-Age=0" not in cookies[0]
    assert all("Max-Age=0" in c for c in cookies[1:])
    assert client.get("/").json()["data"] == {"user": "bob"}
    assert set(client.cookies.keys()) == {"session"}


# == key rotation and algorithms =====================================================


def test_token_under_an_old_key_is_accepted_and_reissued(clock: FakeClock) -> None:
    old_key = JWTKey("2024", SECRET)
    new_key = JWTKey("2025", "n" * 32 + SECRET)
    old_client = client_for(JWTBackend(keys=[old_key]), clock)
    old_token = login(old_client, user="alice")
    assert parts(old_token)[0]["kid"] == "2024"

    rotated = client_for(JWTBackend(keys=[new_key, old_key]), clock)
    response = rotated.get("/", headers={"cookie": f"session={old_token}"})
    assert response.json()["data"] == {"user": "alice"}
    new_token = session_cookie(response)
    head, body = parts(new_token)
    assert head["kid"] == "2025"
    assert body["sid"] == parts(old_token)[1]["sid"]
    assert body["crt"] == parts(old_token)[1]["crt"]
    # The re-issued token is not re-issued again.
    again = rotated.get("/", headers={"cookie": f"session={new_token}"})
    assert again.json()["data"] == {"user": "alice"}
    assert set_cookies(again) == []

    # Once the old key is removed from the config, its tokens are rejected.
    current = client_for(JWTBackend(keys=[new_key]), clock)
    assert_rejected(current, old_token)
    assert_accepted(current, new_token)


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "ES384", "EdDSA"])
def test_asymmetric_keys_work(clock: FakeClock, rsa_key: rsa.RSAPrivateKey, algorithm: str) -> None:
    private: Any
    if algorithm in ("RS256", "PS256"):
        private = rsa_key
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    for key in (private, pem_private(private), pem_private(private).decode()):
        client = client_for(JWTBackend(keys=[JWTKey("a1", key, algorithm)]), clock)
        token = login(client, user="alice")
        assert parts(token)[0] == {"alg": algorithm, "kid": "a1", "typ": "JWT"}
        assert client.get("/").json()["data"] == {"user": "alice"}
        # An independent verifier with only the public key agrees.
        decoded = jwt.decode(
            token,
            pem_public(private),
            algorithms=[algorithm],
            audience=AUD,
            options={"verify_exp": False},  # the fake clock is in 2023
        )
        assert decoded["dat"] == {"user": "alice"}


def test_verify_only_retired_asymmetric_key(clock: FakeClock) -> None:
    old = ed25519.Ed25519PrivateKey.generate()
    new = ec.generate_private_key(ec.SECP256R1())
    old_token = login(client_for(JWTBackend(keys=[JWTKey("old", old, "EdDSA")]), clock))
    backend = JWTBackend(
        keys=[JWTKey("new", new, "ES256"), JWTKey("old", None, "EdDSA", public_key=pem_public(old))]
    )
    response = client_for(backend, clock).get("/", headers={"cookie": f"session={old_token}"})
    assert response.json()["data"] == {"user": "alice"}
    assert parts(session_cookie(response))[0]["kid"] == "new"


# == configuration ===================================================================


def test_short_secret_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match=r"secrets\.token_urlsafe\(32\)"):
        JWTBackend("too-short-secret")
    with pytest.raises(ConfigurationError, match="at least 32"):
        JWTBackend(keys=[JWTKey("k", b"x" * 31)])
    with pytest.raises(ConfigurationError, match="at least 48"):
        JWTBackend(keys=[JWTKey("k", "x" * 40, "HS384")])
    with pytest.raises(ConfigurationError, match="at least 64"):
        JWTBackend(keys=[JWTKey("k", "x" * 63, "HS512")])
    JWTBackend(keys=[JWTKey("k", "x" * 64, "HS512")])


@pytest.mark.parametrize("algorithm", ["none", "None", "NONE", "HS257", "hs256", "ES256K", "", 256])
def test_bad_algorithm_names_are_refused(algorithm: Any) -> None:
    with pytest.raises(ConfigurationError, match="algorithm"):
        JWTKey("k", SECRET, algorithm)


@pytest.mark.parametrize("kid", ["", "has space", "k" * 65, "ké", 5, None])
def test_bad_kids_are_refused(kid: Any) -> None:
    with pytest.raises(ConfigurationError, match="kid"):
        JWTKey(kid, SECRET)


def test_other_configuration_errors(rsa_key: rsa.RSAPrivateKey) -> None:
    key = JWTKey(KID, SECRET)
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: JWTBackend(), "exactly one"),
        (lambda: JWTBackend(SECRET, keys=[key]), "exactly one"),
        (lambda: JWTBackend(keys=[]), "non-empty"),
        (lambda: JWTBackend(keys=[key, JWTKey(KID, "y" * 40)]), "share kid"),
        (lambda: JWTBackend(keys=["k1"]), "JWTKey"),  # type: ignore[list-item]
        (lambda: JWTBackend(keys=[JWTKey("k", pem_public(rsa_key))]), "asymmetric key"),
        (lambda: JWTBackend(keys=[JWTKey("k", pem_public(rsa_key).decode())]), "asymmetric"),
        (lambda: JWTBackend(keys=[JWTKey("k", SECRET, public_key=SECRET)]), "no public_key"),
        (lambda: JWTBackend(keys=[JWTKey("k", None)]), "needs a secret"),
        (
            lambda: JWTBackend(
                keys=[JWTKey("k", None, "RS256", public_key=pem_public(rsa_key)), key]
            ),
            "first key",
        ),
        (lambda: JWTBackend(keys=[JWTKey("k", None, "RS256")]), "verify-only"),
        (lambda: JWTBackend(keys=[JWTKey("k", pem_public(rsa_key), "RS256")]), "private key"),
        (lambda: JWTBackend(keys=[JWTKey("k", SECRET, "RS256")]), "RS256"),
        (
            lambda: JWTBackend(
                keys=[JWTKey("k", ec.generate_private_key(ec.SECP384R1()), "ES256")]
            ),
            "curve",
        ),
        (
            lambda: JWTBackend(
                keys=[
                    JWTKey(
                        "k",
                        rsa_key,
                        "RS256",
                        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
                    )
                ]
            ),
            "public_key",
        ),
        (
            lambda: JWTBackend(
                keys=[
                    JWTKey(
                        "k",
                        ed25519.Ed25519PrivateKey.generate(),
                        "EdDSA",
                        public_key=ed25519.Ed25519PrivateKey.generate().public_key(),
                    )
                ]
            ),
            "does not belong",
        ),
        (lambda: JWTBackend(SECRET, audience=""), "audience"),
        (lambda: JWTBackend(SECRET, issuer=""), "issuer"),
        (lambda: JWTBackend(SECRET, leeway=-1), "leeway"),
        (lambda: JWTBackend(SECRET, cache_size=-1), "cache_size"),
        (lambda: JWTBackend(SECRET, cache_size=True), "cache_size"),
    ]
    for build, message in cases:
        with pytest.raises(ConfigurationError, match=message):
            build()


def test_small_rsa_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505  # noqa: S505 (the point)
    with pytest.raises(ConfigurationError, match="2048"):
        JWTBackend(keys=[JWTKey("k", small, "RS256")])


def test_key_repr_hides_the_secret() -> None:
    assert SECRET not in repr(JWTKey("k", SECRET))


def test_leeway_accepts_a_timedelta(clock: FakeClock) -> None:
    client = client_for(JWTBackend(keys=[JWTKey(KID, SECRET)], leeway=timedelta(seconds=5)), clock)
    assert_accepted(client, forge(header(), claims(iat=int(T0) + 4)))
    assert_rejected(client, forge(header(), claims(iat=int(T0) + 6)))


def test_is_a_session_backend() -> None:
    from asgi_sessions import SessionBackend

    assert isinstance(JWTBackend(SECRET), SessionBackend)


# == the verified-token cache ========================================================


def test_cache_hands_out_independent_copies(client: TestClient) -> None:
    token = login(client, items=["a"], profile={"tags": ["t"]})
    first = client.post("/append")
    assert first.json() == {"items": ["a", "x"]}
    assert set_cookies(first) == []  # not marked modified: nothing written
    second = client.post("/append", headers={"cookie": f"session={token}"})
    assert second.json() == {"items": ["a", "x"]}  # not ["a", "x", "x"]
    assert client.get("/").json()["data"] == {"items": ["a"], "profile": {"tags": ["t"]}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    "data",
    [{"user": "a", "n": 1}, {"items": [1, [2]], "nested": {"k": [3]}}],
    ids=["flat", "nested"],
)
async def test_cache_never_shares_objects(backend: JWTBackend, data: dict[str, Any]) -> None:
    original = json.loads(json.dumps(data))
    record = new_record(**json.loads(json.dumps(data)))
    token = await backend.save(None, record, Delta({}), now=T0, ttl=600, rotate=False)
    assert token in backend._cache
    # The writer keeps mutating its objects after the save.
    for value in record.data.values():
        if isinstance(value, list):
            value.append("late")
    record.data["added"] = True
    for _ in range(2):  # a hit after a miss, and a hit after a hit
        loaded = await backend.load(token, now=T0)
        assert loaded is not None
        assert loaded.data == original
        loaded.data.clear()
        loaded.data["x"] = 1
    backend._cache.clear()
    miss = await backend.load(token, now=T0)
    assert miss is not None
    assert miss.data == original
    for value in miss.data.values():
        if isinstance(value, list | dict):
            value.clear()
    hit = await backend.load(token, now=T0)
    assert hit is not None
    assert hit.data == original


@pytest.mark.anyio
async def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    backend = JWTBackend(keys=[JWTKey(KID, SECRET)], cache_size=3)
    tokens = [
        await backend.save(None, new_record(n=i), Delta({}), now=T0, ttl=600, rotate=False)
        for i in range(5)
    ]
    assert list(backend._cache) == tokens[2:]
    # An evicted token is verified again (and cached again, evicting the oldest).
    record = await backend.load(tokens[0], now=T0)
    assert record is not None
    assert record.data == {"n": 0}
    assert list(backend._cache) == [*tokens[3:], tokens[0]]

    uncached = JWTBackend(keys=[JWTKey(KID, SECRET)], cache_size=0)
    token = await uncached.save(None, new_record(n=1), Delta({}), now=T0, ttl=600, rotate=False)
    loaded = await uncached.load(token, now=T0)
    assert loaded is not None
    assert loaded.data == {"n": 1}
    assert not uncached._cache


@pytest.mark.anyio
async def test_cache_hit_honours_exp_and_iat(backend: JWTBackend) -> None:
    token = await backend.save(None, new_record(n=1), Delta({}), now=T0, ttl=600, rotate=False)
    assert token in backend._cache
    assert await backend.load(token, now=T0 + 600 + 30) is not None  # within leeway
    with pytest.raises(InvalidToken):
        await backend.load(token, now=T0 - 31)  # a clock set back: issued in the future
    assert await backend.load(token, now=T0 + 600 + 31) is None
    assert token not in backend._cache
    assert await backend.load(token, now=T0 + 600 + 31) is None  # and on the miss path


@pytest.mark.anyio
async def test_retired_key_flag_survives_the_cache() -> None:
    old = JWTBackend(keys=[JWTKey("old", SECRET)])
    token = await old.save(None, new_record(n=1), Delta({}), now=T0, ttl=600, rotate=False)
    backend = JWTBackend(keys=[JWTKey("new", "n" * 40), JWTKey("old", SECRET)])
    for _ in range(2):
        record = await backend.load(token, now=T0)
        assert record is not None
        assert record.reissue
    assert token in backend._cache


# == the compact serialization: pyjwt interoperability, strict base64url ================

INTEROP = ["HS256", "RS256", "ES256", "EdDSA"]
ALL_ALGORITHMS = [
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "ES256",
    "ES384",
    "EdDSA",
]
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def key_pair(algorithm: str, rsa_key: rsa.RSAPrivateKey) -> tuple[Any, Any]:
    """(what signs, what verifies) for ``algorithm``: the secret twice for HS*."""
    private: Any
    if algorithm.startswith("HS"):
        secret = (SECRET * 2)[: {"HS256": 43, "HS384": 48, "HS512": 64}[algorithm]]
        return secret, secret
    if algorithm.startswith(("RS", "PS")):
        private = rsa_key
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    return private, pem_public(private)


def unb64(segment: str) -> bytes:
    """Lenient base64url decoding (the unused bits of the last character ignored)."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def other_spellings(segment: str) -> list[str]:
    """``segment`` with its last character replaced by each other character that
    differs only in the unused low bits, so that it decodes to the same bytes."""
    unused = {0: 0, 2: 4, 3: 2}[len(segment) % 4]
    index = B64_ALPHABET.index(segment[-1])
    base = index & ~((1 << unused) - 1)
    return [
        segment[:-1] + B64_ALPHABET[base | low] for low in range(1 << unused) if base | low != index
    ]


def issue(backend: JWTBackend, now: float = T0, **data: Any) -> tuple[str, SessionRecord]:
    record = new_record(now, **(data or {"user": "alice"}))
    token = run(backend.save(None, record, Delta({}), now=now, ttl=600, rotate=False))
    return token, record


@pytest.mark.parametrize("algorithm", INTEROP)
def test_tokens_we_issue_are_accepted_by_jwt_decode(
    rsa_key: rsa.RSAPrivateKey, algorithm: str
) -> None:
    private, public = key_pair(algorithm, rsa_key)
    backend = JWTBackend(keys=[JWTKey(KID, private, algorithm)])
    now = time.time()  # so pyjwt checks exp and iat against its own clock
    data = {"user": "alice", "items": [1, {"k": "é"}], "n": 1.5}
    token, record = issue(backend, now, **data)
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": KID, "typ": "JWT"}
    decoded = jwt.decode(token, public, algorithms=[algorithm], audience=AUD)
    assert decoded == parts(token)[1]
    assert decoded["dat"] == data
    assert decoded["sid"] == record.session_id


@pytest.mark.parametrize("algorithm", ["HS256", "HS512", "RS256", "PS256", "EdDSA"])
def test_tokens_we_issue_are_what_jwt_encode_writes(
    rsa_key: rsa.RSAPrivateKey, algorithm: str
) -> None:
    # Deterministic signatures (PSS and ECDSA are randomised: the header and payload
    # are compared for those), so the whole token must match byte for byte.
    private, _ = key_pair(algorithm, rsa_key)
    backend = JWTBackend(keys=[JWTKey(KID, private, algorithm)])
    token, _ = issue(backend, user="alice", items=[1, [2]])
    theirs = jwt.encode(parts(token)[1], private, algorithm=algorithm, headers={"kid": KID})
    if algorithm == "PS256":
        assert theirs.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]
    else:
        assert theirs == token


@pytest.mark.parametrize("algorithm", INTEROP)
def test_tokens_made_by_jwt_encode_are_accepted(rsa_key: rsa.RSAPrivateKey, algorithm: str) -> None:
    private, public = key_pair(algorithm, rsa_key)
    backend = JWTBackend(keys=[JWTKey(KID, private, algorithm)])
    body = claims(dat={"user": "bob", "items": [1, {"k": "é"}]})
    tokens = [
        jwt.encode(body, private, algorithm=algorithm, headers={"kid": KID}),
        # A header that is not byte for byte ours (other order, an extra member)
        # takes the parsing path and is accepted as before.
        jwt.encode(body, private, algorithm=algorithm, headers={"kid": KID}, sort_headers=False),
        jwt.encode(body, private, algorithm=algorithm, headers={"kid": KID, "cty": "x"}),
    ]
    assert len({token.split(".")[0] for token in tokens}) == 3
    for token in tokens:
        record = run(backend.load(token, now=T0))
        assert record is not None
        assert record.data == {"user": "bob", "items": [1, {"k": "é"}]}
        assert record.session_id == "forged-session-id"
        assert not record.reissue
    if not algorithm.startswith("HS"):
        # A retired key that only verifies, given as a public PEM.
        other = ed25519.Ed25519PrivateKey.generate()
        verify_only = JWTBackend(
            keys=[JWTKey("new", other, "EdDSA"), JWTKey(KID, None, algorithm, public_key=public)]
        )
        record = run(verify_only.load(tokens[0], now=T0))
        assert record is not None
        assert record.reissue


def test_ecdsa_signatures_are_raw_r_and_s(rsa_key: rsa.RSAPrivateKey) -> None:
    # JWS (RFC 7518 3.4) uses the fixed-width r || s, not cryptography's DER.
    for algorithm, size, digest in (
        ("ES256", 32, hashes.SHA256()),
        ("ES384", 48, hashes.SHA384()),
    ):
        private, _ = key_pair(algorithm, rsa_key)
        backend = JWTBackend(keys=[JWTKey(KID, private, algorithm)], cache_size=0)
        token, _ = issue(backend)
        signing_input, signature = token.rsplit(".", 1)
        raw = unb64(signature)
        assert len(raw) == 2 * size
        r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
        der = encode_dss_signature(r, s)
        private.public_key().verify(der, signing_input.encode(), ec.ECDSA(digest))
        # The DER form of a valid signature is not a JWS signature.
        with pytest.raises(InvalidToken):
            run(backend.load(f"{signing_input}.{b64(der)}", now=T0))
        assert run(backend.load(token, now=T0)) is not None


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_signature_of_the_wrong_length_is_rejected(
    rsa_key: rsa.RSAPrivateKey, algorithm: str
) -> None:
    private, _ = key_pair(algorithm, rsa_key)
    backend = JWTBackend(keys=[JWTKey(KID, private, algorithm)], cache_size=0)
    token, _ = issue(backend)
    signing_input, signature = token.rsplit(".", 1)
    raw = unb64(signature)
    for bad in (
        raw[:-1],
        raw + b"\0",
        b"\0" + raw,
        raw[: len(raw) // 2],
        raw * 2,
        raw[:1],
        b"\0",
        b"\0" * 2048,
    ):
        with pytest.raises(InvalidToken):  # and nothing else
            run(backend.load(f"{signing_input}.{b64(bad)}", now=T0))
    assert run(backend.load(token, now=T0)) is not None


def test_signature_of_the_wrong_length_gives_an_empty_session(client: TestClient) -> None:
    token = forge(header(), claims())
    signing_input, signature = token.rsplit(".", 1)
    assert_rejected(client, f"{signing_input}.{b64(unb64(signature)[:-1])}")
    assert_rejected(client, f"{signing_input}.{b64(unb64(signature) + b'x')}")
    assert_accepted(client, token)


def signed(algorithm: str, private: Any, head: str, body: str) -> str:
    """``head.body`` with a valid signature over exactly that text, however the
    segments are spelled (what a holder of the key could produce)."""
    alg = jwt.get_algorithm_by_name(algorithm)
    signature = alg.sign(f"{head}.{body}".encode(), alg.prepare_key(private))
    return f"{head}.{body}.{b64(signature)}"


@pytest.mark.parametrize("algorithm", INTEROP)
def test_non_canonical_base64url_is_rejected(rsa_key: rsa.RSAPrivateKey, algorithm: str) -> None:
    private, _ = key_pair(algorithm, rsa_key)
    backend = JWTBackend(keys=[JWTKey(KID, private, algorithm)], cache_size=0)
    for extra in ("", "x", "xx"):  # one of these leaves unused bits in the payload
        token, _ = issue(backend, user="alice" + extra)
        if len(token.split(".")[1]) % 4:
            break
    head, body, signature = token.split(".")
    # Control: re-signing the honest segments gives an accepted token.
    assert run(backend.load(signed(algorithm, private, head, body), now=T0)) is not None

    def variants(segment: str) -> list[str]:
        spellings = other_spellings(segment)
        assert spellings, "the segment has no unused bits"
        for spelling in spellings:
            assert unb64(spelling) == unb64(segment)  # the same bytes, spelled otherwise
        padded = segment + "=" * (-len(segment) % 4)  # compact JWS has no padding
        cut = segment[: len(segment) - (len(segment) % 4 + 3) % 4]  # 1 mod 4: no base64
        assert len(cut) % 4 == 1
        return [*spellings, padded, segment + "=", segment + "==", cut]

    bad_tokens = [f"{head}.{body}.{bad}" for bad in variants(signature)]
    bad_tokens += [signed(algorithm, private, bad, body) for bad in variants(head)]
    bad_tokens += [signed(algorithm, private, head, bad) for bad in variants(body)]
    for bad in bad_tokens:
        with pytest.raises(InvalidToken):
            run(backend.load(bad, now=T0))
    assert run(backend.load(token, now=T0)) is not None


def test_non_canonical_base64url_gives_an_empty_session(client: TestClient) -> None:
    token = forge(header(), claims())
    head, body, signature = token.split(".")
    assert_accepted(client, token)
    for spelling in other_spellings(signature):
        assert_rejected(client, f"{head}.{body}.{spelling}")
    for spelling in other_spellings(head):
        assert_rejected(client, signed("HS256", SECRET, spelling, body))
    assert_rejected(client, f"{head}.{body}.{signature}=")


def test_non_canonical_header_of_another_shape_is_rejected(client: TestClient) -> None:
    # A header that is not byte for byte ours is parsed: its base64 must be
    # canonical as well.
    token = forge({"typ": "JWT", "kid": KID, "alg": "HS256"}, claims())
    assert_accepted(client, token)
    head, body, _ = token.split(".")
    spellings = other_spellings(head)
    assert spellings
    for spelling in spellings:
        assert_rejected(client, signed("HS256", SECRET, spelling, body))


# Whatever this backend accepts, jwt.decode with the options the backend used to pass
# it accepts too: the hand-written parsing adds no way in.
_DIFF_ISSUER = "https://issuer.example"
_DIFF_BACKENDS = {
    None: JWTBackend(keys=[JWTKey(KID, SECRET)], cache_size=0),
    _DIFF_ISSUER: JWTBackend(keys=[JWTKey(KID, SECRET)], issuer=_DIFF_ISSUER, cache_size=0),
}
_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.integers(int(T0) - 60, int(T0) + 60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "x", AUD, _DIFF_ISSUER, "JWT", "HS256", KID, "k2"]),
    st.lists(st.sampled_from([AUD, "x", 1]), max_size=2),
    st.dictionaries(st.sampled_from(["user", "k"]), st.integers(0, 3), max_size=2),
)
_HEADER_NAMES = st.sampled_from(["alg", "kid", "typ", "crit", "b64", "cty", "jku"])
_CLAIM_NAMES = st.sampled_from(
    [
        "aud",
        "iss",
        "sub",
        "jti",
        "sid",
        "iat",
        "exp",
        "nbf",
        "crt",
        "rot",
        "dat",
        "idi",
        "fix",
        "brs",
        "uid",
    ]
)


@settings(max_examples=400, deadline=None, database=None)
@given(
    issuer=st.sampled_from([None, _DIFF_ISSUER]),
    # Mostly honest headers, so that a good share of the tokens is accepted.
    header_changes=st.one_of(
        st.just({}),
        st.dictionaries(_HEADER_NAMES, st.one_of(_ODD_VALUES, st.just(...)), max_size=1),
    ),
    claim_changes=st.one_of(
        st.just({}), st.dictionaries(_CLAIM_NAMES, st.one_of(_ODD_VALUES, st.just(...)), max_size=2)
    ),
    sort_header=st.booleans(),
)
def test_accepted_tokens_are_accepted_by_jwt_decode(
    issuer: str | None,
    header_changes: dict[str, Any],
    claim_changes: dict[str, Any],
    sort_header: bool,
) -> None:
    head = header(**header_changes)
    if sort_header:
        head = dict(sorted(head.items()))
    body = claims(**({"iss": issuer} if issuer else {}))
    body.update(claim_changes)
    body = {k: v for k, v in body.items() if v is not ...}
    token = forge(head, body)
    try:
        record = run(_DIFF_BACKENDS[issuer].load(token, now=T0))
    except InvalidToken:
        return
    if record is None:
        return  # expired
    # Accepted: the same token through pyjwt, as the backend used to call it.
    required = ["exp", "iat", "aud", "sid", "crt", "rot", "dat"] + (["iss"] if issuer else [])
    decoded = jwt.PyJWT(
        options={
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "strict_aud": True,
            "require": required,
            "enforce_minimum_key_length": True,
        }
    ).decode_complete(token, SECRET, algorithms=["HS256"], audience=AUD, issuer=issuer)
    assert decoded["payload"]["sid"] == record.session_id
    assert decoded["payload"]["dat"] == record.data


@pytest.mark.parametrize("algorithm", ["HS256", "HS512", "RS256", "PS256", "ES256", "EdDSA"])
def test_the_predicted_token_length_is_the_issued_one(
    rsa_key: rsa.RSAPrivateKey, algorithm: str
) -> None:
    """HybridBackend sizes an access token before its store write (so a write too big
    for the cookie stores nothing); the prediction must be exact for every key."""
    key: Any
    if algorithm.startswith("HS"):
        key = "k" * 64
    elif algorithm in ("RS256", "PS256"):
        key = rsa_key
    elif algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    backend = JWTBackend(keys=[JWTKey("a1", key, algorithm)], cache_size=0)
    for data, user in (({}, None), ({"k": "v" * 1000, "n": [1, {"é": 2}]}, "ann")):
        record = SessionRecord(
            session_id="s" * 22,
            data=data,
            created_at=1_700_000_000.5,
            last_seen=1_700_000_100.0,
            rotated_at=1_700_000_000,
            idle_timeout=600,
            user_id=user,
        )
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        claims = backend._claims(record, now=1_700_000_100.0, ttl=600)
        token = backend._issue(record, raw, now=1_700_000_100.0, ttl=600)
        assert backend._token_length(claims, raw) == len(token)
