"""The cookie codec: parsing raw Cookie bytes, rendering, chunking, validation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_sessions import SessionMiddleware
from asgi_sessions.cookies import BROWSER_COOKIE_LIMIT, CookieSettings
from tests.asgi import session_app

TOKEN = "abcDEF012_-" * 3 + "abcDEF0123"  # 43 chars


def read(header: bytes, **settings: Any) -> Any:
    return CookieSettings(**settings).read([(b"host", b"x"), (b"cookie", header)])


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (b"session=" + TOKEN.encode(), TOKEN),
        (b"a=1; session=" + TOKEN.encode() + b"; b=2", TOKEN),
        (b"a=1;session=" + TOKEN.encode() + b";b=2", TOKEN),
        (b"xsession=1; sessionx=2", None),
        (b"session=", None),
        (b"session", None),
        (b"", None),
    ],
)
def test_read_finds_exactly_our_cookie(header: bytes, value: str | None) -> None:
    result = read(header)
    assert result.value == value
    assert result.problem is None


def test_no_cookie_header_is_the_fast_absent_result() -> None:
    result = CookieSettings().read([(b"host", b"x")])
    assert (result.value, result.problem, result.names) == (None, None, ())


def test_cookie_split_over_several_headers_is_joined() -> None:
    result = CookieSettings().read([(b"cookie", b"a=1"), (b"cookie", b"session=" + TOKEN.encode())])
    assert result.value == TOKEN


def test_duplicate_is_a_problem() -> None:
    result = read(b"session=a; session=b")
    assert result.value is None
    assert result.problem == "duplicate session cookie"


@pytest.mark.parametrize(
    "header",
    [b"session=a b", b"session=\xff\xfe", b"session=a,b", b'session="abc"', b"session=a\\b"],
)
def test_charset_outside_what_we_issue_is_refused(header: bytes) -> None:
    assert read(header).value is None
    assert read(header).problem is not None


def test_oversize_value_is_refused() -> None:
    settings = CookieSettings(max_chunks=1)
    header = b"session=" + b"a" * (settings.max_value_size + 1)
    assert settings.read([(b"cookie", header)]).problem is not None


def test_chunks_are_joined_in_order() -> None:
    result = read(b"session.1=def; session.0=abc; session.2=gh")
    assert result.value == "abcdefgh"
    assert set(result.names) == {"session.0", "session.1", "session.2"}


@pytest.mark.parametrize(
    "header", [b"session.0=a; session.2=c", b"session.1=b", b"session.0=a; session.0=b"]
)
def test_gaps_and_repeated_chunks_are_refused(header: bytes) -> None:
    result = read(header)
    assert result.value is None
    assert result.problem is not None


def test_chunks_from_a_higher_max_cookie_chunks_are_left_out_and_expired_next() -> None:
    """A browser keeps the chunks it got before max_cookie_chunks was lowered (until
    their Max-Age): they are not part of the value, never make it malformed, and the
    next Set-Cookie expires them. Names past the highest allowed setting are not ours."""
    settings = CookieSettings(max_chunks=2)
    header = b"session.0=ab; session.1=cd; session.2=old; session.3=old; session.50=x"
    result = settings.read([(b"cookie", header)])
    assert result.value == "abcd"
    assert result.problem is None
    assert set(result.names) == {"session.0", "session.1", "session.2", "session.3"}
    expired = [h.split(b"=", 1)[0] for h in settings.render("new", 60, result.names)[1:]]
    assert set(expired) == {b"session.0", b"session.1", b"session.2", b"session.3"}
    alone = settings.read([(b"cookie", b"session.3=old")])
    assert (alone.value, alone.problem, alone.names) == (None, None, ("session.3",))


def test_unchunked_cookie_wins_over_stale_chunks_and_reports_them() -> None:
    result = read(b"session=abc; session.0=zzz; session.1=yyy")
    assert result.value == "abc"
    assert set(result.names) == {"session", "session.0", "session.1"}


def test_names_are_reported_once_and_only_names_we_could_have_written() -> None:
    """Found by tests/test_fuzz_targets.py: every name reported gets an expiring
    Set-Cookie when the session is written, and a header repeating ``session.1``
    2,000 times made a response with 2,001 Set-Cookie headers."""
    header = b"; ".join([b"session.1=x"] * 2000) + b"; session.01=y; session.99=z; session=v"
    result = read(header)
    assert result.value == "v"
    assert result.names == ("session.1", "session")
    settings = CookieSettings()
    assert len(settings.render("new", 60, result.names)) == 2


def test_a_chunk_name_we_never_write_is_not_a_chunk() -> None:
    assert read(b"session.00=abc").value is None
    assert read(b"session.00=abc").names == ()
    assert read(b"session.0=abc; session.01=zzz").value == "abc"


def test_render_attributes_once_and_in_order() -> None:
    settings = CookieSettings(domain="example.com", partitioned=True, same_site="strict")
    (header,) = settings.render("v", 60)
    assert header == (
        b"session=v; Max-Age=60; Path=/; Domain=example.com; HttpOnly; Secure; "
        b"SameSite=Strict; Partitioned"
    )
    (browser,) = settings.render("v", None)
    assert b"Max-Age" not in browser


def test_render_delete_expires_with_max_age_zero_and_past_expires() -> None:
    headers = CookieSettings(path="/app").render_delete(["session.0", "session.1"])
    assert [h.split(b"=", 1)[0] for h in headers] == [b"session", b"session.0", b"session.1"]
    for header in headers:
        assert b"=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/app;" in header


def test_big_values_are_chunked_under_the_browser_limit_and_read_back() -> None:
    settings = CookieSettings(max_chunks=4)
    value = "x" * 10_000
    headers = settings.render(value, 60)
    assert len(headers) == 3
    pairs = [h.split(b";", 1)[0] for h in headers]
    assert all(len(pair) <= BROWSER_COOKIE_LIMIT for pair in pairs)
    assert settings.read([(b"cookie", b"; ".join(pairs))]).value == value


def test_shrinking_clears_stale_chunks_and_growing_clears_the_plain_cookie() -> None:
    settings = CookieSettings()
    small = settings.render("small", 60, seen=["session.0", "session.1"])
    assert small[0].startswith(b"session=small;")
    assert [h.split(b"=", 1)[0] for h in small[1:]] == [b"session.0", b"session.1"]
    assert all(b"Max-Age=0" in h for h in small[1:])
    big = settings.render("y" * 5000, 60, seen=["session", "session.0", "session.1", "session.2"])
    names = [h.split(b"=", 1)[0] for h in big]
    assert names == [b"session.0", b"session.1", b"session", b"session.2"]
    assert all(b"Max-Age=0" in h for h in big[2:])


def test_value_beyond_max_chunks_is_refused_on_render() -> None:
    with pytest.raises(ValueError, match="max_cookie_chunks"):
        CookieSettings(max_chunks=2).render("z" * 9000, 60)


def test_owns_recognises_our_cookie_and_chunks_only() -> None:
    settings = CookieSettings()
    assert settings.owns(b"session=x; Path=/")
    assert settings.owns(b"session.3=x")
    assert not settings.owns(b"sessionx=1")
    assert not settings.owns(b"session.a=1")


# -- property: arbitrary Cookie bytes never make the middleware raise -------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.builds(
                lambda n, v: n + b"=" + v,
                st.sampled_from(
                    [b"session", b"session.0", b"session.1", b"session.7", b" session"]
                ),
                st.one_of(
                    st.binary(max_size=120), st.text("AZaz09_-.", max_size=200).map(str.encode)
                ),
            ),
        ),
        max_size=6,
    ).map(lambda parts: b"; ".join(parts))
)
def test_arbitrary_cookie_bytes_never_escape_the_middleware(header: bytes) -> None:
    for middleware in MIDDLEWARES:
        _drive(middleware, header)


def _jwt_middleware() -> SessionMiddleware:
    from asgi_sessions import JWTBackend

    return SessionMiddleware(session_app, backend=JWTBackend("k" * 32))


MIDDLEWARES = [SessionMiddleware(session_app), _jwt_middleware()]


def _drive(middleware: SessionMiddleware, header: bytes) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/read", "query_string": b"", "headers": [(b"cookie", header)]}
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"{}"
    assert not [v for k, v in sent[0]["headers"] if k == b"set-cookie"]


@pytest.mark.anyio
async def test_lowering_max_cookie_chunks_does_not_lock_out_a_browser_with_old_chunks() -> None:
    """A JWT session in three chunks, then the app restarts with max_cookie_chunks=2.
    The old chunks no longer make a value that verifies (an empty session, not an
    error), the next write expires the chunk the new limit no longer covers, and the
    browser then keeps its new two-chunk session. Before, a chunk past the limit made
    every cookie of that browser malformed, and was never expired."""
    from asgi_sessions.backends.jwt import JWTBackend
    from tests.asgi import Client

    secret = "tB4u7-WJx3sI1yYhZk9v0cQe2LmN5pRaGfDdoEiXqUw"
    big = Client(SessionMiddleware(session_app, backend=JWTBackend(secret), max_cookie_chunks=4))
    await big.get("/set?blob=" + "a1b2c3d4" * 1100)  # a token of about 12 KB
    assert sorted(big.jar) == ["session.0", "session.1", "session.2"]

    lowered = SessionMiddleware(session_app, backend=JWTBackend(secret), max_cookie_chunks=2)
    browser = Client(lowered, jar=dict(big.jar))
    assert (await browser.get("/read")).json() == {}
    await browser.get("/set?blob=" + "e5f6" * 1100)  # about 6 KB: two chunks
    assert sorted(browser.jar) == ["session.0", "session.1"]  # session.2 expired
    assert (await browser.get("/read")).json() == {"blob": "e5f6" * 1100}
