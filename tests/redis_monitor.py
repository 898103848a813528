"""What a piece of code sent to Redis, as the server saw it (MONITOR)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

from redis.asyncio import Redis

# Connection upkeep is not a request's work: a new pooled connection's HELLO and
# CLIENT SETINFO, and redis-py's health-check PING.
UPKEEP = frozenset({"HELLO", "CLIENT", "PING"})


async def commands_sent(raw: Redis, action: Awaitable[Any]) -> list[str]:
    """The names of the commands ``action`` sent, one per round trip: commands a Lua
    script runs inside its EVALSHA, and connection upkeep, are left out."""
    marker = uuid.uuid4().hex
    seen = []
    async with raw.monitor() as monitor:
        await action
        await raw.echo(marker)
        for _ in range(10_000):
            command = await monitor.next_command()
            if marker in command["command"]:
                return seen
            name = command["command"].split(" ", 1)[0].upper()
            if command["client_type"] != "lua" and name not in UPKEEP:
                seen.append(name)
    raise AssertionError("the marker never came back through MONITOR")
