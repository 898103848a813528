"""Quart glue: ``quart.session`` backed by asgi-sessions.

Usage::

    from quart import Quart, session
    from asgi_sessions import RedisBackend
    from asgi_sessions.integrations.quart import install

    app = Quart(__name__)
    install(app, RedisBackend("redis://localhost:6379/0"))

    @app.post("/login")
    async def login():
        session.rotate()            # a new session ID at login
        session.bind_user("ann")
        session["cart"] = []
        return "ok"

``install`` wraps ``app.asgi_app`` with :class:`~asgi_sessions.SessionMiddleware`
and sets ``app.session_interface`` to :class:`SessionInterface`, whose
``open_session`` returns the middleware's session for the request or WebSocket
and whose ``save_session`` does nothing: the middleware persists on the response.
Cookie settings default from ``app.config`` (``SESSION_COOKIE_NAME``, ``_DOMAIN``,
``_PATH``, ``_HTTPONLY``, ``_SAMESITE``, ``_PARTITIONED``, and
``PERMANENT_SESSION_LIFETIME`` as the idle timeout); keyword arguments override
them. The cookie is ``Secure`` whatever ``SESSION_COOKIE_SECURE`` says (Quart's
default is False, so it cannot tell a choice): pass ``https_only=False`` for plain
http in development. The session is a :class:`QuartSession`: a real ``SessionMixin``, with
``permanent`` mapped onto the cookie's lifetime.

Unlike Flask's cookie sessions, sessions are permanent by default (the cookie has a
Max-Age, the idle timeout); ``session.permanent = False`` makes it a browser-session
cookie. Requires Quart (``pip install asgi-sessions[quart]``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask.sessions import SessionMixin
from quart import Quart
from quart.sessions import SessionInterface as _QuartSessionInterface

from asgi_sessions.errors import ConfigurationError
from asgi_sessions.middleware import SessionMiddleware
from asgi_sessions.session import Session

__all__ = ["QuartSession", "SessionInterface", "install"]

_NOT_INSTALLED = (
    "asgi_sessions' Quart session interface is set but no asgi_sessions session is in "
    "the ASGI scope: call asgi_sessions.integrations.quart.install(app, backend) "
    "instead of setting app.session_interface by hand (it also wraps app.asgi_app "
    "with SessionMiddleware)"
)


class QuartSession(Session, SessionMixin):  # type: ignore[override]
    """The middleware's :class:`~asgi_sessions.Session`, also a Flask ``SessionMixin``.

    ``permanent``: True while the cookie has a Max-Age (the default); setting it to
    False makes a browser-session cookie, True goes back to the configured
    lifetime. Everything else is :class:`~asgi_sessions.Session`.
    """

    @property
    def permanent(self) -> bool:
        return not self.is_browser_session

    @permanent.setter
    def permanent(self, value: bool) -> None:
        if bool(value) == self.permanent and self._expiry is None:
            return
        self.set_expiry(None if value else 0)


class SessionInterface(_QuartSessionInterface):
    """Hands Quart the middleware's session; persisting is the middleware's job."""

    async def open_session(self, app: Quart, request: Any) -> QuartSession:
        session = request.scope.get("session")
        if not isinstance(session, QuartSession):
            raise RuntimeError(_NOT_INSTALLED)
        return session

    async def save_session(self, app: Quart, session: Any, response: Any) -> None:
        return None

    def is_null_session(self, instance: object) -> bool:
        return False


def install(app: Quart, backend: Any = None, **options: Any) -> SessionMiddleware:
    """Wrap ``app.asgi_app`` with :class:`~asgi_sessions.SessionMiddleware` and set
    the session interface. ``options`` go to the middleware and override what
    ``app.config`` says; returns the middleware."""
    if isinstance(app.session_interface, SessionInterface):
        raise ConfigurationError("install() was already called for this app")
    config = app.config
    settings: dict[str, Any] = {
        "cookie_name": config.get("SESSION_COOKIE_NAME") or "session",
        "domain": config.get("SESSION_COOKIE_DOMAIN") or None,
        "path": config.get("SESSION_COOKIE_PATH") or config.get("APPLICATION_ROOT") or "/",
        "http_only": bool(config.get("SESSION_COOKIE_HTTPONLY", True)),
        "same_site": str(config.get("SESSION_COOKIE_SAMESITE") or "lax").lower(),
        "partitioned": bool(config.get("SESSION_COOKIE_PARTITIONED", False)),
    }
    # SESSION_COOKIE_SECURE is False in Quart's defaults, so False cannot mean the
    # app chose it: the cookie stays Secure unless install(..., https_only=False).
    lifetime = config.get("PERMANENT_SESSION_LIFETIME")
    if isinstance(lifetime, int | float):
        lifetime = timedelta(seconds=lifetime)
    if isinstance(lifetime, timedelta):
        idle = int(lifetime.total_seconds())
        settings["idle_timeout"] = idle
        settings["absolute_timeout"] = max(idle, 7 * 24 * 3600)
    settings.update(options)
    settings["session_class"] = QuartSession
    middleware = SessionMiddleware(app.asgi_app, backend=backend, **settings)  # type: ignore[arg-type]
    app.asgi_app = middleware  # type: ignore[method-assign,assignment]
    app.session_interface = SessionInterface()  # type: ignore[assignment]
    return middleware
