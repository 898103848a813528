"""FastAPI glue: a typed session dependency for HTTP and WebSocket routes.

Usage::

    from fastapi import FastAPI, WebSocket
    from asgi_sessions import SessionMiddleware
    from asgi_sessions.integrations.fastapi import SessionDep

    app = FastAPI()
    app.add_middleware(SessionMiddleware)

    @app.get("/me")
    async def me(session: SessionDep) -> dict[str, str | None]:
        return {"user": session.get("user")}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, session: SessionDep) -> None:
        await websocket.accept()
        await websocket.send_json({"user": session.get("user")})

``SessionDep`` gives the very object that ``request.session`` returns, so the two
can be mixed freely. Requires FastAPI (``pip install asgi-sessions[fastapi]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Security, WebSocketException
from fastapi.security import APIKeyCookie
from starlette.requests import HTTPConnection

from asgi_sessions.session import Session

__all__ = [
    "SessionAuth",
    "SessionDep",
    "UserDep",
    "get_session",
    "require_roles",
    "require_user",
]

_NOT_INSTALLED = (
    "asgi_sessions.SessionMiddleware is not installed: no session in the ASGI scope. "
    "Add it with app.add_middleware(SessionMiddleware, ...) or wrap the app with "
    "SessionMiddleware(app, ...)."
)


def get_session(connection: HTTPConnection) -> Session:
    """Return this request's (or WebSocket's) :class:`~asgi_sessions.Session`.

    FastAPI injects ``connection`` as the ``Request`` of an HTTP route or the
    ``WebSocket`` of a WebSocket route, so the dependency serves both. The session
    is ``scope["session"]``, put there by :class:`~asgi_sessions.SessionMiddleware`;
    like Starlette's ``request.session``, asking for it marks it accessed, so the
    response carries ``Vary: Cookie``.

    Raises :class:`RuntimeError` naming the fix when ``SessionMiddleware`` is not
    installed, or when ``scope["session"]`` holds something else (for instance
    Starlette's own ``SessionMiddleware`` is installed instead, or outside ours).
    A route that hits this answers 500: it is a deployment error, not a client one.
    """
    session = connection.scope.get("session")
    if session is None:
        raise RuntimeError(_NOT_INSTALLED)
    if not isinstance(session, Session):
        raise RuntimeError(
            f"scope['session'] is a {type(session).__module__}.{type(session).__qualname__}, "
            "not an asgi_sessions.Session: another session middleware (such as "
            "starlette.middleware.sessions.SessionMiddleware) replaced it. Remove that "
            "middleware and keep asgi_sessions.SessionMiddleware only."
        )
    session.mark_accessed()
    return session


SessionDep = Annotated[Session, Depends(get_session)]
"""The current :class:`~asgi_sessions.Session`, as a FastAPI parameter annotation:
``async def route(session: SessionDep) -> ...``. See :func:`get_session`."""


class SessionAuth:
    """Login and role checks as FastAPI dependencies, for HTTP and WebSocket routes.

    ``user`` is a dependency that returns the bound user ID (``session.bind_user``)
    or refuses: ``401`` with ``{"detail": "Not authenticated"}`` on HTTP, a close with
    code 1008 before accepting on a WebSocket. ``roles(*names)`` returns a
    dependency that also requires every name in ``session[roles_key]`` (a list the
    app stores at login): ``403`` (or 1008) otherwise. Both declare the session
    cookie as an ``apiKey``-in-cookie security scheme, so OpenAPI shows which routes
    need it. Use one instance per cookie name.
    """

    def __init__(self, cookie_name: str = "session", *, roles_key: str = "roles") -> None:
        self.roles_key = roles_key
        self.scheme = APIKeyCookie(
            name=cookie_name,
            scheme_name="SessionCookie",
            description="The asgi-sessions session cookie, set by logging in.",
            auto_error=False,
        )
        scheme = self.scheme

        # Defaults, not Annotated[...]: under ``from __future__ import annotations``
        # FastAPI could not resolve a local name inside a string annotation.
        def user(connection: HTTPConnection, _cookie: str | None = Security(scheme)) -> str:
            user_id = get_session(connection).user_id
            if user_id is None:
                _refuse(connection, 401, "Not authenticated")
            assert user_id is not None
            return user_id

        self.user = user

    def roles(self, *names: str) -> Any:
        """A dependency requiring a logged-in user holding every role in ``names``;
        use as ``dependencies=[auth.roles("admin")]`` or ``user: str = auth.roles(...)``."""
        wanted = frozenset(names)
        key = self.roles_key
        user_dependency: Callable[..., str] = self.user

        def check(connection: HTTPConnection, user: str = Depends(user_dependency)) -> str:
            granted = get_session(connection).get(key)
            if not isinstance(granted, list | tuple | set | frozenset) or not wanted <= set(
                granted
            ):
                _refuse(connection, 403, "Not allowed")
            return user

        return Depends(check)


def _refuse(connection: HTTPConnection, status: int, detail: str) -> None:
    if connection.scope["type"] == "websocket":
        raise WebSocketException(code=1008, reason=detail)
    raise HTTPException(status, detail=detail, headers={"Cache-Control": "no-store"})


_default = SessionAuth()
require_user = _default.user
"""The default :class:`SessionAuth` (cookie ``session``)'s user dependency."""
require_roles = _default.roles
"""The default :class:`SessionAuth`'s role check: ``Depends``-ready."""
UserDep = Annotated[str, Depends(require_user)]
"""The logged-in user's ID as a parameter annotation; 401 (or a 1008 close) without one."""
