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
    "configure_redis",
    "make_app",
    "redis_url",
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
    # The Redis server this row's commands go to (None: the row uses no Redis). The
    # harness counts the commands there per scenario, over an untimed batch of
    # requests, for the "Redis cmds/req" column.
    redis_url: str | None = None
    # The scenario keys this row runs (None: all of them). The raw-Redis floors run
    # only where a bar compares with them, which keeps the full run short.
    scenarios: frozenset[str] | None = None
    aclose: Callable[[], Awaitable[None]] | None = None


RowFactory = Callable[[ASGIApp], Awaitable[Row]]


@dataclass(frozen=True, slots=True)
class RowSpec:
    name: str
    description: str
    factory: RowFactory
    redis: bool = False  # the row needs a Redis server (see configure_redis)


ROWS: dict[str, RowSpec] = {}


def row(name: str, description: str, *, redis: bool = False) -> Callable[[RowFactory], RowFactory]:
    """Register ``factory(inner_app) -> Row`` under ``name`` (in display order);
    ``redis=True`` for a row that needs the server given to :func:`configure_redis`."""

    def register(factory: RowFactory) -> RowFactory:
        if name in ROWS:
            raise ValueError(f"row {name!r} registered twice")
        ROWS[name] = RowSpec(name, description, factory, redis)
        return factory

    return register


# -- the Redis server the Redis rows use -------------------------------------------

_redis_url: str | None = None
_redis_missing = "no Redis server was configured for this run"


def configure_redis(url: str | None, why_not: str = "") -> None:
    """The server the Redis rows use from now on (the harness starts a private one, or
    takes ``--redis-url``); ``None`` makes them unavailable, ``why_not`` says why."""
    global _redis_url, _redis_missing
    _redis_url = url
    _redis_missing = why_not or "no Redis server was configured for this run"


def redis_url() -> str:
    if _redis_url is None:
        raise RowUnavailable(_redis_missing)
    return _redis_url


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


# -- Redis rows ----------------------------------------------------------------------
#
# Every Redis row gets one pooled redis.asyncio client of its own, made exactly as
# RedisBackend makes one from a URL (a pool that waits for a free connection, the same socket timeouts,
# retries and health checks): the floors and starsessions are built on the very
# client a RedisBackend(url) creates, so no row gets cheaper connection handling.
# Keys live under "bench:" prefixes and all expire; nothing is ever flushed.

REDIS_PREFIX = "bench:"
FLOOR_KEY = REDIS_PREFIX + "floor"
# A value about the size of a small session record (what the floors read and write).
FLOOR_VALUE = b"\x82\xa4user\xa5alice\xa1n\x00" + b"m" * 100
FLOOR_TTL = 3600


def _redis_client(url: str) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """A client configured as RedisBackend(url) configures its own, and its closer."""
    try:
        from asgi_sessions.backends.redis import RedisBackend
    except Exception as exc:  # redis-py missing, or the module does not import
        raise RowUnavailable(f"asgi_sessions.backends.redis does not import: {exc!r}") from exc
    backend = RedisBackend(url, prefix=REDIS_PREFIX + "unused:")
    return backend.client, backend.aclose


class RawRedisFloor:
    """The floor of the Redis scenarios: one raw ``GET`` of a fixed key before the
    app runs (and, with ``write``, one raw ``SET`` of it after), in the middleware
    position, on every request. No session logic at all."""

    def __init__(self, app: ASGIApp, client: Any, *, write: bool) -> None:
        self.app = app
        self.client = client
        self.write = write

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = self.client
        await client.get(FLOOR_KEY)
        await self.app(scope, receive, send)
        if self.write:
            await client.set(FLOOR_KEY, FLOOR_VALUE, ex=FLOOR_TTL)


async def _floor(inner: ASGIApp, *, write: bool, scenarios: frozenset[str]) -> Row:
    url = redis_url()
    client, aclose = _redis_client(url)
    try:
        await client.set(FLOOR_KEY, FLOOR_VALUE, ex=FLOOR_TTL)
    except Exception as exc:
        await aclose()
        raise RowUnavailable(f"Redis at the configured URL does not answer: {exc!r}") from exc
    return Row(
        RawRedisFloor(inner, client, write=write),
        plain_session=True,
        redis_url=url,
        scenarios=scenarios,
        aclose=aclose,
    )


@row(
    "bare+GET",
    "the bare app behind a tiny middleware that awaits one raw Redis GET of a fixed "
    "key per request (the floor of the Redis read and untouched scenarios: run in "
    "s2 and s5 only)",
    redis=True,
)
async def _bare_get(inner: ASGIApp) -> Row:
    return await _floor(inner, write=False, scenarios=frozenset({"s2", "s5"}))


@row(
    "bare+GET+SET",
    "the same plus one raw SET of that key after the app (the floor of the Redis "
    "read-modify-write scenario: run in s3 only)",
    redis=True,
)
async def _bare_get_set(inner: ASGIApp) -> Row:
    return await _floor(inner, write=True, scenarios=frozenset({"s3"}))


@row("ours-redis", "asgi_sessions.SessionMiddleware + RedisBackend(url)", redis=True)
async def _ours_redis(inner: ASGIApp) -> Row:
    from asgi_sessions import SessionMiddleware

    url = redis_url()
    try:
        from asgi_sessions.backends.redis import RedisBackend
    except Exception as exc:
        raise RowUnavailable(f"asgi_sessions.backends.redis does not import: {exc!r}") from exc
    backend = RedisBackend(url, prefix=REDIS_PREFIX + "ours:")
    return Row(SessionMiddleware(inner, backend=backend), redis_url=url, aclose=backend.aclose)


@row(
    "ours-hybrid",
    "asgi_sessions.SessionMiddleware + HybridBackend(RedisBackend(url)) (HS256 access "
    "tokens of 15 minutes; a valid access token is answered without Redis)",
    redis=True,
)
async def _ours_hybrid(inner: ASGIApp) -> Row:
    from asgi_sessions import SessionMiddleware

    url = redis_url()
    try:
        from asgi_sessions.backends.hybrid import HybridBackend
        from asgi_sessions.backends.redis import RedisBackend
    except Exception as exc:
        raise RowUnavailable(f"asgi_sessions.backends.hybrid does not import: {exc!r}") from exc
    backend = HybridBackend(RedisBackend(url, prefix=REDIS_PREFIX + "hybrid:"), secret=SECRET)
    return Row(SessionMiddleware(inner, backend=backend), redis_url=url, aclose=backend.aclose)


@row(
    "starsessions-redis",
    "starsessions SessionMiddleware + autoload, RedisStore on a client made as "
    "RedisBackend(url) makes its own",
    redis=True,
)
async def _starsessions_redis(inner: ASGIApp) -> Row:
    try:
        from starsessions import SessionAutoloadMiddleware, SessionMiddleware
        from starsessions.stores.redis import RedisStore
    except ImportError as exc:
        raise RowUnavailable(f"starsessions' RedisStore does not import ({exc})") from exc
    url = redis_url()
    client, aclose = _redis_client(url)
    store = RedisStore(connection=client, prefix=REDIS_PREFIX + "starsessions:")
    app = SessionMiddleware(SessionAutoloadMiddleware(inner), store=store, lifetime=LIFETIME)
    return Row(app, resaves_unchanged=True, redis_url=url, aclose=aclose)
