"""Benchmarks for asgi-sessions (DESIGN §6). Never run as tests.

* ``python -m benchmarks.inprocess``: a hand-made ASGI loop, no network.

``benchmarks.rows`` holds what every harness shares: the Starlette app, the
scenarios and the registry of configurations (rows) to compare;
``benchmarks.report`` the machine/version header of every report;
``benchmarks.redis_server`` the private ``redis-server`` the Redis rows use and the
count of Redis commands per request.
"""
