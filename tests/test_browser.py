"""End to end in a real headless Chromium (Debian's chromium and chromium-driver,
driven by selenium): the demo app, two devices, a revocation, and a JWT session
over 4 KB carried by chunked cookies (issue 5).

Skipped, with the reason, where Chromium or chromedriver is missing, except under
``CI=true``, where ``.ci/run`` installs them and a missing browser fails the run.
Screenshots go to a temporary folder whose path the run prints at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1100,900",
)

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but Chromium or chromedriver is missing: .ci/run installs Debian's "
            "chromium and chromium-driver",
            pytrace=False,
        )
    pytest.skip(
        f"no Chromium here ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium "
        "chromium-driver to run the browser tests",
        allow_module_level=True,
    )

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.conftest import SCREENSHOTS  # noqa: E402
from tests.test_demo import demo  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served:
    """An ASGI app under uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _browser(profile: Path) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture
def shots() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="asgi-sessions-screenshots-"))
    SCREENSHOTS.append(str(folder))
    return folder


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[list[Any]]:
    """Two independent browsers (separate profiles: two devices)."""
    made = [_browser(tmp_path / "device-a"), _browser(tmp_path / "device-b")]
    try:
        yield made
    finally:
        for browser in made:
            browser.quit()


def _log_in(browser: Any, base: str, name: str) -> None:
    browser.get(base + "/")
    field = browser.find_element(By.NAME, "name")
    field.send_keys(name)
    field.submit()
    WebDriverWait(browser, 10).until(expected_conditions.url_to_be(base + "/dashboard"))


def test_demo_login_cookie_devices_and_revocation(browsers: list[Any], shots: Path) -> None:
    laptop, phone = browsers
    with Served(demo.create_app(https_only=False)) as served:
        base = served.url
        _log_in(laptop, base, "ada")
        cookie = laptop.get_cookie("demo_session")
        assert cookie is not None
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Lax"
        assert cookie["path"] == "/"
        assert cookie["secure"] is False  # the demo serves plain http unless DEMO_HTTPS=1
        lifetime = cookie["expiry"] - time.time()
        assert 14 * 60 < lifetime <= 15 * 60 + 5  # Max-Age: the idle timeout
        assert "demo_session" not in laptop.execute_script("return document.cookie")
        assert laptop.find_element(By.ID, "countdown").text.startswith(("15:", "14:"))
        laptop.save_screenshot(str(shots / "dashboard.png"))

        _log_in(phone, base, "ada")
        laptop.get(base + "/devices")
        rows = laptop.find_elements(By.CSS_SELECTOR, "#devices tr")
        assert len(rows) == 3  # the header, this laptop, the phone
        laptop.save_screenshot(str(shots / "devices.png"))

        laptop.find_element(By.CSS_SELECTOR, "button.revoke").click()
        WebDriverWait(laptop, 10).until(
            lambda b: len(b.find_elements(By.CSS_SELECTOR, "#devices tr")) == 2
        )
        phone.get(base + "/dashboard")
        WebDriverWait(phone, 10).until(expected_conditions.url_to_be(base + "/"))
        assert phone.find_element(By.NAME, "name") is not None  # the login page
        laptop.get(base + "/dashboard")
        assert laptop.current_url == base + "/dashboard"  # the laptop is still logged in
        laptop.save_screenshot(str(shots / "after-revoke.png"))


def test_a_jwt_session_over_4kb_survives_a_reload_in_chunked_cookies(
    browsers: list[Any], shots: Path
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from asgi_sessions import JWTBackend, SessionMiddleware

    async def grow(request: Request) -> HTMLResponse:
        request.session["notes"] = [f"note {i:04d} " + "x" * 40 for i in range(100)]
        return HTMLResponse("<p id='size'>grown</p>")

    async def read(request: Request) -> HTMLResponse:
        notes = request.session.get("notes", [])
        return HTMLResponse(f"<p id='size'>{len(notes)}</p><p id='last'>{notes[-1][:9]}</p>")

    app = SessionMiddleware(
        Starlette(routes=[Route("/grow", grow), Route("/read", read)]),
        backend=JWTBackend("browser-test-secret-of-at-least-32-bytes"),
        https_only=False,
    )
    browser = browsers[0]
    with Served(app) as served:
        browser.get(served.url + "/grow")
        chunks = sorted(c["name"] for c in browser.get_cookies())
        assert chunks[:2] == ["session.0", "session.1"]  # over 4096 bytes: chunked
        total = sum(len(c["value"]) for c in browser.get_cookies())
        assert total > 4096
        for _ in range(2):  # and a reload brings it all back
            browser.get(served.url + "/read")
            assert browser.find_element(By.ID, "size").text == "100"
            assert browser.find_element(By.ID, "last").text == "note 0099"
            browser.refresh()
        browser.save_screenshot(str(shots / "jwt-chunked.png"))
