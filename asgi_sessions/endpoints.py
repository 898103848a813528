"""SessionEndpoints: a small mountable ASGI app for the session's own HTTP API.

Mount it under a prefix inside :class:`~asgi_sessions.SessionMiddleware` (Starlette:
``Mount("/auth", app=SessionEndpoints(backend))``). Routes, relative to the mount:

=======  =========================  =================================================
GET      ``/session``               the current session for client code: whether a
                                    user is logged in, the user, and the deadlines
                                    (so a page can warn before the idle timeout).
                                    Never a token, never the session's data.
POST     ``/session/refresh``       extend the idle deadline now; answers as above
POST     ``/logout``                end the session (expires the cookie)
GET      ``/devices``               the user's sessions (created, last seen, IP, user
                                    agent, which one is this one)
POST     ``/devices/{id}/revoke``   end one of the user's other sessions
POST     ``/devices/revoke-others`` end all of the user's sessions but this one
=======  =========================  =================================================

The device routes need a server-side backend (per-user operations) and a logged-in
user (``401`` otherwise). Answers are JSON with ``Cache-Control: no-store``.

CSRF: every unsafe method (``POST``) is refused with ``403`` when the browser says
it comes from another site. With ``Sec-Fetch-Site`` (every current browser sends it)
only ``same-origin`` and ``none`` (typed or bookmarked by the user) pass; without it,
an ``Origin`` header must equal this request's own origin (or one of
``trusted_origins``). A request with neither header is not from a browser, which
is the only thing that attaches cookies on its own, so it passes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from datetime import datetime
from typing import Any

from asgi_sessions._asgi import respond
from asgi_sessions.backends.base import UserSessions
from asgi_sessions.errors import ConfigurationError
from asgi_sessions.session import Session

__all__ = ["SessionEndpoints"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_REVOKE = re.compile(r"/devices/([0-9a-f]{64}|[A-Za-z0-9_-]{16,128})/revoke")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _float_iso(value: float | None) -> str | None:
    if value is None:
        return None
    from datetime import UTC

    return datetime.fromtimestamp(value, UTC).isoformat()


class SessionEndpoints:
    """The session API described in the module docstring.

    ``backend`` is the middleware's backend (for the device routes: it must offer
    :class:`~asgi_sessions.UserSessions`). ``trusted_origins`` are other origins
    (``"https://admin.example"``) allowed to POST here.
    """

    def __init__(self, backend: Any = None, *, trusted_origins: Iterable[str] = ()) -> None:
        if isinstance(trusted_origins, str):
            raise ConfigurationError("trusted_origins must be a list of origins, not one string")
        origins = []
        for origin in trusted_origins:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ConfigurationError(
                    f"trusted origin {origin!r} must be scheme://host[:port], without a path"
                )
            origins.append(origin.lower())
        self.backend = backend
        self.trusted_origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        session = scope.get("session")
        if not isinstance(session, Session):
            raise RuntimeError(
                "SessionEndpoints needs asgi_sessions.SessionMiddleware outside it: mount it "
                "in an app that the middleware wraps"
            )
        method = scope["method"]
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if method not in _SAFE_METHODS and not self._same_site(scope):
            await _json(send, 403, {"detail": "cross-site request refused"})
            return
        status, body = await self._route(method, path, session)
        await _json(send, status, body)

    async def _route(self, method: str, path: str, session: Session) -> tuple[int, Any]:
        if path == "/session":
            if method != "GET":
                return 405, {"detail": "method not allowed"}
            return 200, _describe(session)
        if path == "/session/refresh":
            if method != "POST":
                return 405, {"detail": "method not allowed"}
            if session.id is not None:
                # Saved on the response with no data changed: the idle clock restarts,
                # and a parallel request's write is kept (mark_modified() would store
                # the whole data this request loaded over it).
                session.accessed = session.modified = True
            return 200, _describe(session)
        if path == "/logout":
            if method != "POST":
                return 405, {"detail": "method not allowed"}
            session.invalidate()
            return 200, {"authenticated": False}
        if path == "/devices" or path.startswith("/devices/"):
            return await self._devices(method, path, session)
        return 404, {"detail": "not found"}

    async def _devices(self, method: str, path: str, session: Session) -> tuple[int, Any]:
        backend = self.backend
        if not isinstance(backend, UserSessions):
            return 501, {"detail": "this backend keeps no per-user sessions"}
        user = session.user_id
        if user is None:
            return 401, {"detail": "Not authenticated"}
        if path == "/devices":
            if method != "GET":
                return 405, {"detail": "method not allowed"}
            sessions = await backend.list_sessions(user, current=session.id)
            return 200, {
                "devices": [
                    {
                        "id": info.session_id,
                        "current": info.current,
                        "created_at": _float_iso(info.created_at),
                        "last_seen": _float_iso(info.last_seen),
                        "expires_at": _float_iso(info.expires_at),
                        "ip": info.ip,
                        "user_agent": info.user_agent,
                    }
                    for info in sessions
                ]
            }
        if method != "POST":
            return 405, {"detail": "method not allowed"}
        if path == "/devices/revoke-others":
            ended = await backend.revoke_user(user, keep=session.id)
            return 200, {"revoked": ended}
        match = _REVOKE.fullmatch(path)
        if match is None:
            return 404, {"detail": "not found"}
        target = match.group(1)
        if target == session.id:
            return 400, {"detail": "use /logout to end this session"}
        # Only the user's own sessions: an ID of someone else's is "not found".
        mine = {info.session_id for info in await backend.list_sessions(user)}
        if target not in mine:
            return 404, {"detail": "no such session"}
        await backend.revoke(target)
        return 200, {"revoked": 1}

    def _same_site(self, scope: Scope) -> bool:
        site = origin = host = None
        for key, value in scope.get("headers", ()):
            if key == b"sec-fetch-site":
                site = value.decode("latin-1").strip().lower()
            elif key == b"origin":
                origin = value.decode("latin-1").strip().lower()
            elif key == b"host":
                host = value.decode("latin-1").strip().lower()
        if site is not None:
            return site in ("same-origin", "none")
        if origin is None:
            return True  # not a browser: nothing attaches cookies on its own
        if origin in self.trusted_origins:
            return True
        if host is None:
            server = scope.get("server")
            host = f"{server[0]}:{server[1]}" if server else ""
        scheme = scope.get("scheme", "http")
        own = {f"{scheme}://{host}"}
        default_port = {"http": ":80", "https": ":443"}.get(scheme)
        if default_port and host.endswith(default_port):
            own.add(f"{scheme}://{host.removesuffix(default_port)}")
        return origin in own


def _describe(session: Session) -> dict[str, Any]:
    authenticated = session.user_id is not None
    return {
        "authenticated": authenticated,
        "user": session.user_id,
        "created_at": _iso(session.created_at),
        "expires_at": _iso(session.expires_at),
        "absolute_expires_at": _iso(session.absolute_expires_at),
        "browser_session": session.is_browser_session,
    }


async def _json(send: Send, status: int, body: Any) -> None:
    raw = json.dumps(body, separators=(",", ":")).encode()
    await respond(send, status, raw, b"application/json")
