"""MessagePack serialization for the server-side backends (needs the ``redis`` extra).

The Redis backend stores each session key's value as its own msgpack blob in a
hash field, so besides the :class:`~asgi_sessions.serializers.Serializer` methods
this serializer has per-value ones: :meth:`MsgpackSerializer.dumps_value` and
:meth:`MsgpackSerializer.loads_value`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timezone
from typing import Any, NoReturn

import msgpack

from asgi_sessions.errors import ConfigurationError, SerializationError, SessionTooLarge
from asgi_sessions.serializers import _encodable

__all__ = ["MsgpackSerializer"]

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_SIZE = 1024 * 1024
# The C unpacker refuses nesting beyond 1024 levels (StackError) and the C packer
# beyond 1024; a limit above that could never be reached, so it is a mistake.
_MAX_MAX_DEPTH = 512

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

# Values that need no look inside: exact types only, so ``StrEnum``/``IntEnum``
# members and other subclasses fall through to the refusal below.
_LEAVES = frozenset({type(None), bool, str, bytes})
_HINTS: dict[type, str] = {
    tuple: "msgpack loads it back as a list; store a list",
    set: "msgpack has no set; store a sorted list",
    frozenset: "msgpack has no set; store a sorted list",
    bytearray: "it loads back as bytes; store bytes(value)",
    memoryview: "it loads back as bytes; store bytes(value)",
}

_unpackb = msgpack.unpackb
# A location inside a session: the session key, then list indices and dict keys.
_Path = tuple[str | int, ...]


def _unknown_ext(code: int, data: bytes) -> NoReturn:
    # Called by the unpacker for every ext type other than the timestamp (-1).
    raise ValueError(f"unknown msgpack extension type {code}")


def _format_path(path: _Path) -> str:
    # The first element is the session key; list indices are ints and dict keys
    # are strs (checked before a dict is descended into), so the form is unambiguous.
    head = str(path[0]) if path else ""
    return head + "".join(f"[{part}]" if type(part) is int else f".{part}" for part in path[1:])


def _describe(path: _Path, value: Any, why: str) -> str:
    return (
        f"session value at {_format_path(path)!r} ({type(value).__name__}) cannot be stored: {why}"
    )


def _leaf_problem(value: Any, kind: type) -> str | None:
    """Why a value that is not a list, dict or one of ``_LEAVES`` cannot be
    stored, or ``None`` when it can."""
    if kind is int:
        if _INT_MIN <= value <= _INT_MAX:
            return None
        return "msgpack integers must be between -2**63 and 2**64-1"
    if kind is float:
        # NaN round-trips as a float but never compares equal; infinities are fine.
        return None if value == value else "NaN never loads back equal to itself"
    if kind is datetime:
        return _datetime_problem(value)
    hint = _HINTS.get(kind)
    if hint is None:
        if issubclass(kind, str | bytes | int | float | list | dict | datetime):
            hint = f"subclasses are not kept; store a plain {_base_name(kind)}"
        else:
            hint = "store None, bool, int, float, str, bytes, list, dict or an aware datetime"
    return f"msgpack would not load it back ({hint})"


def _base_name(kind: type) -> str:
    for base in (bool, str, bytes, int, float, list, dict, datetime):
        if issubclass(kind, base):
            return base.__name__
    return kind.__name__  # pragma: no cover - callers only pass such subclasses


def _datetime_problem(value: datetime) -> str | None:
    tz = value.tzinfo
    if tz is UTC:
        return None
    try:
        offset = value.utcoffset()
        if offset is None:
            return "naive datetimes are refused; add tzinfo=UTC"
        if type(tz) is not timezone and offset != value.replace(fold=1 - value.fold).utcoffset():
            # A local time that is repeated or skipped (a DST change): Python never
            # compares it equal to the same instant in another zone.
            return "an ambiguous or missing local time; convert it with .astimezone(UTC)"
    except Exception as exc:  # a broken tzinfo
        return f"its tzinfo failed ({type(exc).__name__}: {exc})"
    if value.year in (1, 9999):
        try:
            value.astimezone(UTC)
        except OverflowError:
            return "the instant is outside the range of UTC datetimes"
    return None


def _find_problem(
    root: list[Any] | dict[str, Any], depth: int, path: _Path, max_depth: int
) -> tuple[_Path, Any, str] | None:
    """Walk the container ``root`` (at ``depth``, reached by ``path``) without
    recursion; return ``(path, value, why)`` for the first value that cannot be
    stored, or ``None``.

    Lists and dicts at depth ``max_depth`` or more are refused, so a session value
    nests at most ``max_depth`` containers deep; this also bounds the walk of a
    value that contains itself.
    """
    stack: list[tuple[Any, int, _Path]] = [(root, depth, path)]
    pop, push, leaves = stack.pop, stack.append, _LEAVES
    while stack:
        container, depth, path = pop()
        child_depth = depth + 1
        items: Any
        if type(container) is list:
            items = enumerate(container)
        else:
            items = container.items()
            for key in container:
                if type(key) is not str:
                    return path, container, f"dict key {key!r} is not a str"
        for key, value in items:
            kind = type(value)
            if kind in leaves:
                continue
            if kind is list or kind is dict:
                if child_depth >= max_depth:
                    return (*path, key), value, f"nested deeper than {max_depth}"
                push((value, child_depth, (*path, key)))
                continue
            why = _leaf_problem(value, kind)
            if why is not None:
                return (*path, key), value, why
    return None


def _value_problem(key: str, value: Any, max_depth: int) -> tuple[_Path, Any, str] | None:
    """The first part of the session value ``value`` under ``key`` that cannot be
    stored (see :func:`_find_problem`), or ``None``."""
    kind = type(value)
    if kind in _LEAVES:
        return None
    if kind is list or kind is dict:
        return _find_problem(value, 0, (key,), max_depth)
    why = _leaf_problem(value, kind)
    return None if why is None else ((key,), value, why)


def _find_unencodable(key: str, value: Any) -> _Path | None:
    """The path of a str (or dict key) in an already checked value that is not
    valid UTF-8 (a lone surrogate), or ``None``. Only runs after packing failed."""
    stack: list[tuple[Any, _Path]] = [(value, (key,))]
    while stack:
        item, path = stack.pop()
        if type(item) is str:
            if not _encodable(item):
                return path
        elif type(item) is list:
            stack.extend((sub, (*path, index)) for index, sub in enumerate(item))
        elif type(item) is dict:
            for sub_key, sub in item.items():
                if not _encodable(sub_key):
                    return path
                stack.append((sub, (*path, sub_key)))
    return None


def _new_packer() -> Any:
    # strict_types: exact types only, tuples are not lists; with no ``default``
    # anything else raises, a second line behind the walk.
    return msgpack.Packer(use_bin_type=True, datetime=True, strict_types=True).pack


class MsgpackSerializer:
    """MessagePack, strict: every value it accepts loads back equal and of the
    same type, and it refuses everything else when the value is written.

    Accepted, as exact types (no subclasses: ``StrEnum``, ``IntEnum``, ...):
    ``None``, ``bool``, ``int`` in [-2**63, 2**64-1], ``float`` (not NaN;
    infinities are fine), ``str``, ``bytes``, ``list``, ``dict`` with ``str``
    keys, and aware ``datetime``. Lists and dicts nest at most ``max_depth``
    deep.

    An aware ``datetime`` is stored as the msgpack Timestamp extension (type -1)
    and **loads back in UTC**: the same instant, so it compares equal, but its
    ``tzinfo`` is ``datetime.UTC``, not the zone it was stored with. A local time
    that a DST change makes ambiguous or non-existent is refused (Python never
    compares it equal to the same instant in another zone), as are naive
    datetimes.

    Refused with :class:`SerializationError` naming the key and the path inside
    the value: tuples (they load back as lists), sets, ``bytearray`` and
    ``memoryview`` (they load back as ``bytes``), non-``str`` dict keys, naive
    datetimes, out-of-range integers, NaN, strings with lone surrogates, any other
    object. A value or a whole session that packs to more than ``max_size`` bytes
    raises :class:`SessionTooLarge`.

    :meth:`check` packs the value (it is :meth:`dumps_value` without the result),
    so what it accepts is exactly what can be stored. :meth:`loads` and
    :meth:`loads_value` accept exactly what the dump methods produce: any other
    bytes (over ``max_size``, malformed, truncated, trailing data, too deep,
    unknown extension types, non-``str`` keys, NaN) raise
    :class:`SerializationError` and nothing else. Declared lengths in a record
    can never exceed its size (msgpack bounds them by ``len(raw)``, the
    equivalent of ``max_buffer_size``), so a hostile length does not allocate.

    One instance reuses a single msgpack ``Packer``, which is not thread-safe:
    share an instance between the tasks of one event loop (the usual ASGI app),
    not between threads.
    """

    __slots__ = ("_pack", "max_depth", "max_size")

    def __init__(self, *, max_depth: int = DEFAULT_MAX_DEPTH, max_size: int = DEFAULT_MAX_SIZE):
        if type(max_depth) is not int or not 1 <= max_depth <= _MAX_MAX_DEPTH:
            raise ConfigurationError(
                f"max_depth must be an int between 1 and {_MAX_MAX_DEPTH}, got {max_depth!r}"
            )
        if type(max_size) is not int or max_size < 1:
            raise ConfigurationError(f"max_size must be a positive int, got {max_size!r}")
        self.max_depth = max_depth
        self.max_size = max_size
        self._pack = _new_packer()

    # -- writing -------------------------------------------------------------------

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`SerializationError` naming ``key`` (and the path inside
        ``value``) when ``value`` cannot be stored and loaded back equal, or
        :class:`SessionTooLarge` when it packs to more than ``max_size`` bytes."""
        self.dumps_value(key, value)

    def dumps_value(self, key: str, value: Any) -> bytes:
        """The msgpack bytes of one session value; raises like :meth:`check`."""
        if type(key) is not str or not _encodable(key):
            self._bad_key(key)
        if type(value) not in _LEAVES:
            problem = _value_problem(key, value, self.max_depth)
            if problem is not None:
                path, bad, why = problem
                raise SerializationError(_describe(path, bad, why), key=key)
        try:
            raw: bytes = self._pack(value)
        except Exception as exc:
            raise self._pack_failure(key, value, exc) from exc
        if len(raw) > self.max_size:
            self._pack = _new_packer()  # the C packer's buffer never shrinks
            raise SessionTooLarge(
                f"session value at {key!r} packs to {len(raw)} bytes, over the limit of "
                f"{self.max_size}",
                key=key,
            )
        return raw

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        """The msgpack map of a whole session.

        Every value is checked again (a nested list or dict may have been mutated in
        place since it was set), so nothing unloadable is ever stored.
        """
        plain: dict[str, Any] = {}
        max_depth = self.max_depth
        for key, value in data.items():
            if type(key) is not str or not _encodable(key):
                self._bad_key(key)
            if type(value) not in _LEAVES:
                problem = _value_problem(key, value, max_depth)
                if problem is not None:
                    path, bad, why = problem
                    raise SerializationError(_describe(path, bad, why), key=key)
            plain[key] = value
        try:
            raw: bytes = self._pack(plain)
        except Exception as exc:
            for key, value in plain.items():
                self.dumps_value(key, value)  # names the failing key
            raise SerializationError(f"session cannot be packed: {exc}") from exc
        if len(raw) > self.max_size:
            self._pack = _new_packer()  # the C packer's buffer never shrinks
            raise SessionTooLarge(
                f"serialized session is {len(raw)} bytes, over the limit of {self.max_size}"
            )
        return raw

    @staticmethod
    def _bad_key(key: Any) -> NoReturn:
        if type(key) is str:
            raise SerializationError(
                f"session key {key!r} is not valid UTF-8 (lone surrogate)", key=None
            )
        raise SerializationError(f"session keys must be str, got {type(key).__name__}", key=None)

    @staticmethod
    def _pack_failure(key: str, value: Any, exc: Exception) -> SerializationError:
        # The walk passed, so this is a str that UTF-8 cannot encode (or a value
        # changed under us); name the path when it can be found.
        path = _find_unencodable(key, value)
        if path is not None:
            return SerializationError(
                f"session value at {_format_path(path)!r} cannot be stored: a str in it is "
                "not valid UTF-8 (lone surrogate)",
                key=key,
            )
        return SerializationError(
            f"session value at {key!r} ({type(value).__name__}) cannot be stored: {exc}", key=key
        )

    # -- reading -------------------------------------------------------------------

    def unpack(self, raw: bytes, *, limit: int | None = None) -> Any:
        """Any msgpack document of at most ``limit`` bytes (default ``max_size``), with
        the timestamp extension as UTC datetimes; :class:`SerializationError` for
        anything else. The result is not checked: pass the session data in it to
        :meth:`check_loaded`. A store whose records carry metadata besides the
        session data passes a ``limit`` with room for it."""
        return self._unpack(raw, self.max_size if limit is None else limit)

    def check_loaded(self, data: Any) -> dict[str, Any]:
        """``data`` if it is a session's data as the dump methods produce it (a
        ``dict`` with ``str`` keys of storable values, at most ``max_depth``
        deep); :class:`SerializationError` otherwise."""
        if type(data) is not dict:
            raise SerializationError(f"stored record is a msgpack {type(data).__name__}, not a map")
        # The session's values sit at depth 0, like the values :meth:`check` sees.
        problem = _find_problem(data, -1, (), self.max_depth)
        if problem is not None:
            self._invalid_record(problem)
        return data

    def _unpack(self, raw: bytes, limit: int) -> Any:
        if len(raw) > limit:
            raise SerializationError(
                f"stored record of {len(raw)} bytes is over the limit of {limit}"
            )
        try:
            return _unpackb(raw, raw=False, strict_map_key=True, timestamp=3, ext_hook=_unknown_ext)
        except MemoryError:
            raise
        except Exception as exc:
            # msgpack 1.2 raises ValueError (truncated input, declared lengths over
            # len(raw), bad map keys, bad timestamps), FormatError, StackError,
            # ExtraData, UnicodeDecodeError and OverflowError (timestamps out of
            # range); its docs say others are possible, so catch them all.
            raise SerializationError(
                f"stored record is not valid msgpack ({type(exc).__name__}: {exc})"
            ) from exc

    def loads_value(self, raw: bytes) -> Any:
        """One session value from :meth:`dumps_value` bytes; any other input raises
        :class:`SerializationError`."""
        value = self._unpack(raw, self.max_size)
        if type(value) not in _LEAVES:
            problem = _value_problem("value", value, self.max_depth)
            if problem is not None:
                self._invalid_record(problem)
        return value

    def loads(self, raw: bytes) -> dict[str, Any]:
        """A whole session from :meth:`dumps` bytes: a ``dict`` with ``str`` keys;
        any other input raises :class:`SerializationError`."""
        return self.check_loaded(self._unpack(raw, self.max_size))

    @staticmethod
    def _invalid_record(problem: tuple[_Path, Any, str]) -> NoReturn:
        path, bad, why = problem
        where = _format_path(path) or "top level"
        raise SerializationError(
            f"stored record holds an invalid value at {where!r} ({type(bad).__name__}): {why}"
        )
