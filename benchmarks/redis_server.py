"""A private ``redis-server`` for the benchmark, and Redis command counts per request.

:class:`PrivateRedis` starts ``redis-server`` on a free loopback port with no
persistence (``--save "" --appendonly no``) in a temporary directory, and stops that
process, by its PID, when the ``with`` block ends, however it ends (an error, Ctrl-C,
SIGTERM turned into an exception by the harness). If this process is SIGKILLed, Linux
kills the server too (``PR_SET_PDEATHSIG``). The benchmark never uses a shared Redis
unless it is given ``--redis-url``, and never flushes one.

:func:`count_commands` runs an untimed batch of requests and reports two numbers per
request, as the server saw them:

* *round trips*: commands the clients sent, from ``MONITOR`` (commands that a Lua
  script runs are reported there as coming from ``lua``: they are not round trips;
  connection set-up such as ``HELLO`` or ``CLIENT SETINFO`` is not per request);
* *executed*: the sum of ``calls`` in ``INFO commandstats``, which also counts every
  command run inside a script (an ``EVALSHA`` whose script calls ``HGETALL`` counts 2).

Only the standard library and redis-py (which the Redis rows use anyway).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "CommandCount",
    "PrivateRedis",
    "RedisStartError",
    "count_commands",
    "redis_server_binary",
    "schedstat_wait_ns",
]

HOST = "127.0.0.1"
# Connection set-up a new pooled connection may send: not a per-request round trip.
SETUP_COMMANDS = frozenset({"HELLO", "CLIENT", "AUTH", "SELECT"})
# What the counting itself sends; nothing under test uses these.
OWN_COMMANDS = frozenset({"info", "monitor", "echo"})


class RedisStartError(RuntimeError):
    """The private server did not come up; the message has its log's tail."""


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the server when this process dies
    without cleaning up (kill -9); None elsewhere, or off the main thread (the signal
    follows the *thread* that started the child)."""
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


def _ask(port: int, command: bytes, timeout: float) -> bytes:
    """One inline command on a plain socket; the raw reply (enough for INFO/PING)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(command + b"\r\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            data = b"".join(chunks)
            if data.startswith(b"$"):  # a bulk string: length line, then the payload
                header, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(header[1:]) + 2:
                    return data
            elif data.endswith(b"\r\n"):
                return data
        return b"".join(chunks)


class PrivateRedis:
    """``with PrivateRedis() as server:`` a throw-away ``redis-server`` on loopback."""

    def __init__(self, binary: str | None = None, startup_timeout: float = 10.0) -> None:
        self.binary = binary or redis_server_binary()
        self.startup_timeout = startup_timeout
        self.port = 0
        self.version = "?"
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def __enter__(self) -> PrivateRedis:
        if self.binary is None:
            raise RedisStartError("redis-server is not on PATH")
        self.directory = Path(tempfile.mkdtemp(prefix="asgi-sessions-bench-redis-"))
        try:
            for _ in range(5):  # the free port may be taken before the server binds it
                if self._launch():
                    return self
            raise RedisStartError(f"no free loopback port after 5 tries:\n{self._log_tail()}")
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self) -> bool:
        assert self.binary is not None
        assert self.directory is not None
        self.port = _free_port()
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
        ]  # fmt: skip
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                # Its own session: a Ctrl-C in the terminal reaches only the harness,
                # which then stops the server after the current request, not during it.
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self.process = None
                if "already in use" in self._log_tail():
                    return False
                raise RedisStartError(
                    f"redis-server exited with status {code} during start-up:\n{self._log_tail()}"
                )
            # Ask for the PID, not just PING: whatever else took the port would answer too.
            with contextlib.suppress(OSError, ValueError):
                info = _ask(self.port, b"INFO server", 0.25).decode("utf-8", "replace")
                fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
                if fields.get("process_id") == str(self.process.pid):
                    self.version = fields.get("redis_version", "?")
                    return True
            if time.monotonic() >= deadline:
                raise RedisStartError(
                    f"redis-server (pid {self.process.pid}) did not answer within "
                    f"{self.startup_timeout:.0f} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _log_tail(self, lines: int = 15) -> str:
        if self.directory is None:
            return ""
        try:
            text = (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to our server's PID (SIGKILL after ``timeout``), then remove the
        temporary directory. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def schedstat_wait_ns(pid: int | str = "thread-self") -> int | None:
    """Nanoseconds the task has spent runnable but waiting for a CPU (the second field
    of ``/proc/<pid>/schedstat``), or None where that file does not exist."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as stat:
            return int(stat.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


# -- command counts ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandCount:
    requests: int
    round_trips: int  # commands sent by clients (MONITOR, script-internal ones excluded)
    executed: int  # INFO commandstats calls (script-internal ones included)

    @staticmethod
    def _per_request(total: int, requests: int) -> str:
        if total % requests == 0:
            return str(total // requests)
        return f"{total / requests:.2f}"

    @property
    def round_trips_text(self) -> str:
        return self._per_request(self.round_trips, self.requests)

    @property
    def executed_text(self) -> str:
        return self._per_request(self.executed, self.requests)

    @property
    def per_request(self) -> float:
        return self.round_trips / self.requests


def _commandstats(info: dict[str, object]) -> int:
    total = 0
    for name, stats in info.items():
        command = name.removeprefix("cmdstat_")
        base = command.split("|", 1)[0]
        if base in OWN_COMMANDS or base.upper() in SETUP_COMMANDS or not isinstance(stats, dict):
            continue
        total += int(stats.get("calls", 0))
    return total


async def count_commands(
    counter: object, batch: Callable[[], Awaitable[None]], requests: int
) -> CommandCount:
    """Run ``batch`` (``requests`` requests, nothing else talking to the server) and
    count what the server saw. ``counter`` is a ``redis.asyncio.Redis`` of its own,
    on the same server as the row's client."""
    from redis.asyncio import Redis

    assert isinstance(counter, Redis)
    before = _commandstats(await counter.info("commandstats"))
    marker = f"asgi-sessions-bench-{uuid.uuid4().hex}"
    round_trips = 0
    async with counter.monitor() as monitor:
        await batch()
        await counter.echo(marker)  # the end of the batch in the monitor stream
        for _ in range(1_000_000):
            command = await monitor.next_command()
            if marker in command["command"]:
                break
            name = command["command"].split(" ", 1)[0].upper()
            if command.get("client_type") != "lua" and name not in SETUP_COMMANDS:
                round_trips += 1
        else:
            raise RuntimeError("the MONITOR stream never showed the end-of-batch marker")
    after = _commandstats(await counter.info("commandstats"))
    return CommandCount(requests, round_trips, after - before)
