"""Framework glue for asgi-sessions.

The core package works on raw ASGI messages and imports no web framework. The
modules here do, each behind its extra, and are imported explicitly:

* :mod:`asgi_sessions.integrations.fastapi`: ``SessionDep``, a typed FastAPI
  dependency for HTTP and WebSocket routes (``pip install asgi-sessions[fastapi]``).

Starlette needs no glue: ``request.session`` and ``websocket.session`` read the
``scope["session"]`` that :class:`~asgi_sessions.SessionMiddleware` provides.

This package deliberately imports none of its submodules, so importing it never
pulls in an optional dependency.
"""
