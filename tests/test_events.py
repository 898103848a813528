"""Session events (issue 5): each one fires, and nothing replayable reaches an event
or a log line."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

import pytest

from asgi_sessions import JWTBackend, MemoryBackend, SessionMiddleware
from asgi_sessions.events import SessionEvent, log_events
from tests.asgi import Client, session_app
from tests.conftest import FakeClock

pytestmark = pytest.mark.anyio

SECRET = "events-test-secret-of-at-least-32-bytes!"


def names(events: list[SessionEvent]) -> list[str]:
    return [e.name for e in events]


async def test_every_event_fires_and_no_token_leaks(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    events: list[SessionEvent] = []
    backend = MemoryBackend(clock=clock)
    app = SessionMiddleware(
        session_app,
        backend=backend,
        idle_timeout=600,
        refresh_after=60,
        clock=clock,
        on_event=[events.append, log_events],
    )
    used: list[str] = []  # every cookie value a client held or sent
    client = Client(app)

    async def get(target: str, **kwargs: Any) -> Any:
        response = await client.get(target, **kwargs)
        used.extend(client.jar.values())
        return response

    await get("/set?k=v")
    assert names(events) == ["created"]
    created = events[-1]
    assert created.session is not None
    assert len(created.session) == 12
    assert created.ip == "127.0.0.1"
    assert created.user_agent == "test-agent/1.0"

    await get("/bind?user=ann")  # binding a user rotates
    assert events[-1].name == "rotated"
    assert events[-1].previous == created.session
    assert events[-1].user_id == "ann"

    clock.advance(61)
    await get("/read")  # the refresh rides on the load
    assert events[-1].name == "refreshed"

    await get("/invalidate")
    assert events[-1].name == "invalidated"
    assert events[-1].user_id == "ann"

    # revoked: an admin ends another device's session.
    other = Client(app)
    await other.get("/bind?user=bob")
    used.extend(other.jar.values())
    assert await backend.revoke_user("bob") == 1
    assert events[-1].name == "revoked"
    assert events[-1].user_id == "bob"

    # suspicious: an unknown ID, a forged value, duplicate session cookies.
    unknown = secrets.token_urlsafe(32)
    used.append(unknown)
    await Client(app).get("/read", cookie=f"session={unknown}".encode())
    assert events[-1].name == "suspicious"
    assert events[-1].reason == "unknown or expired session"
    forged = "x" * 43
    await Client(app).get("/read", cookie=f"session={forged}".encode())
    assert events[-1].name == "suspicious"
    await Client(app).get("/read", cookie=b"session=a; session=b")
    assert events[-1].name == "suspicious"
    assert events[-1].reason == "duplicate session cookie"

    # expired: a JWT past its deadline but inside the verification leeway.
    jwt_events: list[SessionEvent] = []
    jwt_app = SessionMiddleware(
        session_app,
        backend=JWTBackend(SECRET, leeway=30),
        idle_timeout=600,
        clock=clock,
        on_event=[jwt_events.append, log_events],
    )
    jwt_client = Client(jwt_app)
    await jwt_client.get("/set?k=v")
    used.extend(jwt_client.jar.values())
    clock.advance(610)
    assert (await jwt_client.get("/read")).json() == {}
    assert jwt_events[-1].name == "expired"
    assert jwt_events[-1].session is not None

    all_events = events + jwt_events
    assert set(names(all_events)) == {
        "created",
        "rotated",
        "refreshed",
        "invalidated",
        "revoked",
        "expired",
        "suspicious",
    }
    # The ready hook wrote one JSON line per event.
    lines = [r.getMessage() for r in caplog.records if r.name == "asgi_sessions.events"]
    assert len(lines) == len(all_events)
    assert json.loads(lines[0].removeprefix("session event "))["name"] == "created"
    # No cookie value (nor a chunk of a JWT's signature) in any event or log line.
    text = "\n".join([r.getMessage() for r in caplog.records] + [repr(e) for e in all_events])
    for value in used:
        for part in value.split("."):
            if len(part) >= 16:
                assert part not in text


async def test_a_failing_hook_never_fails_the_request(clock: FakeClock) -> None:
    seen: list[str] = []

    def broken(event: SessionEvent) -> None:
        raise RuntimeError("audit sink down")

    async def recorder(event: SessionEvent) -> None:
        seen.append(event.name)

    app = SessionMiddleware(
        session_app, backend=MemoryBackend(clock=clock), clock=clock, on_event=[broken, recorder]
    )
    response = await Client(app).get("/set?k=v")
    assert response.status == 200
    assert seen == ["created"]  # later hooks still run; coroutine hooks are awaited
