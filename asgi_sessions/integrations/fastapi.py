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

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from asgi_sessions.session import Session

__all__ = ["SessionDep", "get_session"]

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
