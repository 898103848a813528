"""RouteGuard: login-required pages and APIs, as a pure ASGI middleware.

Put it inside :class:`~asgi_sessions.SessionMiddleware` (it reads
``scope["session"]``)::

    app = SessionMiddleware(RouteGuard(app, protected=["/app/*"], api=["/api/*"]), ...)

or, with Starlette, ``app.add_middleware(RouteGuard, ...)`` *before*
``app.add_middleware(SessionMiddleware, ...)`` (the last one added runs first).

For a request that is not logged in (by default: the session has no bound user):

- a path matching ``api`` gets ``401`` with a JSON body;
- a path matching ``protected`` is redirected (``303``) to ``login_path`` with the
  page it asked for in the ``return_param`` query parameter;
- a WebSocket to either is closed before it is accepted (code 1008).

A logged-in user who opens ``login_path`` is sent to the validated ``return_param``
target, or to ``home``. Paths matching ``public`` are never guarded; ``login_path``
always is public.

The return target is only ever a same-origin path: :func:`safe_return_path` refuses
anything a browser could take to another origin (``//host``, ``/\\host``, schemes,
control characters, and their percent-encoded forms) and falls back to ``home``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from asgi_sessions._asgi import respond
from asgi_sessions.errors import ConfigurationError
from asgi_sessions.session import Session

__all__ = ["RouteGuard", "safe_return_path"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_return_path(value: str | None, default: str = "/") -> str:
    """``value`` if it is a same-origin absolute path (with an optional query), else
    ``default``. Decoded repeatedly before checking, so ``%2F%2Fevil.example`` and
    ``%252F...`` are judged as the browser would finally see them."""
    if not value:
        return default
    decoded = value
    for _ in range(3):
        step = unquote(decoded)
        if step == decoded:
            break
        decoded = step
    else:
        return default  # still changing after three rounds: not a path we issued
    for candidate in (value, decoded):
        if (
            not candidate.startswith("/")
            or candidate.startswith("//")
            or _UNSAFE.search(candidate)
            or ":" in candidate.split("?", 1)[0].split("/", 2)[1]
        ):
            return default
        # A browser strips tabs and newlines and treats "\" as "/": both refused above.
    return value


def _patterns(value: Iterable[str], name: str) -> tuple[re.Pattern[str], ...]:
    if isinstance(value, str):
        raise ConfigurationError(f"{name} must be a list of path patterns, not one string")
    compiled = []
    for pattern in value:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ConfigurationError(f"{name}: {pattern!r} is not a path pattern starting with /")
        compiled.append(re.compile(fnmatch.translate(pattern)))
    return tuple(compiled)


def _logged_in(session: Session) -> bool:
    return session.user_id is not None


class RouteGuard:
    """Redirects or refuses requests that need a login; see the module docstring.

    Patterns are shell-style (``fnmatch``): ``*`` matches across ``/``, so
    ``"/app/*"`` covers everything under ``/app/``; list ``"/app"`` too for the bare
    path. ``is_logged_in(session)`` decides who is logged in (default: a user is
    bound with ``session.bind_user()``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        protected: Iterable[str] = (),
        api: Iterable[str] = (),
        public: Iterable[str] = (),
        login_path: str = "/login",
        home: str = "/",
        return_param: str = "next",
        is_logged_in: Callable[[Session], bool] = _logged_in,
    ) -> None:
        self.app = app
        self.protected = _patterns(protected, "protected")
        self.api = _patterns(api, "api")
        self.public = _patterns(public, "public")
        if safe_return_path(login_path, "") != login_path or "?" in login_path:
            raise ConfigurationError(f"login_path must be a plain local path, got {login_path!r}")
        if safe_return_path(home, "") != home:
            raise ConfigurationError(f"home must be a local path, got {home!r}")
        if not return_param or not re.fullmatch(r"[A-Za-z0-9_.-]+", return_param):
            raise ConfigurationError(f"return_param must be a plain name, got {return_param!r}")
        self.login_path = login_path
        self.home = home
        self.return_param = return_param
        self.is_logged_in = is_logged_in

    def _logged_in(self, session: Session) -> bool:
        # The guard's answer depends on the session: the response varies on the
        # Cookie even if the app never reads it (DESIGN §3).
        session.mark_accessed()
        return self.is_logged_in(session)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "/")
        if any(p.match(path) for p in self.public):
            await self.app(scope, receive, send)
            return
        session = scope.get("session")
        if not isinstance(session, Session):
            raise RuntimeError(
                "RouteGuard needs asgi_sessions.SessionMiddleware outside it (it reads "
                'scope["session"]): wrap as SessionMiddleware(RouteGuard(app), ...)'
            )
        if path == self.login_path:
            if kind == "http" and self._logged_in(session):
                query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
                target = safe_return_path(query.get(self.return_param), self.home)
                await _redirect(send, target)
                return
            await self.app(scope, receive, send)
            return
        is_api = any(p.match(path) for p in self.api)
        if not is_api and not any(p.match(path) for p in self.protected):
            await self.app(scope, receive, send)
            return
        if self._logged_in(session):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "login required"})
            return
        if is_api:
            await _unauthorized(send)
            return
        here = path
        query_string = scope.get("query_string", b"")
        if query_string:
            here += "?" + query_string.decode("latin-1")
        target = f"{self.login_path}?{self.return_param}={quote(safe_return_path(here), safe='')}"
        await _redirect(send, target)


async def _redirect(send: Send, location: str) -> None:
    await respond(send, 303, b"", None, (b"location", location.encode("latin-1", "replace")))


async def _unauthorized(send: Send) -> None:
    await respond(send, 401, b'{"detail":"Not authenticated"}', b"application/json")
