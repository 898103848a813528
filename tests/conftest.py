from __future__ import annotations

import pytest

from tests.backends import make_server_backend  # noqa: F401 - a fixture
from tests.figures import FIGURES
from tests.redis_servers import (  # noqa: F401 - fixtures: imported so that pytest registers them
    private_redis,
    redis_cluster,
    redis_sentinel,
    redis_url,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """A settable clock injected into the middleware: tests move time by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Folders of screenshots the browser tests took, printed at the end of the run so a
# reviewer can look at them.
SCREENSHOTS: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for folder in SCREENSHOTS:
        terminalreporter.write_line(f"browser test screenshots: {folder}")
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
