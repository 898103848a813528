"""The Redis test infrastructure itself: each fixture gives a real, working server or setup."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import anyio
import pytest
import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from tests import redis_servers
from tests.redis_servers import (
    EXTERNAL_REDIS_ENV,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    RedisServerError,
    provide_redis_url,
    require_redis_binaries,
)

UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def unique_key(prefix: str = "test-redis-servers") -> str:
    return f"{prefix}:{uuid.uuid4().hex}"


def client_for(server: RedisServer, socket_timeout: float | None = None) -> redis.asyncio.Redis:
    """A client that fails at once instead of retrying: these tests look at single failures."""
    return redis.asyncio.Redis.from_url(
        server.url, socket_timeout=socket_timeout, retry=Retry(NoBackoff(), 0)
    )


@pytest.fixture
def needs_redis_server() -> None:
    require_redis_binaries()


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- redis_url -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redis_url_answers_set_and_get(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        key = unique_key()
        await client.set(key, b"value", ex=60)
        assert await client.get(key) == b"value"
        await client.delete(key)
    finally:
        await client.aclose()


def test_external_url_replaces_the_private_server(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(EXTERNAL_REDIS_ENV, private_redis.url)

    def no_private_server() -> Path:
        raise AssertionError("a private server was started although an external URL is set")

    with provide_redis_url(no_private_server) as url:
        assert url == private_redis.url


def test_external_url_that_does_not_answer_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    monkeypatch.setenv(EXTERNAL_REDIS_ENV, f"redis://127.0.0.1:{dead_port}/0")
    with (
        pytest.raises(pytest.fail.Exception, match=EXTERNAL_REDIS_ENV),
        provide_redis_url(lambda: Path("/nonexistent")),
    ):
        pass


def test_without_redis_server_tests_skip_except_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_servers.redis_server_binary() is None

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server not found"):
        require_redis_binaries()

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_redis_binaries()


# --- private_redis and RedisServer -----------------------------------------------------------


@pytest.mark.anyio
async def test_paused_server_times_out_and_answers_again_after_resume(
    private_redis: RedisServer,
) -> None:
    client = client_for(private_redis, socket_timeout=0.5)
    try:
        await client.set("k", b"v")
        private_redis.pause()
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            await client.get("k")
        assert time.monotonic() - started < 2

        private_redis.resume()
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_killed_server_refuses_and_restart_brings_it_back_empty(
    private_redis: RedisServer,
) -> None:
    port, old_pid = private_redis.port, private_redis.pid
    client = client_for(private_redis, socket_timeout=1)
    try:
        await client.set("k", b"v")
        private_redis.kill()
        assert not private_redis.running
        assert not pid_exists(old_pid)
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get("k")

        private_redis.restart()
        assert (private_redis.port, private_redis.running) == (port, True)
        assert private_redis.pid != old_pid
        assert await client.get("k") is None  # no persistence: a restart starts empty
    finally:
        await client.aclose()


def test_stop_ends_even_a_paused_server(private_redis: RedisServer) -> None:
    pid = private_redis.pid
    private_redis.pause()
    started = time.monotonic()
    private_redis.stop()
    assert time.monotonic() - started < 3
    assert not private_redis.running
    assert not pid_exists(pid)


@pytest.mark.usefixtures("needs_redis_server")
@pytest.mark.anyio
async def test_extra_args_and_config_set(tmp_path: Path) -> None:
    with RedisServer(tmp_path, extra_args=["--maxmemory", "5mb"]) as server:
        assert server.config_get("maxmemory") == str(5 * 1024 * 1024)
        server.config_set("maxmemory", "1mb")
        server.config_set("maxmemory-policy", "noeviction")
        client = client_for(server)
        try:
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                await client.set("big", b"x" * 2 * 1024 * 1024)
        finally:
            await client.aclose()
        server.restart()  # same arguments, not the CONFIG SET changes
        assert server.config_get("maxmemory") == str(5 * 1024 * 1024)
    assert not server.running


@pytest.mark.usefixtures("needs_redis_server")
def test_a_port_taken_before_the_server_binds_it_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_port = redis_servers._free_port
        offers = iter([taken])
        monkeypatch.setattr(
            redis_servers, "_free_port", lambda **kw: next(offers, None) or real_free_port(**kw)
        )
        with RedisServer(tmp_path) as server:
            assert server.port != taken
            assert server.ping()
        assert "already in use" in (tmp_path / f"redis-{taken}.log").read_text()

        with pytest.raises(RedisServerError, match="already in use"):
            RedisServer(tmp_path, port=taken).start()


@pytest.mark.usefixtures("needs_redis_server")
def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, extra_args=["--no-such-directive", "1"])
    with pytest.raises(RedisServerError, match="no-such-directive"):
        server.start()
    assert not server.running


# --- redis_cluster ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cluster_spreads_keys_over_its_three_masters(redis_cluster: RedisCluster) -> None:
    client = ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in redis_cluster.startup_nodes]
    )
    try:
        await client.initialize()
        owners: dict[int, str] = {}
        prefix = unique_key()
        for i in range(100):
            key = f"{prefix}:{i}"
            owner = client.get_node_from_key(key)
            assert owner is not None
            if int(owner.port) not in owners:
                owners[int(owner.port)] = key
                await client.set(key, b"here", ex=60)
            if len(owners) == 3:
                break
        assert sorted(owners) == sorted(port for _, port in redis_cluster.startup_nodes)

        # Each key really lives on its own node: the others answer MOVED.
        for port, key in owners.items():
            for _, node_port in redis_cluster.startup_nodes:
                node = redis.asyncio.Redis(host="127.0.0.1", port=node_port)
                try:
                    if node_port == port:
                        assert await node.get(key) == b"here"
                    else:
                        # A MovedError on newer redis-py; redis-py 5.0 raises the
                        # plain ResponseError "MOVED <slot> <node>".
                        with pytest.raises(redis.exceptions.ResponseError) as moved:
                            await node.get(key)
                        assert isinstance(moved.value, redis.exceptions.MovedError) or str(
                            moved.value
                        ).startswith("MOVED ")
                finally:
                    await node.aclose()
            await client.delete(key)
    finally:
        await client.aclose()


# --- redis_sentinel --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sentinel_fails_over_when_the_master_is_killed(
    redis_sentinel: RedisSentinel,
) -> None:
    assert redis_sentinel.replica is not None
    sentinel = Sentinel(
        redis_sentinel.sentinels,
        sentinel_kwargs={"socket_timeout": 0.5},
        socket_timeout=0.5,
    )
    master = sentinel.master_for(
        redis_sentinel.service_name, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        await master.set("before", b"failover")
        assert await master.execute_command("WAIT", 1, 1500) == 1  # the replica has it
        assert redis_sentinel.master_address() == redis_sentinel.master.address

        redis_sentinel.master.kill()
        started = time.monotonic()
        with anyio.fail_after(20):
            while True:
                try:
                    await master.set("after", b"failover")
                    break
                except UNAVAILABLE:
                    await anyio.sleep(0.2)
        failover_seconds = time.monotonic() - started

        assert redis_sentinel.master_address() == redis_sentinel.replica.address
        assert await master.get("before") == b"failover"
        assert failover_seconds < 15
    finally:
        await master.aclose()
        for client in sentinel.sentinels:  # redis-py 5.0's Sentinel has no aclose()
            await client.aclose()
