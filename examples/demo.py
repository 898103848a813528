"""A small Starlette app showing asgi-sessions: log in, watch the session, log out.

Run it from a checkout::

    pip install -e ".[demo]"
    python examples/demo.py          # http://127.0.0.1:8000 (PORT=8001 to change)

Sessions live in the embedded MemoryBackend (one process, lost on restart), or in
Redis when ``REDIS_URL`` is set (``REDIS_URL=redis://127.0.0.1:6379/0``). The
cookie is ``Secure`` only with ``DEMO_HTTPS=1`` (behind a TLS proxy), so that the
demo works over plain http://127.0.0.1 in a browser. Timeouts are short so the
expiry is visible: 15 minutes idle, 1 hour absolute.

Pages: the login form (``/``), the dashboard (``/dashboard``: the session and a
countdown to its idle deadline), the devices page (``/devices``: this user's
sessions, a revoke button for each other one and "log out all other devices"),
and the session API under ``/auth`` (``asgi_sessions.endpoints``), which the
devices page's buttons call.

Only Starlette and uvicorn are needed: the HTML is built by hand (every value
from the user or the session is escaped with ``html.escape``) and the login form
is parsed with ``urllib.parse.parse_qs``, so python-multipart is not required.
"""

from __future__ import annotations

import hmac
import html
import math
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from asgi_sessions import MemoryBackend, Session, SessionMiddleware
from asgi_sessions.endpoints import SessionEndpoints

IDLE_TIMEOUT = 15 * 60  # seconds without a request before the session ends
ABSOLUTE_TIMEOUT = 60 * 60  # hard cap from login, whatever the activity
MAX_NAME_LENGTH = 64

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 42rem; margin: 3rem auto; padding: 0 1rem;
       color: #222; }
dt { font-weight: 600; margin-top: .6rem; }
dd { margin-left: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.error { color: #b00020; }
#countdown { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
button, input { font-size: 1rem; padding: .3rem .6rem; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; font-size: .9rem; }
"""


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    # ``title`` and ``body`` are trusted markup: every dynamic value in them has
    # already gone through html.escape.
    return HTMLResponse(
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>",
        status_code=status_code,
    )


def _session(request: Request) -> Session:
    session = request.session
    assert isinstance(session, Session), "asgi_sessions.SessionMiddleware is not installed"
    return session


def _iso(value: datetime | float | None) -> str:
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return html.escape(value.isoformat(timespec="seconds"))


def _login_form(error: str = "", name: str = "") -> str:
    message = f'<p class="error">{html.escape(error)}</p>' if error else ""
    return (
        "<h1>asgi-sessions demo</h1>"
        "<p>Enter a name to start a session. Nothing is stored except in this "
        "process's memory.</p>"
        f"{message}"
        '<form method="post" action="/login">'
        f'<label>Name <input name="name" required maxlength="{MAX_NAME_LENGTH}" '
        f'value="{html.escape(name)}" autofocus></label> '
        "<button>Log in</button></form>"
    )


def _backend(clock: Callable[[], float]) -> Any:
    url = os.environ.get("REDIS_URL")
    if url:
        from asgi_sessions import RedisBackend

        return RedisBackend(url, prefix="asgi_sessions_demo:", clock=clock)
    return MemoryBackend(clock=clock)


def create_app(
    *,
    https_only: bool | None = None,
    clock: Callable[[], float] = time.time,
    backend: Any = None,
) -> SessionMiddleware:
    """Build the demo app. ``https_only`` defaults to the ``DEMO_HTTPS`` env var;
    ``clock`` is injectable so tests can move time; ``backend`` defaults to Redis
    when ``REDIS_URL`` is set, else the embedded MemoryBackend."""
    if https_only is None:
        https_only = os.environ.get("DEMO_HTTPS") == "1"
    if backend is None:
        backend = _backend(clock)

    async def index(request: Request) -> Response:
        if _session(request).get("user") is not None:
            return RedirectResponse("/dashboard", status_code=303)
        return _page("Log in", _login_form())

    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = form.get("name", [""])[0].strip()
        if not name or len(name) > MAX_NAME_LENGTH:
            error = f"Enter a name of 1 to {MAX_NAME_LENGTH} characters."
            return _page("Log in", _login_form(error, name[:MAX_NAME_LENGTH]), 400)
        session = _session(request)
        # A new session ID on every login, so an ID planted before it (session
        # fixation) is worthless afterwards.
        session.rotate()
        session.clear()
        session.bind_user(name)  # the per-user index: the devices page lists it
        session["user"] = name
        session["login_at"] = clock()
        session["views"] = 0
        session["csrf"] = secrets.token_urlsafe(32)
        return RedirectResponse("/dashboard", status_code=303)

    async def dashboard(request: Request) -> Response:
        session = _session(request)
        user = session.get("user")
        if user is None:
            return RedirectResponse("/", status_code=303)
        views = int(session.get("views", 0)) + 1
        session["views"] = views  # a change: this response saves the session

        # expires_at is the deadline this response leaves the session with: the
        # write above restarts the idle clock, capped by the absolute deadline.
        now = clock()
        absolute = session.absolute_expires_at
        expires_at = session.expires_at
        deadline = now + IDLE_TIMEOUT if expires_at is None else expires_at.timestamp()
        remaining = max(0, math.ceil(deadline - now))
        plural = "" if views == 1 else "s"
        csrf = html.escape(str(session.get("csrf", "")))
        public_id = html.escape(session.id or "-")
        login_at = session.get("login_at")

        body = f"""
<h1>Hello, {html.escape(str(user))}</h1>
<p>You have viewed this page <strong id="views">{views}</strong> time{plural}
in this session. Reload to count again: every view writes the session and
slides its idle deadline.</p>
<p>Idle deadline in <span id="countdown">{remaining // 60}:{remaining % 60:02d}</span>
<span id="expired" hidden> &mdash; the session has expired;
<a href="/dashboard">reload</a> and you are back at the login form.</span></p>
<dl>
  <dt>Public session id (<code>session.id</code>, not the cookie)</dt>
  <dd>{public_id}</dd>
  <dt>Logged in at</dt><dd>{_iso(login_at)}</dd>
  <dt><code>created_at</code></dt><dd>{_iso(session.created_at)}</dd>
  <dt><code>last_seen</code></dt><dd>{_iso(session.last_seen)}</dd>
  <dt><code>expires_at</code> (idle deadline after this view)</dt><dd>{_iso(deadline)}</dd>
  <dt><code>absolute_expires_at</code> (activity never moves it)</dt>
  <dd>{_iso(absolute)}</dd>
</dl>
<p><a href="/devices" id="devices-link">Your devices</a></p>
<form method="post" action="/logout">
  <input type="hidden" name="csrf" value="{csrf}">
  <button>Log out</button>
</form>
<script>
  // Count down from the server's figure, measured on the page's own monotonic
  // clock, so a wrong clock on this computer does not matter.
  const end = performance.now() + {remaining} * 1000;
  const out = document.getElementById("countdown");
  const tick = () => {{
    const left = Math.max(0, Math.round((end - performance.now()) / 1000));
    out.textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
    if (left === 0) {{
      document.getElementById("expired").hidden = false;
      clearInterval(timer);
    }}
  }};
  const timer = setInterval(tick, 1000);
  tick();
</script>
"""
        return _page("Dashboard", body)

    async def devices(request: Request) -> Response:
        session = _session(request)
        user = session.user_id
        if user is None:
            return RedirectResponse("/", status_code=303)
        rows = []
        for info in await backend.list_sessions(user, current=session.id):
            if info.current:
                action = "<strong>this device</strong>"
            else:
                action = (
                    f'<button class="revoke" data-id="{html.escape(info.session_id)}">'
                    "Revoke</button>"
                )
            rows.append(
                "<tr>"
                f"<td>{html.escape(info.user_agent or '-')}</td>"
                f"<td>{html.escape(info.ip or '-')}</td>"
                f"<td>{_iso(info.created_at)}</td>"
                f"<td>{_iso(info.last_seen)}</td>"
                f"<td>{action}</td>"
                "</tr>"
            )
        body = f"""
<h1>Your devices</h1>
<p>Every session of <strong>{html.escape(user)}</strong> that is still alive.</p>
<table id="devices">
  <tr><th>Browser</th><th>IP</th><th>Logged in</th><th>Last seen</th><th></th></tr>
  {"".join(rows)}
</table>
<p><button id="revoke-others">Log out all other devices</button></p>
<p><a href="/dashboard">Back to the dashboard</a></p>
<script>
  // The session API refuses cross-site POSTs; a fetch from this page is same-origin.
  const post = (url) => fetch(url, {{method: "POST"}}).then(() => location.reload());
  for (const button of document.querySelectorAll("button.revoke")) {{
    button.addEventListener("click", () =>
      post("/auth/devices/" + encodeURIComponent(button.dataset.id) + "/revoke"));
  }}
  document.getElementById("revoke-others").addEventListener("click", () =>
    post("/auth/devices/revoke-others"));
</script>
"""
        return _page("Devices", body)

    async def logout(request: Request) -> Response:
        session = _session(request)
        expected = session.get("csrf")
        if expected is not None:
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            sent = form.get("csrf", [""])[0]
            # The session cookie is SameSite=Lax, so a cross-site POST arrives
            # without it; the token also stops a same-site page from logging you out.
            if not hmac.compare_digest(sent.encode(), str(expected).encode()):
                return _page("Log out", "<p>Invalid form; go back and try again.</p>", 403)
            session.invalidate()  # deletes the record and expires the cookie
        return RedirectResponse("/", status_code=303)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/login", login, methods=["POST"]),
            Route("/dashboard", dashboard),
            Route("/devices", devices),
            Route("/logout", logout, methods=["POST"]),
            Mount("/auth", app=SessionEndpoints(backend)),
        ]
    )
    return SessionMiddleware(
        app,
        backend=backend,
        cookie_name="demo_session",
        idle_timeout=IDLE_TIMEOUT,
        absolute_timeout=ABSOLUTE_TIMEOUT,
        https_only=https_only,
        clock=clock,
    )


app = create_app()


if __name__ == "__main__":
    import uvicorn

    port = int(os.environ.get("PORT", "8000"))
    print(f"asgi-sessions demo on http://127.0.0.1:{port}/  (Ctrl+C to stop)", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port)
