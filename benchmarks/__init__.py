"""Benchmarks for asgi-sessions (DESIGN §6). Never run as tests.

* ``python -m benchmarks.inprocess``: a hand-made ASGI loop, no network.
* ``python -m benchmarks.redis_costs``: one Redis command of the request path at a
  time (the floor rows' GET and SET, the read's HGET, the commit's script).

``benchmarks.rows`` holds what every harness shares: the Starlette app, the
scenarios and the registry of configurations (rows) to compare;
``benchmarks.report`` the machine/version header of every report;
``benchmarks.redis_server`` the private ``redis-server`` the Redis rows use and the
count of Redis commands per request.
"""
