"""Real Redis servers for the tests: a private server, a three-master cluster, a sentinel setup.

DESIGN.md section 7: tests talk to a real Redis, never a mock. Everything here starts
``redis-server`` processes on free loopback ports, owns them by PID, and ends only those PIDs.

    RedisServer    one private server: stop, kill, pause, resume, restart, config_set
    RedisCluster   three cluster masters joined with ``redis-cli --cluster create``
    RedisSentinel  a master, one replica and one sentinel watching "mymaster"

The fixtures at the bottom (``redis_url``, ``private_redis``, ``redis_cluster``,
``redis_sentinel``) are imported by ``tests/conftest.py``. A machine without ``redis-server``
skips the tests that need one, except under CI (``CI=true``), where that is a failure.
``ASGI_SESSIONS_TEST_REDIS`` (a URL) replaces the private server behind ``redis_url`` only:
fault tests always get a private server they may stop and pause.

Status checks use a tiny RESP client on a plain socket, so this module needs only the
standard library and pytest; redis-py is imported only to check an external URL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "EXTERNAL_REDIS_ENV",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "RedisServerError",
    "private_redis",
    "provide_redis_url",
    "redis_cli_binary",
    "redis_cluster",
    "redis_command",
    "redis_sentinel",
    "redis_server_binary",
    "redis_url",
    "require_redis_binaries",
]

EXTERNAL_REDIS_ENV = "ASGI_SESSIONS_TEST_REDIS"
HOST = "127.0.0.1"
CLUSTER_BUS_OFFSET = 10000
PORT_ATTEMPTS = 5


class RedisServerError(RuntimeError):
    """A server did not start, or did not reach the state we waited for, in time."""


class _PortTaken(RedisServerError):
    """Someone bound the port between our choosing it and the server binding it."""


class RespError(Exception):
    """The server answered a command with an error reply (``-ERR ...``)."""


# --- binaries and the skip-or-fail rule -------------------------------------------------------


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


def redis_cli_binary() -> str | None:
    """Path of ``redis-cli`` on PATH, or None."""
    return shutil.which("redis-cli")


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_redis_binaries(*, cli: bool = False) -> str:
    """Return the ``redis-server`` path; skip the test when missing, or fail under ``CI=true``.

    ``cli=True`` also requires ``redis-cli`` (the cluster is created with it).
    """
    server = redis_server_binary()
    missing = [] if server else ["redis-server"]
    if cli and redis_cli_binary() is None:
        missing.append("redis-cli")
    if not missing:
        assert server is not None
        return server
    what = " and ".join(missing)
    if _under_ci():
        pytest.fail(
            f"{what} not found on PATH, and CI=true: a CI run must test against a real Redis",
            pytrace=False,
        )
    pytest.skip(f"{what} not found on PATH: this test starts its own Redis (DESIGN.md section 7)")


# --- a minimal RESP client for status checks --------------------------------------------------


def redis_command(host: str, port: int, *args: object, timeout: float = 2.0) -> Any:
    """Send one command on a fresh connection and return the decoded reply.

    Simple strings and bulk strings come back as ``str``, integers as ``int``, arrays as
    ``list``, nil as None. An error reply raises RespError; a dead or silent server raises
    OSError (``TimeoutError``, ``ConnectionRefusedError``, ...).
    """
    parts = [str(arg).encode() for arg in args]
    request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as stream:
            return _read_reply(stream)


def _read_reply(stream: Any) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply line {line!r}")


def _parse_info(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key] = value
    return fields


def _pairs(flat: list[Any]) -> dict[str, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until true; RedisServerError after ``timeout`` seconds.

    OSError and RespError from the condition count as "not yet".
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if condition():
                return
        except (OSError, RespError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise RedisServerError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


# --- ports -----------------------------------------------------------------------------------

# Ports this process handed to a server and has not released: two servers started back to
# back must not be given the same not-yet-bound port.
_ports_in_use: set[int] = set()


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port(*, with_cluster_bus: bool = False) -> int:
    for _ in range(200):
        if with_cluster_bus:
            # The bus port is port + 10000, so the port must leave room under 65536.
            port = random.randrange(20000, 65536 - CLUSTER_BUS_OFFSET)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, 0))
                port = sock.getsockname()[1]
        if port in _ports_in_use or not _can_bind(port):
            continue
        if with_cluster_bus and (
            port + CLUSTER_BUS_OFFSET in _ports_in_use or not _can_bind(port + CLUSTER_BUS_OFFSET)
        ):
            continue
        _ports_in_use.add(port)
        return port
    raise RedisServerError("found no free loopback port")


# --- processes -------------------------------------------------------------------------------

# Servers still running, ended at interpreter exit if a teardown never ran (an exception at
# the wrong moment); a SIGKILLed pytest is covered by _die_with_this_process instead. Holding them here also keeps a forgotten Popen from being collected
# while its process runs, which would raise a ResourceWarning.
_running: set[RedisServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        server.kill()


def _die_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux SIGKILL the server if pytest dies without teardown (kill -9).

    Only from the main thread: the kernel sends the signal when the *thread* that started the
    child exits, and a worker thread may exit long before the test session does.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_parent_death_signal


def _process_state(pid: int) -> str | None:
    """The one-letter state from /proc (``T`` when stopped), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


class RedisServer:
    """A private ``redis-server`` on a free loopback port, with no persistence.

    ``start()`` (or ``with``) launches it and returns once it answers PING as this very process;
    if the chosen port was taken in the meantime it retries on another port. The server's
    output goes to ``<directory>/redis-<port>.log``, whose tail is in every start-up error.
    ``restart()`` starts a new process on the same port with the same arguments: data and
    settings made with ``config_set`` are gone, as after a real crash of a cache.
    """

    role = "redis"

    def __init__(
        self,
        directory: Path,
        *,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.directory = Path(directory)
        self.extra_args = list(extra_args)
        self.host = HOST
        self._fixed_port = port
        self._binary = binary
        self.startup_timeout = startup_timeout
        self._port: int | None = port
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    # -- handles --

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the server has not been started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        """PID of the current (or last) process."""
        if self._process is None:
            raise RedisServerError("the server has not been started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.role}-{self.port}.log"

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        pid = self._process.pid if self._process else None
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port} pid={pid} {state}>"

    # -- life cycle --

    def start(self) -> RedisServer:
        if self.running:
            return self
        started = time.monotonic()
        attempts = 1 if self._fixed_port is not None else PORT_ATTEMPTS
        for attempt in range(attempts):
            port = self._fixed_port if self._fixed_port is not None else self._pick_port()
            try:
                self._launch(port)
            except _PortTaken:
                _ports_in_use.discard(port)
                if attempt == attempts - 1:
                    raise
                continue
            break
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if the process is still there after ``timeout`` seconds."""
        process = self._process
        if process is None or process.poll() is not None:
            self._forget()
            return
        process.terminate()
        # A paused server would hold the SIGTERM until resumed.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._forget()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        # The port stays reserved in this process: a test that kills usually restarts next.
        _running.discard(self)

    def pause(self, timeout: float = 5.0) -> None:
        """SIGSTOP: connections stay open and accepted, but nothing is answered."""
        self._signal(signal.SIGSTOP)
        if _process_state(self.pid) is not None:
            _wait_for(
                lambda: _process_state(self.pid) in ("T", "t"),
                timeout=timeout,
                what=f"{self!r} to stop",
                interval=0.005,
            )

    def resume(self, timeout: float = 5.0) -> None:
        """SIGCONT, then wait until the server answers again."""
        self._signal(signal.SIGCONT)
        _wait_for(self.ping, timeout=timeout, what=f"{self!r} to answer after SIGCONT")

    def restart(self, timeout: float = 5.0) -> None:
        """Stop (if running) and start a new process on the same port with the same arguments."""
        port = self.port
        self.stop(timeout)
        started = time.monotonic()
        _ports_in_use.add(port)
        self._launch(port)
        self.startup_seconds = time.monotonic() - started

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- talking to it --

    def command(self, *args: object, timeout: float = 2.0) -> Any:
        return redis_command(self.host, self.port, *args, timeout=timeout)

    def ping(self) -> bool:
        return bool(self.command("PING", timeout=0.5) == "PONG")

    def info(self, section: str = "server", *, timeout: float = 2.0) -> dict[str, str]:
        return _parse_info(self.command("INFO", section, timeout=timeout))

    def config_set(self, name: str, value: object) -> None:
        """CONFIG SET on the running process (lost on ``restart()``)."""
        self.command("CONFIG", "SET", name, value)

    def config_get(self, name: str) -> str | None:
        reply = _pairs(self.command("CONFIG", "GET", name))
        return reply.get(name)

    # -- internals, overridden by the cluster node and the sentinel --

    def _pick_port(self) -> int:
        return _free_port()

    def _argv(self, binary: str, port: int) -> list[str]:
        return [
            binary,
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dbfilename", f"dump-{port}.rdb",
            "--dir", str(self.directory),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def _launch(self, port: int) -> None:
        binary = self._binary or redis_server_binary()
        if binary is None:
            raise RedisServerError("redis-server not found on PATH")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._port = port
        argv = self._argv(binary, port)
        with self.log_path.open("ab") as log:
            log.write(f"--- {' '.join(argv)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                preexec_fn=_die_with_this_process(),
            )
        _running.add(self)
        try:
            self._wait_until_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                tail = self.log_tail()
                error = _PortTaken if "already in use" in tail else RedisServerError
                raise error(
                    f"{self.role} on port {self.port} exited with status {code} during start-up; "
                    f"log {self.log_path}:\n{tail}"
                )
            # Ask for the PID, not just PING: another server that took our port would answer too.
            # A short timeout, because whatever squats on the port may never answer at all.
            with contextlib.suppress(OSError, RespError):
                if self.info("server", timeout=0.25).get("process_id") == str(self._process.pid):
                    return
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"{self.role} on port {self.port} (pid {self._process.pid}) did not answer "
                    f"within {self.startup_timeout:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _signal(self, signum: int) -> None:
        if not self.running:
            raise RedisServerError(f"{self!r} is not running")
        assert self._process is not None
        self._process.send_signal(signum)

    def _forget(self) -> None:
        _running.discard(self)
        if self._port is not None:
            _ports_in_use.discard(self._port)  # restart() reserves it again


# --- cluster ---------------------------------------------------------------------------------


class _ClusterNode(RedisServer):
    role = "cluster-node"

    def _pick_port(self) -> int:
        return _free_port(with_cluster_bus=True)

    def _argv(self, binary: str, port: int) -> list[str]:
        return [
            *super()._argv(binary, port),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip


class RedisCluster:
    """A local Redis Cluster of three masters (no replicas) on free loopback ports.

    ``start()`` returns once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node and every
    node knows the other two. ``nodes`` are RedisServer handles, for fault tests.
    """

    def __init__(self, directory: Path, *, masters: int = 3, startup_timeout: float = 30.0) -> None:
        self.directory = Path(directory)
        self.startup_timeout = startup_timeout
        self.nodes = [_ClusterNode(self.directory) for _ in range(masters)]
        self.startup_seconds: float | None = None

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [node.address for node in self.nodes]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def log_path(self) -> Path:
        return self.directory / "cluster-create.log"

    def start(self) -> RedisCluster:
        started = time.monotonic()
        try:
            for node in self.nodes:
                node.start()
            self._create()
            _wait_for(
                self._healthy,
                timeout=self.startup_timeout,
                what=f"cluster_state:ok on {self.startup_nodes}",
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _create(self) -> None:
        cli = redis_cli_binary()
        if cli is None:
            raise RedisServerError("redis-cli not found on PATH")
        argv = [
            cli, "--cluster", "create",
            *(f"{host}:{port}" for host, port in self.startup_nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=self.startup_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise RedisServerError(
                    f"redis-cli --cluster create took over {self.startup_timeout:.0f} s; "
                    f"log {self.log_path}"
                ) from None
        if result.returncode != 0:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])
            raise RedisServerError(
                f"redis-cli --cluster create exited with status {result.returncode}:\n{tail}"
            )

    def _healthy(self) -> bool:
        for node in self.nodes:
            info = _parse_info(node.command("CLUSTER", "INFO"))
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_known_nodes") != str(len(self.nodes))
                or info.get("cluster_slots_ok") != "16384"
            ):
                return False
        return True


# --- sentinel --------------------------------------------------------------------------------


class _SentinelProcess(RedisServer):
    role = "sentinel"

    def __init__(self, directory: Path, *, service_name: str, master_port: int) -> None:
        super().__init__(directory)
        self.service_name = service_name
        self.master_port = master_port

    def _argv(self, binary: str, port: int) -> list[str]:
        config = self.directory / f"sentinel-{port}.conf"
        # Sentinel rewrites its file as it learns; a restart keeps what it learnt.
        if not config.exists():
            name = self.service_name
            config.write_text(
                f"port {port}\n"
                f"bind {self.host}\n"
                "daemonize no\n"
                f'dir "{self.directory}"\n'
                "sentinel resolve-hostnames no\n"
                f"sentinel monitor {name} {self.host} {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {name} 1000\n"
                f"sentinel failover-timeout {name} 5000\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
        return [binary, str(config), "--sentinel"]


class RedisSentinel:
    """A master, one replica of it, and one sentinel monitoring them as ``mymaster``.

    ``start()`` returns once the replica is in sync and the sentinel sees both, healthy: killing
    ``master`` then makes the sentinel promote ``replica`` (about 2 to 5 s with these settings).
    """

    service_name = "mymaster"

    def __init__(self, directory: Path, *, startup_timeout: float = 20.0) -> None:
        self.directory = Path(directory)
        self.startup_timeout = startup_timeout
        # Diskless full sync waits 5 s by default for more replicas to join; we have one.
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(self.directory, extra_args=fast_sync)
        self.replica: RedisServer | None = None
        self.sentinel: RedisServer | None = None
        self._fast_sync = fast_sync
        self.startup_seconds: float | None = None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        assert self.sentinel is not None
        return [self.sentinel.address]

    def start(self) -> RedisSentinel:
        started = time.monotonic()
        try:
            self.master.start()
            self.replica = RedisServer(
                self.directory,
                extra_args=[*self._fast_sync, "--replicaof", HOST, str(self.master.port)],
            ).start()
            _wait_for(
                self._replica_in_sync,
                timeout=self.startup_timeout,
                what=f"{self.replica!r} to sync with {self.master!r}",
            )
            self.sentinel = _SentinelProcess(
                self.directory, service_name=self.service_name, master_port=self.master.port
            ).start()
            _wait_for(
                self._sentinel_ready,
                timeout=self.startup_timeout,
                what=f"the sentinel to see {self.master!r} and {self.replica!r}",
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        # Sentinel first, so it does not start a failover while the others go down.
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.stop()

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def master_address(self) -> tuple[str, int]:
        """The master's address as the sentinel reports it now."""
        assert self.sentinel is not None
        host, port = self.sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        return (host, int(port))

    def _replica_in_sync(self) -> bool:
        assert self.replica is not None
        replica = self.replica.info("replication")
        master = self.master.info("replication")
        return (
            replica.get("master_link_status") == "up"
            and replica.get("master_sync_in_progress") == "0"
            and "state=online" in master.get("slave0", "")
        )

    def _sentinel_ready(self) -> bool:
        assert self.sentinel is not None
        assert self.replica is not None
        master = _pairs(self.sentinel.command("SENTINEL", "MASTER", self.service_name))
        if master.get("flags") != "master" or master.get("port") != str(self.master.port):
            return False
        replicas = [
            _pairs(entry)
            for entry in self.sentinel.command("SENTINEL", "REPLICAS", self.service_name)
        ]
        return any(
            entry.get("port") == str(self.replica.port)
            and entry.get("flags") == "slave"
            and entry.get("master-link-status") == "ok"
            for entry in replicas
        )


# --- pytest fixtures -------------------------------------------------------------------------


@contextlib.contextmanager
def provide_redis_url(make_directory: Callable[[], Path]) -> Iterator[str]:
    """The URL of "a Redis to talk to": ``ASGI_SESSIONS_TEST_REDIS`` if set, else a private one.

    An external URL that does not answer PING fails the test: it was asked for explicitly.
    ``make_directory`` is called only when a private server is started.
    """
    external = os.environ.get(EXTERNAL_REDIS_ENV, "").strip()
    if external:
        _check_external(external)
        yield external
        return
    require_redis_binaries()
    with RedisServer(make_directory()) as server:
        yield server.url


def _check_external(url: str) -> None:
    import redis  # the redis extra; only needed when an external server is configured

    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"{EXTERNAL_REDIS_ENV}={url} does not answer PING: {exc!r}", pytrace=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL for the whole test session: ``ASGI_SESSIONS_TEST_REDIS`` or a private server.

    Shared by every test: use unique keys, never FLUSHDB, never stop it.
    """
    with provide_redis_url(lambda: tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh private server for this test alone, free to stop, pause, kill and restart."""
    require_redis_binaries()
    with RedisServer(tmp_path_factory.mktemp("private-redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-master Redis Cluster shared by the session: use unique keys, keep the nodes up."""
    require_redis_binaries(cli=True)
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A fresh master, replica and sentinel for this test: it may kill the master to fail over."""
    require_redis_binaries()
    with RedisSentinel(tmp_path_factory.mktemp("redis-sentinel")) as sentinel:
        yield sentinel
