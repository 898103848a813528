"""Expiry, refresh and rotation decisions as pure functions of a record and a time.

Nothing here does I/O or reads a clock: the middleware passes ``now``. Two clocks are
enforced: the idle deadline (``last_seen`` + idle timeout, slid forward by a
refresh) and the absolute deadline (``created_at`` + absolute timeout), which no
activity moves.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import timedelta

from asgi_sessions.backends.base import SessionRecord
from asgi_sessions.errors import ConfigurationError

__all__ = ["DUE", "EXPIRED", "QUIET", "Action", "ExpiryPolicy", "decide", "seconds"]

# ExpiryPolicy.status()
QUIET = 0
DUE = 1
EXPIRED = 2


def seconds(value: int | float | timedelta, name: str) -> int:
    """A duration setting as whole seconds; refuses negatives, NaN and bools."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(
            f"{name} must be a number of seconds or a timedelta, got {value!r}"
        )
    if value < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """The expiry settings, validated once.

    ``refresh_after`` throttles the sliding expiry: a session whose expiry was
    extended less than that many seconds ago is not written again.
    ``rotate_after`` (or ``None``) issues a new token that often.
    """

    idle_timeout: int = 12 * 3600
    absolute_timeout: int = 7 * 24 * 3600
    refresh_after: int = 3600
    rotate_after: int | None = None

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0:
            raise ConfigurationError("idle_timeout must be positive")
        if self.absolute_timeout < self.idle_timeout:
            raise ConfigurationError(
                f"absolute_timeout ({self.absolute_timeout}s) must be at least idle_timeout "
                f"({self.idle_timeout}s): lower idle_timeout or raise absolute_timeout"
            )
        if not 0 <= self.refresh_after < self.idle_timeout:
            raise ConfigurationError(
                f"refresh_after ({self.refresh_after}s) must be below idle_timeout "
                f"({self.idle_timeout}s), or an idle session would expire before it is refreshed"
            )
        if self.rotate_after is not None and self.rotate_after <= 0:
            raise ConfigurationError("rotate_after must be positive, or None to disable it")

    def absolute_deadline(self, record: SessionRecord) -> float:
        return record.created_at + self.absolute_timeout

    def idle_deadline(self, record: SessionRecord, last_seen: float | None = None) -> float:
        if record.fixed_expiry is not None:
            return record.fixed_expiry
        idle = self.idle_timeout if record.idle_timeout is None else record.idle_timeout
        return (record.last_seen if last_seen is None else last_seen) + idle

    def deadline(self, record: SessionRecord, last_seen: float | None = None) -> float:
        """When the session ends if it sees no activity after ``last_seen``."""
        return min(self.idle_deadline(record, last_seen), self.absolute_deadline(record))

    def is_expired(self, record: SessionRecord, now: float) -> bool:
        return now >= self.deadline(record)

    def sliding(self, record: SessionRecord) -> tuple[int, int] | None:
        """``(refresh period, idle timeout)`` in seconds for a session whose expiry
        slides; ``None`` for a fixed expiry, which is never extended."""
        if record.fixed_expiry is not None:
            return None
        idle = self.idle_timeout if record.idle_timeout is None else record.idle_timeout
        # A short per-session idle timeout (set_expiry(60)) must still be refreshed
        # before it runs out, whatever the global throttle says.
        return min(self.refresh_after, idle // 2), idle

    def refresh_due(self, record: SessionRecord, now: float) -> bool:
        sliding = self.sliding(record)
        # A fixed expiry does not slide, so there is nothing to extend.
        return sliding is not None and now - record.last_seen >= sliding[0]

    def status(self, record: SessionRecord, now: float) -> int:
        """One pass over the checks a loaded session needs: ``EXPIRED`` (2) when
        :meth:`is_expired`, ``DUE`` (1) when a refresh or a rotation is due, else
        ``QUIET`` (0)."""
        idle = self.idle_timeout if record.idle_timeout is None else record.idle_timeout
        fixed = record.fixed_expiry
        last_seen = record.last_seen
        if (
            now >= (last_seen + idle if fixed is None else fixed)
            or now >= record.created_at + self.absolute_timeout
        ):
            return EXPIRED
        if fixed is None and now - last_seen >= min(self.refresh_after, idle // 2):
            return DUE
        rotate_after = self.rotate_after
        if rotate_after is not None and now - record.rotated_at >= rotate_after:
            return DUE
        return QUIET

    def rotation_due(self, record: SessionRecord, now: float) -> bool:
        return self.rotate_after is not None and now - record.rotated_at >= self.rotate_after

    def ttl(self, record: SessionRecord, now: float) -> int:
        """Seconds the stored record may live once refreshed at ``now`` (at least 1)."""
        return max(1, math.ceil(self.deadline(record, now) - now))

    def cookie_max_age(self, record: SessionRecord, now: float) -> int | None:
        """The cookie's Max-Age after a refresh at ``now``; ``None`` for a
        browser-session cookie (the server still enforces the deadline)."""
        if record.browser_session:
            return None
        return self.ttl(record, now)


class Action(enum.Enum):
    """What the commit does with the backend (DESIGN §3, commit rules 1 to 5)."""

    NOTHING = "nothing"
    DELETE = "delete"
    SAVE = "save"
    TOUCH = "touch"


def decide(
    *,
    stored: bool,
    empty: bool,
    modified: bool,
    invalidated: bool,
    rotate: bool,
    refresh: bool,
    failed: bool,
) -> Action:
    """The commit rule for one response.

    ``stored``: a record was loaded for this request. ``failed``: the response is
    a 5xx, which saves nothing (and deletes nothing).
    """
    if failed:
        return Action.NOTHING
    if invalidated or (empty and modified):
        return Action.DELETE if stored else Action.NOTHING
    if empty and not stored:
        return Action.NOTHING
    if modified or rotate:
        return Action.SAVE
    if refresh:
        return Action.TOUCH
    return Action.NOTHING
