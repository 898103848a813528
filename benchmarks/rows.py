"""What every benchmark harness shares: the app, the scenarios and the rows.

A *row* is one configuration under test: the same Starlette app wrapped by one
session middleware (or by none, for the ``bare`` floor). Rows live in a registry,
name -> async factory, so a harness iterates over ``ROWS`` and new rows (Redis,
hybrid, raw-Redis floors) are one decorated function each. A factory that cannot
run here (a missing optional package, no Redis) raises :class:`RowUnavailable`
and the harness skips the row with a note.

A *scenario* is one request shape (cookie or not, and what the handler does with
the session); the harness checks that every row really does what the scenario
says before it trusts a timing.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

__all__ = [
    "MISSING",
    "ROWS",
    "SCENARIOS",
    "SECRET",
    "USER",
    "Row",
    "RowFactory",
    "RowSpec",
    "RowUnavailable",
    "Scenario",
    "make_app",
    "row",
]

# One secret for every signed-cookie row; 44 bytes, so HS256 accepts it.
SECRET = "asgi-sessions-benchmark-secret-0123456789abc"
USER = "alice"
MISSING = "<missing>"
LIFETIME = timedelta(days=14)  # Starlette's default max_age; used where a row needs one


# -- the app -----------------------------------------------------------------------


def make_app() -> Starlette:
    """A small Starlette app; every route answers a short text body.

    ``/untouched`` never looks at the session; ``/read`` returns ``session["user"]``;
    ``/write`` stores a new value in ``session["n"]`` on every request and returns
    it; ``/login`` stores the small payload the cookie scenarios start from;
    ``/peek`` returns ``session["n"]`` (the harness uses it to check a write).
    """
    counter = itertools.count(1)

    async def untouched(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def read(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.session.get("user", MISSING)))

    async def write(request: Request) -> PlainTextResponse:
        n = next(counter)
        request.session["n"] = n
        return PlainTextResponse(str(n))

    async def login(request: Request) -> PlainTextResponse:
        request.session["user"] = USER
        request.session["n"] = 0
        return PlainTextResponse("ok")

    async def peek(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(request.session.get("n", MISSING)))

    return Starlette(
        routes=[
            Route("/untouched", untouched),
            Route("/read", read),
            Route("/write", write),
            Route("/login", login),
            Route("/peek", peek),
        ]
    )


# -- scenarios ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    path: str
    cookie: bool  # the request carries the row's valid login cookie
    reads: bool  # the handler reads session["user"]: the body must be USER
    writes: bool  # the handler writes: a Set-Cookie must carry the new value


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("s1", "no cookie, untouched", "/untouched", cookie=False, reads=False, writes=False),
    Scenario("s2", "cookie, read", "/read", cookie=True, reads=True, writes=False),
    Scenario("s3", "cookie, write", "/write", cookie=True, reads=False, writes=True),
    Scenario(
        "s4", "new session (no cookie, write)", "/write", cookie=False, reads=False, writes=True
    ),
    Scenario("s5", "cookie, untouched", "/untouched", cookie=True, reads=False, writes=False),
)


# -- rows --------------------------------------------------------------------------


class RowUnavailable(Exception):
    """This row cannot run here; the message says why (shown to the user)."""


@dataclass(slots=True)
class Row:
    app: ASGIApp
    cookie_name: str = "session"
    # The middleware sends Set-Cookie on every response of a stored session, even
    # when nothing changed (starsessions re-signs the cookie each time).
    resaves_unchanged: bool = False
    # The floor: no session middleware at all, so the harness itself puts a plain
    # dict into scope["session"] for the handlers that use request.session.
    plain_session: bool = False
    # Redis commands issued so far (a counter the harness reads before and after a
    # request); None for rows that use no Redis.
    commands: Callable[[], int] | None = None
    aclose: Callable[[], Awaitable[None]] | None = None


RowFactory = Callable[[ASGIApp], Awaitable[Row]]


@dataclass(frozen=True, slots=True)
class RowSpec:
    name: str
    description: str
    factory: RowFactory


ROWS: dict[str, RowSpec] = {}


def row(name: str, description: str) -> Callable[[RowFactory], RowFactory]:
    """Register ``factory(inner_app) -> Row`` under ``name`` (in display order)."""

    def register(factory: RowFactory) -> RowFactory:
        if name in ROWS:
            raise ValueError(f"row {name!r} registered twice")
        ROWS[name] = RowSpec(name, description, factory)
        return factory

    return register


@row("bare", "the Starlette app, no session middleware (the floor)")
async def _bare(inner: ASGIApp) -> Row:
    return Row(inner, plain_session=True)


@row("starlette", "starlette.middleware.sessions.SessionMiddleware (itsdangerous)")
async def _starlette(inner: ASGIApp) -> Row:
    from starlette.middleware.sessions import SessionMiddleware

    return Row(SessionMiddleware(inner, secret_key=SECRET))


@row("starsessions-cookie", "starsessions SessionMiddleware + autoload, CookieStore")
async def _starsessions_cookie(inner: ASGIApp) -> Row:
    try:
        from starsessions import CookieStore, SessionAutoloadMiddleware, SessionMiddleware
    except ImportError as exc:
        raise RowUnavailable(f"starsessions is not installed ({exc})") from exc
    # Outermost first, as app.add_middleware() would stack them: the session
    # middleware sets up the handler, the autoload middleware loads the cookie.
    app = SessionMiddleware(
        SessionAutoloadMiddleware(inner),
        store=CookieStore(secret_key=SECRET),
        lifetime=LIFETIME,
    )
    return Row(app, resaves_unchanged=True)


@row("ours-memory", "asgi_sessions.SessionMiddleware + MemoryBackend")
async def _ours_memory(inner: ASGIApp) -> Row:
    from asgi_sessions import MemoryBackend, SessionMiddleware

    return Row(SessionMiddleware(inner, backend=MemoryBackend()))


def _jwt_row(inner: ASGIApp, **options: Any) -> Row:
    from asgi_sessions import SessionMiddleware

    try:
        from asgi_sessions.backends.jwt import JWTBackend
    except Exception as exc:  # a missing pyjwt, or a module still being written
        raise RowUnavailable(f"asgi_sessions.backends.jwt does not import: {exc!r}") from exc
    return Row(SessionMiddleware(inner, backend=JWTBackend(secret=SECRET, **options)))


@row(
    "ours-jwt",
    "asgi_sessions.SessionMiddleware + JWTBackend (HS256, default settings: a repeated "
    "token is a hit in its verified-token cache)",
)
async def _ours_jwt(inner: ASGIApp) -> Row:
    return _jwt_row(inner)


@row(
    "ours-jwt-nocache",
    "the same with cache_size=0: every request verifies the signature, as for a token "
    "this process has not seen (a new visitor, another worker, more users than the cache)",
)
async def _ours_jwt_nocache(inner: ASGIApp) -> Row:
    return _jwt_row(inner, cache_size=0)
