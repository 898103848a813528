"""Server-side backends for tests, by name: the in-process memory backend, a real
Redis and a real local Redis Cluster. Each backend gets its own key prefix, so tests
share the servers without seeing each other's keys and never flush them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from asgi_sessions import MemoryBackend
from asgi_sessions.backends.redis import RedisBackend

SERVER_BACKENDS = ["memory", "redis", "cluster", "hybrid-memory", "hybrid-redis"]
HYBRID_SECRET = "hybrid-test-secret-of-at-least-32-bytes!"
Factory = Callable[..., Any]


@asynccontextmanager
async def backend_factory(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """A factory of fresh backends of ``kind``; keyword arguments go to the backend
    (``rotation_grace``, ``clock``, ...). Everything is closed on exit."""
    made: list[Any] = []
    clients: list[Any] = []
    store_kind = kind.removeprefix("hybrid-")
    if store_kind == "redis":
        url = request.getfixturevalue("redis_url")
    elif kind == "cluster":
        cluster = request.getfixturevalue("redis_cluster")

    def factory(**settings: Any) -> Any:
        backend: Any
        client: Any
        if store_kind == "memory":
            backend = MemoryBackend(**settings)
        else:
            if store_kind == "redis":
                client = Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            else:
                nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
                client = RedisCluster(
                    startup_nodes=nodes, socket_timeout=2, socket_connect_timeout=2
                )
            clients.append(client)
            backend = RedisBackend(client, prefix=f"t{uuid.uuid4().hex[:12]}:", **settings)
        if kind != store_kind:
            # The hybrid backend over that store: per-user operations are the store's,
            # and this process stops revoked access tokens at once.
            from asgi_sessions import HybridBackend

            clock = settings.get("clock")
            extra = {} if clock is None else {"clock": clock}
            backend = HybridBackend(backend, secret=HYBRID_SECRET, **extra)
        made.append(backend)
        return backend

    try:
        yield factory
    finally:
        for backend in made:
            await backend.aclose()
        for client in clients:
            await client.aclose()


@pytest.fixture(params=SERVER_BACKENDS)
async def make_server_backend(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    async with backend_factory(request.param, request) as factory:
        factory.real_time = not request.param.endswith("memory")  # type: ignore[attr-defined]
        yield factory
