"""The asgi-sessions CLI against a real Redis (issue 5)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asgi_sessions import JWTBackend, SessionMiddleware
from asgi_sessions.backends.redis import RedisBackend
from asgi_sessions.cli import amain
from tests.asgi import Client, session_app

COMMANDS = ["list", "revoke", "revoke-user", "revoke-all", "inspect", "count", "prune"]


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = await amain(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
async def populated(redis_url: str) -> AsyncIterator[Any]:
    """Three devices of ann and one of bob, logged in through the middleware."""
    prefix = f"cli{uuid.uuid4().hex[:10]}:"
    backend = RedisBackend(redis_url, prefix=prefix)
    app = SessionMiddleware(session_app, backend=backend)
    clients = []
    for user in ("ann", "ann", "ann", "bob"):
        client = Client(app)
        await client.get(f"/bind?user={user}")
        clients.append(client)
    yield prefix, clients
    await backend.aclose()


@pytest.mark.anyio
async def test_list_inspect_revoke_count_prune(
    populated: Any, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix, clients = populated
    base = ["--redis", redis_url, "--prefix", prefix]

    status, out, _ = await run(capsys, "count", *base, "--json")
    assert status == 0
    assert json.loads(out) == {"grace_aliases": 0, "live_sessions": 4}

    status, out, _ = await run(capsys, "list", "ann", *base, "--json")
    rows = json.loads(out)
    assert len(rows) == 3
    assert {r["user_agent"] for r in rows} == {"test-agent/1.0"}
    status, table, _ = await run(capsys, "list", "ann", *base)
    assert table.splitlines()[0].split() == [
        "id",
        "created",
        "last_seen",
        "expires",
        "ip",
        "user_agent",
    ]

    cookie = clients[0].jar["session"]
    # "--": a token can start with "-" (1 in 64), which argparse would take for an option.
    status, out, _ = await run(capsys, "inspect", *base, "--json", "--", cookie)
    assert status == 0
    shown = json.loads(out)["session"]
    assert shown["user"] == "ann"
    assert shown["id"] in {r["id"] for r in rows}
    assert cookie not in out  # never the token

    status, out, _ = await run(capsys, "revoke", shown["id"], *base)
    assert status == 0
    assert (await clients[0].get("/read")).json() == {}
    status, _, err = await run(capsys, "revoke", shown["id"], *base)
    assert status == 1
    assert "no live session" in err

    keep = next(r["id"] for r in rows if r["id"] != shown["id"])
    status, out, _ = await run(capsys, "revoke-user", "ann", "--keep", keep, *base, "--json")
    assert json.loads(out) == {"revoked": 1}
    status, out, _ = await run(capsys, "list", "ann", *base, "--json")
    assert [r["id"] for r in json.loads(out)] == [keep]

    status, out, _ = await run(capsys, "prune", *base, "--json")
    assert status == 0
    assert json.loads(out)["pruned"] >= 0
    status, out, _ = await run(capsys, "prune", *base, "--json")
    assert json.loads(out) == {"pruned": 0}  # nothing stale left

    status, _, err = await run(capsys, "revoke-all", *base)
    assert status == 2
    assert "--yes" in err
    assert (await clients[3].get("/read")).json() == {"user": "bob"}
    status, out, _ = await run(capsys, "revoke-all", "--yes", *base, "--json")
    assert status == 0
    assert json.loads(out) == {"revoked": 2}  # ann's kept one and bob's
    assert (await clients[3].get("/read")).json() == {}
    status, out, _ = await run(capsys, "count", *base, "--json")
    assert json.loads(out) == {"grace_aliases": 0, "live_sessions": 0}


@pytest.mark.anyio
async def test_inspect_decodes_a_jwt_without_trusting_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = Client(
        SessionMiddleware(session_app, backend=JWTBackend("cli-test-secret-of-at-least-32-bytes!"))
    )
    await client.get("/bind?user=ann")
    status, out, _ = await run(capsys, "inspect", "--json", "--", client.jar["session"])
    assert status == 0
    shown = json.loads(out)["jwt"]
    assert shown["verified"] is False
    assert shown["claims"]["uid"] == "ann"


@pytest.mark.anyio
async def test_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = await run(capsys, "count", "--redis", "http://nope")
    assert status == 2
    assert err.startswith("asgi-sessions: invalid Redis URL")
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, _, err = await run(capsys, "count", "--redis", f"redis://:secret@127.0.0.1:{port}/0")
    assert status == 2
    assert "unreachable" in err
    assert "secret" not in err
    assert "Traceback" not in err
    status, _, err = await run(
        capsys, "inspect", "not-a-token", "--redis", "redis://127.0.0.1:6379/0"
    )
    assert status == 1


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_for_every_command(command: str | None) -> None:
    argv = [sys.executable, "-m", "asgi_sessions", *([command] if command else []), "--help"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert "usage: asgi-sessions" in result.stdout
