"""Fuzzing the whole middleware (issue 7, item 1): hostile Cookie headers never make
an exception escape, whatever the backend; the request always gets the app's 200
with an empty session.

Bounded for CI (``ASGI_SESSIONS_FUZZ_EXAMPLES``, default 200 per backend); a long run
is the same test with a large value, by hand.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_sessions import HybridBackend, JWTBackend, MemoryBackend, SessionMiddleware
from asgi_sessions.backends.redis import RedisBackend
from tests.asgi import Client, session_app

EXAMPLES = int(os.environ.get("ASGI_SESSIONS_FUZZ_EXAMPLES", "200"))
SECRET = "fuzz-test-secret-of-at-least-32-bytes!!"

_TOKENISH = st.text(
    alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."),
    max_size=400,
)
_NAMES = st.sampled_from(["session", "session.0", "session.1", "session.9", "Session", "other"])
_VALUES = st.one_of(
    _TOKENISH,
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.just("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzaWQiOiJ4In0."),  # alg none
    st.just("eyJhbGciOiJIUzI1NiIsImtpZCI6Ii4uLy4uL2V0Yy9wYXNzd2QifQ.e30.AAAA"),  # odd kid
)
COOKIE_HEADERS = st.lists(
    st.one_of(
        st.tuples(_NAMES, _VALUES).map(lambda nv: f"{nv[0]}={nv[1]}"),
        st.text(max_size=60),
    ),
    max_size=6,
).map(lambda parts: "; ".join(parts).encode("latin-1", "replace"))


@pytest.fixture(params=["memory", "jwt", "redis", "hybrid"])
def app(request: pytest.FixtureRequest) -> Iterator[Any]:
    kind = request.param
    backend: Any
    if kind == "memory":
        backend = MemoryBackend()
    elif kind == "jwt":
        backend = JWTBackend(SECRET)
    else:
        store = RedisBackend(
            request.getfixturevalue("redis_url"), prefix=f"fuzz{uuid.uuid4().hex[:8]}:"
        )
        backend = store if kind == "redis" else HybridBackend(store, secret=SECRET)
    loop = asyncio.new_event_loop()
    yield loop, SessionMiddleware(session_app, backend=backend)
    loop.run_until_complete(backend.aclose())
    loop.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(header=COOKIE_HEADERS)
def test_no_cookie_header_makes_an_exception_escape(app: Any, header: bytes) -> None:
    loop, middleware = app
    response = loop.run_until_complete(Client(middleware).get("/read", cookie=header))
    assert response.status == 200
    assert response.json() == {}
