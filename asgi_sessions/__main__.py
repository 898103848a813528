"""``python -m asgi_sessions``: the command-line tool (see :mod:`asgi_sessions.cli`)."""

from asgi_sessions.cli import main

raise SystemExit(main())
