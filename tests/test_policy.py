"""Pure expiry, refresh and rotation decisions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asgi_sessions import ConfigurationError, ExpiryPolicy, SessionRecord
from asgi_sessions.policy import DUE, EXPIRED, QUIET, Action, decide

T0 = 1_000_000.0


def record(**fields: Any) -> SessionRecord:
    base: dict[str, Any] = {
        "session_id": "x",
        "data": {},
        "created_at": T0,
        "last_seen": T0,
        "rotated_at": T0,
    }
    base.update(fields)
    return SessionRecord(**base)


POLICY = ExpiryPolicy(idle_timeout=600, absolute_timeout=3600, refresh_after=60, rotate_after=900)


def test_idle_deadline_slides_with_last_seen_absolute_does_not() -> None:
    assert POLICY.deadline(record()) == T0 + 600
    assert POLICY.deadline(record(last_seen=T0 + 3500)) == T0 + 3600
    assert POLICY.is_expired(record(), T0 + 600)
    assert not POLICY.is_expired(record(), T0 + 599.9)


def test_per_session_overrides() -> None:
    assert POLICY.deadline(record(idle_timeout=30)) == T0 + 30
    assert POLICY.deadline(record(fixed_expiry=T0 + 100)) == T0 + 100
    assert POLICY.deadline(record(fixed_expiry=T0 + 10_000)) == T0 + 3600  # capped
    assert POLICY.cookie_max_age(record(browser_session=True), T0) is None
    assert POLICY.cookie_max_age(record(), T0 + 10) == 600
    assert POLICY.ttl(record(), T0 + 3300) == 300


def test_refresh_throttle_and_short_overrides() -> None:
    assert not POLICY.refresh_due(record(), T0 + 59)
    assert POLICY.refresh_due(record(), T0 + 60)
    # set_expiry(30) is refreshed every 15 s, or it would die while in use
    assert POLICY.refresh_due(record(idle_timeout=30), T0 + 15)
    assert not POLICY.refresh_due(record(fixed_expiry=T0 + 100), T0 + 90)


def test_rotation_due() -> None:
    assert not POLICY.rotation_due(record(), T0 + 899)
    assert POLICY.rotation_due(record(), T0 + 900)
    assert not ExpiryPolicy().rotation_due(record(), T0 + 10**9)


@pytest.mark.parametrize(
    "settings",
    [
        {"idle_timeout": 0},
        {"idle_timeout": 100, "absolute_timeout": 99},
        {"idle_timeout": 100, "refresh_after": 100},
        {"refresh_after": -1},
        {"rotate_after": 0},
    ],
)
def test_invalid_policies(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ExpiryPolicy(**settings)


BASE = {
    "stored": True,
    "empty": False,
    "modified": False,
    "invalidated": False,
    "rotate": False,
    "refresh": False,
    "failed": False,
}


@pytest.mark.parametrize(
    ("changes", "action"),
    [
        ({"invalidated": True, "empty": True, "modified": True}, Action.DELETE),
        ({"empty": True, "modified": True}, Action.DELETE),
        ({"stored": False, "empty": True, "modified": True}, Action.NOTHING),
        ({"stored": False, "empty": True, "invalidated": True}, Action.NOTHING),
        ({"stored": False, "empty": True, "rotate": True}, Action.NOTHING),
        ({"stored": False, "modified": True}, Action.SAVE),
        ({"modified": True}, Action.SAVE),
        ({"rotate": True}, Action.SAVE),
        ({"refresh": True}, Action.TOUCH),
        ({"modified": True, "refresh": True}, Action.SAVE),
        ({}, Action.NOTHING),
        ({"modified": True, "failed": True}, Action.NOTHING),
        ({"invalidated": True, "empty": True, "failed": True}, Action.NOTHING),
    ],
)
def test_commit_rules(changes: dict[str, bool], action: Action) -> None:
    assert decide(**{**BASE, **changes}) is action


@settings(max_examples=500, deadline=None)
@given(
    idle=st.integers(1, 10_000),
    extra=st.integers(0, 10_000),
    refresh=st.integers(0, 10_000),
    rotate=st.one_of(st.none(), st.integers(1, 10_000)),
    created=st.floats(0, 1e6),
    seen_after=st.floats(0, 1e5),
    rotated_after=st.floats(0, 1e5),
    idle_override=st.one_of(st.none(), st.integers(1, 10_000)),
    fixed_after=st.one_of(st.none(), st.floats(0, 1e5)),
    now_after=st.floats(0, 1e5),
)
def test_status_agrees_with_the_separate_checks(
    idle: int,
    extra: int,
    refresh: int,
    rotate: int | None,
    created: float,
    seen_after: float,
    rotated_after: float,
    idle_override: int | None,
    fixed_after: float | None,
    now_after: float,
) -> None:
    """status() is the hot path's one-pass version of is_expired, refresh_due and
    rotation_due: it must never disagree with them."""
    policy = ExpiryPolicy(
        idle_timeout=idle,
        absolute_timeout=idle + extra,
        refresh_after=min(refresh, idle - 1),
        rotate_after=rotate,
    )
    record = SessionRecord(
        session_id="x",
        data={},
        created_at=created,
        last_seen=created + seen_after,
        rotated_at=created + rotated_after,
        idle_timeout=idle_override,
        fixed_expiry=None if fixed_after is None else created + fixed_after,
    )
    now = created + now_after
    if policy.is_expired(record, now):
        expected = EXPIRED
    elif policy.refresh_due(record, now) or policy.rotation_due(record, now):
        expected = DUE
    else:
        expected = QUIET
    assert policy.status(record, now) == expected
