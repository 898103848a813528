"""Turning session data into bytes and back, with the round trip checked on write.

A serializer refuses, at the moment a value is written, anything that would not load
back equal and of the same type: the user learns about it from the line that stored
the value, not from an empty session on the next request.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import Any, Protocol

from asgi_sessions.errors import SerializationError, SessionTooLarge

__all__ = ["JSONSerializer", "Serializer"]

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_SIZE = 1024 * 1024


class Serializer(Protocol):
    """How a backend turns session data into bytes.

    ``check`` raises :class:`SerializationError` naming ``key`` when ``value`` would
    not round-trip; it is called on every write to the session. ``dumps`` may raise
    :class:`SerializationError` (for a nested value mutated in place after the check)
    or :class:`SessionTooLarge`. ``loads`` raises :class:`SerializationError` for any
    bytes that are not a valid record; it never raises anything else.
    """

    def check(self, key: str, value: Any) -> None: ...

    def dumps(self, data: Mapping[str, Any]) -> bytes: ...

    def loads(self, raw: bytes) -> dict[str, Any]: ...


def _describe(path: str, value: Any, why: str) -> str:
    return f"session value at {path!r} ({type(value).__name__}) cannot be stored: {why}"


class JSONSerializer:
    """Strict JSON: ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list``
    and ``dict`` with ``str`` keys, nested at most ``max_depth`` deep.

    Tuples, sets, bytes, datetimes and subclasses (``StrEnum``, ``IntEnum``) are
    refused because JSON would hand back something else; so are what it cannot
    encode at all: strs (values and keys) with a lone surrogate, which are not
    valid UTF-8, and ints of more digits than ``sys.get_int_max_str_digits()``.
    """

    __slots__ = ("_decoder", "_encoder", "max_depth", "max_size")

    def __init__(self, *, max_depth: int = DEFAULT_MAX_DEPTH, max_size: int = DEFAULT_MAX_SIZE):
        self.max_depth = max_depth
        self.max_size = max_size
        self._encoder = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=True
        )
        self._decoder = json.JSONDecoder()

    def check(self, key: str, value: Any) -> None:
        if type(key) is not str:
            raise SerializationError(
                f"session keys must be str, got {type(key).__name__}", key=None
            )
        if not _encodable(key):
            raise SerializationError(
                f"session key {key!r} is not valid UTF-8 (lone surrogate)", key=None
            )
        _check_json(value, key, 0, self.max_depth)

    def dumps(self, data: Mapping[str, Any]) -> bytes:
        # Values were checked when set, but a nested list or dict can be mutated in
        # place afterwards; check again so nothing unloadable is ever stored.
        for key, value in data.items():
            self.check(key, value)
        raw = self._encoder.encode(data).encode()
        if len(raw) > self.max_size:
            raise SessionTooLarge(
                f"serialized session is {len(raw)} bytes, over the limit of {self.max_size}"
            )
        return raw

    def loads(self, raw: bytes) -> dict[str, Any]:
        if len(raw) > self.max_size:
            raise SerializationError(f"stored record of {len(raw)} bytes is over the limit")
        try:
            data = self._decoder.decode(raw.decode())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SerializationError(f"stored record is not valid JSON: {exc}") from None
        if type(data) is not dict:
            raise SerializationError("stored record is not a JSON object")
        return data


_SCALARS = frozenset({type(None), bool})
# An int of at most this many bits has fewer decimal digits than any limit
# sys.set_int_max_str_digits() accepts (0, no limit, or at least 640), so only
# longer ones are converted to find out.
_SHORT_INT_BITS = 3 * sys.int_info.str_digits_check_threshold


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _printable(value: int) -> bool:
    try:
        int.__repr__(value)  # what the encoder calls
    except ValueError:
        return False
    return True


def _check_json(value: Any, path: str, depth: int, max_depth: int) -> None:
    kind = type(value)
    if kind is str:
        if not _encodable(value):
            raise SerializationError(
                _describe(path, value, "it is not valid UTF-8 (lone surrogate)"), key=path
            )
        return
    if kind is int:
        if value.bit_length() > _SHORT_INT_BITS and not _printable(value):
            raise SerializationError(
                _describe(
                    path,
                    value,
                    f"it has more than {sys.get_int_max_str_digits()} digits "
                    "(sys.get_int_max_str_digits())",
                ),
                key=path,
            )
        return
    if kind in _SCALARS:
        return
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(
                _describe(path, value, "NaN and infinity are not JSON"), key=path
            )
        return
    if depth >= max_depth:
        raise SerializationError(
            _describe(path, value, f"nested deeper than {max_depth}"), key=path
        )
    if kind is list:
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]", depth + 1, max_depth)
        return
    if kind is dict:
        for sub_key, item in value.items():
            if type(sub_key) is not str:
                raise SerializationError(
                    _describe(path, value, f"dict key {sub_key!r} is not a str"), key=path
                )
            if not _encodable(sub_key):
                raise SerializationError(
                    _describe(path, value, f"dict key {sub_key!r} is not valid UTF-8"), key=path
                )
            _check_json(item, f"{path}.{sub_key}", depth + 1, max_depth)
        return
    hint = "use a list" if kind in (tuple, set, frozenset) else "store a JSON-compatible value"
    raise SerializationError(
        _describe(path, value, f"JSON would not load it back ({hint})"), key=path
    )
