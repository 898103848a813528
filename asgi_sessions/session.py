"""The session object the application sees in ``scope["session"]``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from asgi_sessions.errors import SerializationError, SessionRevoked

if TYPE_CHECKING:
    from asgi_sessions.backends.base import SessionRecord
    from asgi_sessions.policy import ExpiryPolicy

__all__ = ["Session"]

_Check = Callable[[str, Any], None]
_UNSET: Any = object()  # bind_user() not called in this request
# (idle override in seconds, fixed expiry timestamp, browser-session cookie)
_Expiry = tuple[int | None, float | None, bool]


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


class Session(dict[str, Any]):
    """A ``dict`` of session data that records what the request did with it.

    Compatible with Starlette's ``request.session`` (which calls
    :meth:`mark_accessed`). Every mutator marks the session modified and records the
    changed key, so server-side backends write only what changed. A value that the
    backend could not store and load back equal is refused by the assignment itself
    with :class:`SerializationError`.

    Mutating a nested value in place (``session["cart"].append(x)``) is not seen:
    assign the value again, or call :meth:`mark_modified`.

    ``accessed``: the data was read or written (the response then gets
    ``Vary: Cookie``). ``modified``: the data was changed. ``new``: no stored
    session was loaded for this request.
    """

    # Class-level defaults: a request that never touches its session pays for no
    # attribute writes (this object is built on every request).
    accessed: bool = False
    modified: bool = False
    _record: SessionRecord | None = None
    _check: _Check | None = None
    _policy: ExpiryPolicy | None = None
    _loaded_at: float | None = None
    _changed: set[str] | frozenset[str] = frozenset()  # a set from the first change on
    _replace: bool = False
    _rotate: bool = False
    _invalidated: bool = False
    _expiry: _Expiry | None = None
    _user: Any = _UNSET  # a pending bind_user() value
    # Set by the middleware when a store failure replaced the response with a 503.
    _replaced: bool = False

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        record: SessionRecord | None = None,
        check: _Check | None = None,
        policy: ExpiryPolicy | None = None,
        now: float | None = None,
    ) -> None:
        if data:
            super().__init__(data)
        if record is not None:
            self._record = record
            self._loaded_at = now
        self._check = check
        self._policy = policy

    # -- Starlette compatibility -----------------------------------------------

    def mark_accessed(self) -> None:
        self.accessed = True

    def mark_modified(self) -> None:
        """Mark the whole session as changed (after mutating a nested value)."""
        self.accessed = True
        self.modified = True
        self._replace = True

    # -- reads (mark accessed, so the response varies on Cookie) -----------------

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.accessed = True
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        self.accessed = True
        return super().__iter__()

    def __len__(self) -> int:
        self.accessed = True
        return super().__len__()

    def keys(self) -> Any:
        self.accessed = True
        return super().keys()

    def values(self) -> Any:
        self.accessed = True
        return super().values()

    def items(self) -> Any:
        self.accessed = True
        return super().items()

    # -- writes ----------------------------------------------------------------

    def _changing(self, key: str) -> None:
        self.accessed = True
        self.modified = True
        changed = self._changed
        if type(changed) is frozenset:
            changed = self._changed = set()
        changed.add(key)  # type: ignore[union-attr]

    def __setitem__(self, key: str, value: Any) -> None:
        if self._check is not None:
            self._check(key, value)
        elif type(key) is not str:
            raise SerializationError(f"session keys must be str, got {type(key).__name__}")
        self._changing(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changing(key)

    def clear(self) -> None:
        """Remove every key and untie the session from its user (as
        ``bind_user(None)``): the Starlette logout idiom ends the session, whose
        record is deleted on the response unless something is stored again."""
        for key in list(super().keys()):
            self._changing(key)
        self.accessed = True
        self.modified = True
        super().clear()
        if self.user_id is not None:
            self.bind_user(None)

    def pop(self, key: str, *args: Any) -> Any:
        self.accessed = True
        if super().__contains__(key):
            self._changing(key)
        return super().pop(key, *args)

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self._changing(key)
        return key, value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if not super().__contains__(key):
            self[key] = default
            return default
        self.accessed = True
        return super().__getitem__(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        items: dict[str, Any] = dict(*args, **kwargs)
        for key, value in items.items():
            self[key] = value

    def __ior__(self, other: Iterable[Any]) -> Session:  # type: ignore[override,misc]
        self.update(other)
        return self

    def copy(self) -> dict[str, Any]:
        """A plain ``dict`` copy of the data."""
        self.accessed = True
        return dict(super().items())

    def __reduce__(self) -> Any:
        # A Session is tied to one request; pickling or deep-copying it gives the data.
        return (dict, (dict(super().items()),))

    # -- lifecycle ---------------------------------------------------------------

    def rotate(self) -> None:
        """Issue a new session ID on this response, keeping the data.

        Call it on login and on any change of privilege. The old ID stops working:
        server-side backends keep it only as a short read-only grace alias so that
        parallel requests of the same browser are not logged out.
        """
        self.accessed = True
        self._rotate = True

    def invalidate(self) -> None:
        """End the session: clear the data, delete the stored record and expire the
        cookie on this response."""
        self.clear()
        self._invalidated = True

    def bind_user(self, user_id: str | None) -> None:
        """Tie the session to ``user_id`` (usually at login) so the user can list and
        revoke it; ``None`` unties it (at logout without invalidating).

        Binding to a user other than the current one also rotates the session ID:
        a privilege change always gets a new ID, even if ``rotate()`` was forgotten.
        Server-side backends index the session under the user on this response.
        """
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            raise ValueError("bind_user() takes a non-empty str user ID, or None")
        if user_id != self.user_id:
            self._rotate = True
        self._user = user_id
        self.accessed = True
        self.modified = True

    @property
    def _empty(self) -> bool:
        # No data and no bound user: nothing to store (DESIGN §3, commit rules 1 and
        # 2); unlike len(), it does not mark the session accessed.
        return not dict.__len__(self) and self.user_id is None

    @property
    def user_id(self) -> str | None:
        """The user this session is bound to, including a bind_user() of this request."""
        if self._user is not _UNSET:
            return self._user  # type: ignore[no-any-return]
        return None if self._record is None else self._record.user_id

    def set_expiry(self, value: int | float | timedelta | datetime | None) -> None:
        """Override this session's expiry (like Django's ``set_expiry``).

        * seconds (int/float) or a ``timedelta``: idle timeout for this session;
        * an aware ``datetime``: the session ends at that moment, activity or not;
        * ``0``: a browser-session cookie without Max-Age (the server still expires
          the session after the default idle timeout);
        * ``None``: back to the middleware's settings.

        The absolute lifetime is never extended. Raises ``ValueError`` for a negative
        duration or a naive datetime.
        """
        if value is None:
            expiry: _Expiry = (None, None, False)
        elif isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("set_expiry() needs an aware datetime (add tzinfo=UTC)")
            expiry = (None, value.timestamp(), False)
        else:
            if isinstance(value, timedelta):
                value = value.total_seconds()
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(
                    f"set_expiry() takes seconds, a timedelta or a datetime, got {value!r}"
                )
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"set_expiry() needs a non-negative duration, got {value!r}")
            expiry = (None, None, True) if value == 0 else (max(1, int(value)), None, False)
        self._expiry = expiry
        self.accessed = True
        self.modified = True

    # -- metadata ----------------------------------------------------------------

    @property
    def new(self) -> bool:
        """True when no stored session was loaded for this request."""
        return self._record is None

    @property
    def id(self) -> str | None:
        """The session's public ID: safe to log and show, never usable as a cookie.
        ``None`` until the session is first stored."""
        return None if self._record is None else self._record.session_id

    @property
    def created_at(self) -> datetime | None:
        return None if self._record is None else _utc(self._record.created_at)

    @property
    def last_seen(self) -> datetime | None:
        """When the session's expiry was last extended (refreshes are throttled)."""
        return None if self._record is None else _utc(self._record.last_seen)

    @property
    def expires_at(self) -> datetime | None:
        """When the session ends without further activity: the earlier of the idle
        and absolute deadlines, as this response leaves it (a change or a due
        refresh restarts the idle clock from this request)."""
        record, policy, now = self._record, self._policy, self._loaded_at
        if record is None or policy is None:
            return None
        if now is not None and (self.modified or policy.refresh_due(record, now)):
            return _utc(policy.deadline(record, last_seen=now))
        return _utc(policy.deadline(record))

    @property
    def absolute_expires_at(self) -> datetime | None:
        """The hard end of the session, which activity never moves."""
        if self._record is None or self._policy is None:
            return None
        return _utc(self._policy.absolute_deadline(self._record))

    @property
    def is_browser_session(self) -> bool:
        """Whether the cookie has no Max-Age (it ends when the browser closes)."""
        if self._expiry is not None:
            return self._expiry[2]
        return self._record is not None and self._record.browser_session

    @property
    def read_only(self) -> bool:
        """True for a request that came in on the grace alias of a just-rotated
        session: it sees the data, and nothing it changes is stored."""
        return self._record is not None and self._record.read_only

    def __repr__(self) -> str:
        return f"Session({dict.__repr__(self)})"


_new = dict.__new__


def loaded_session(
    cls: type[Session],
    data: dict[str, Any],
    record: SessionRecord,
    check: _Check | None,
    policy: ExpiryPolicy | None,
    now: float,
) -> Session:
    """``cls(data, record=..., check=..., policy=..., now=...)`` without the
    keyword-argument call (it runs on every request with a session)."""
    session: Session = _new(cls)
    dict.update(session, data)
    session._record = record
    session._loaded_at = now
    session._check = check
    session._policy = policy
    return session


def empty_session(
    check: _Check | None, policy: ExpiryPolicy | None, cls: type[Session] = Session
) -> Session:
    """A new, empty :class:`Session` (or ``cls``): what ``cls(check=..., policy=...)``
    builds, without the keyword-argument call (it runs on every anonymous request)."""
    session: Session = _new(cls)
    session._check = check
    session._policy = policy
    return session


class _Revoked:
    """Put before a session's class once it is known to be revoked: every access
    raises :class:`SessionRevoked`. Swapping the class keeps the ordinary accessors
    free of a check on every request."""

    def _revoked(self, *args: Any, **kwargs: Any) -> Any:
        raise SessionRevoked(
            "this session was ended (logged out or revoked) while the WebSocket was open"
        )

    __getitem__ = get = __contains__ = __iter__ = __len__ = _revoked
    keys = values = items = copy = _revoked
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _revoked


_revoked_classes: dict[type[Session], type[Session]] = {}


def mark_revoked(session: Session) -> None:
    """Make every further access to ``session`` raise :class:`SessionRevoked`."""
    cls = type(session)
    if issubclass(cls, _Revoked):
        return
    revoked = _revoked_classes.get(cls)
    if revoked is None:
        revoked = _revoked_classes[cls] = type(f"Revoked{cls.__name__}", (_Revoked, cls), {})
    session.__class__ = revoked
