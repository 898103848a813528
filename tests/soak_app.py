"""The app the soak test (``tests/test_soak.py``) serves with uvicorn, in a process of its own.

    ASGI_SESSIONS_SOAK_REDIS_URL=redis://127.0.0.1:PORT/0 [ASGI_SESSIONS_SOAK_FAIL_OPEN=1] \\
        python -m uvicorn --factory tests.soak_app:create_app --lifespan on --no-access-log ...

A Starlette app behind the real :class:`SessionMiddleware` over a real
:class:`RedisBackend` with short timeouts: fail-closed by default, fail-open when
``ASGI_SESSIONS_SOAK_FAIL_OPEN=1``. Every session route answers
``{"data": <the session as the handler left it>}``:

    /login?user=U&secret=S   clear, rotate, bind_user(U), then user, secret and n=0
    /read                    the session as loaded
    /write?n=K               n = K (an int)
    /logout                  invalidate()
    /untouched               "ok", the session never touched

``/_soak/state`` (no session) reports the process's own figures for the leak checks,
after a full collection: gc-tracked objects (and how many of each type) and asyncio
tasks.

The cookie is not ``Secure`` (``https_only=False``): the test talks plain HTTP on
loopback, and its browsers keep their cookies by hand anyway. The package's bounded
caches (the backend's token -> ID, view -> decoded record and ID -> refresh due, 10,000
entries each, and the cookie codec's Cookie header -> parsed cookie, 1,024) are bounded
here at :data:`CACHE_SIZE`, through their private names, so that they are full by the
end of the warm-up and any later growth of the process is not a cache filling up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import asgi_sessions.cookies
from asgi_sessions import SessionMiddleware
from asgi_sessions.backends.redis import RedisBackend

__all__ = [
    "CACHE_SIZE",
    "CONNECT_TIMEOUT",
    "FAIL_OPEN_ENV",
    "MAX_CONNECTIONS",
    "OPERATION_TIMEOUT",
    "REDIS_ENV",
    "SOCKET_TIMEOUT",
    "create_app",
]

REDIS_ENV = "ASGI_SESSIONS_SOAK_REDIS_URL"
FAIL_OPEN_ENV = "ASGI_SESSIONS_SOAK_FAIL_OPEN"

OPERATION_TIMEOUT = 1.0
SOCKET_TIMEOUT = 0.3
CONNECT_TIMEOUT = 0.3
MAX_CONNECTIONS = 16
CACHE_SIZE = 256


def _data(request: Request) -> Response:
    return JSONResponse({"data": dict(request.session)})


async def login(request: Request) -> Response:
    session = request.session
    session.clear()
    session.rotate()
    session.bind_user(request.query_params["user"])
    session["user"] = request.query_params["user"]
    session["secret"] = request.query_params["secret"]
    session["n"] = 0
    return _data(request)


async def read(request: Request) -> Response:
    return _data(request)


async def write(request: Request) -> Response:
    request.session["n"] = int(request.query_params["n"])
    return _data(request)


async def logout(request: Request) -> Response:
    request.session.invalidate()
    return _data(request)


async def untouched(request: Request) -> Response:
    return PlainTextResponse("ok")


async def state(request: Request) -> Response:
    gc.collect()
    objects = gc.get_objects()
    types = collections.Counter(type(o).__qualname__ for o in objects)
    return JSONResponse(
        {"objects": len(objects), "types": dict(types), "tasks": len(asyncio.all_tasks())}
    )


def create_app() -> Starlette:
    """The app, over the Redis named in the environment (uvicorn ``--factory``)."""
    backend = RedisBackend(
        os.environ[REDIS_ENV],
        operation_timeout=OPERATION_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
        retries=1,
        max_connections=MAX_CONNECTIONS,
    )
    backend._cache_size = backend._due_size = CACHE_SIZE
    asgi_sessions.cookies._CACHE_ENTRIES = CACHE_SIZE

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await backend.aclose()

    return Starlette(
        routes=[
            Route("/login", login),
            Route("/read", read),
            Route("/write", write),
            Route("/logout", logout),
            Route("/untouched", untouched),
            Route("/_soak/state", state),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                backend=backend,
                https_only=False,
                fail_open=os.environ.get(FAIL_OPEN_ENV) == "1",
            )
        ],
        lifespan=lifespan,
    )
