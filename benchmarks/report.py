"""The header every benchmark report starts with: machine, versions, command, date."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

__all__ = ["environment_lines", "git_revision", "package_version", "source_digest", "spinners"]

PACKAGES = (
    "asgi-sessions",
    "starlette",
    "starsessions",
    "pyjwt",
    "itsdangerous",
    "redis",
    "hiredis",
    "msgpack",
)
_REPO = Path(__file__).resolve().parent.parent


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def source_digest() -> str:
    """A hash of the asgi_sessions sources on disk: taken before and after a run, it
    tells whether someone changed the code under measurement meanwhile."""
    digest = hashlib.sha256()
    for path in sorted((_REPO / "asgi_sessions").rglob("*.py")):
        digest.update(path.as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_lines(module: str, revision: str) -> list[str]:
    """Markdown bullet lines describing where and how the benchmark ran;
    ``revision`` is :func:`git_revision` taken when the run started."""
    versions = ", ".join(f"{name} {package_version(name)}" for name in PACKAGES)
    command = " ".join(["python", "-m", module, *map(shlex.quote, sys.argv[1:])])
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- machine: {platform.platform()}, {_cpu_model()}, {os.cpu_count()} CPUs",
        f"- python: {platform.python_implementation()} {platform.python_version()}",
        f"- packages: {versions}",
        f"- asgi-sessions revision: {revision}",
        f"- command: `{command}`",
    ]


@contextlib.contextmanager
def spinners(count: int) -> Iterator[None]:
    """``count`` processes that spin at the lowest priority for the duration of the
    block (a benchmark's ``--busy``), so no CPU goes idle: measured against a run
    without them, this shows what waking an idle CPU costs on this machine. They
    are ours and are stopped by PID."""
    code = "import os\nos.nice(19)\nwhile True:\n    pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
