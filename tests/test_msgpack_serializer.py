"""MsgpackSerializer: what it accepts loads back equal and of the same type; what it
refuses is refused at write time naming the key and path; any bad bytes on load
raise SerializationError and nothing else."""

from __future__ import annotations

import enum
import math
import re
import struct
import uuid
from collections import OrderedDict, UserDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import msgpack
import msgpack.fallback
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_sessions import msgpack_serializer as module
from asgi_sessions.errors import ConfigurationError, SerializationError, SessionTooLarge
from asgi_sessions.msgpack_serializer import MsgpackSerializer
from asgi_sessions.session import Session

HAS_C = msgpack.Packer.__module__ == "msgpack._cmsgpack"
IMPLS = [
    pytest.param("c", marks=pytest.mark.skipif(not HAS_C, reason="msgpack C extension missing")),
    "python",
]


@contextmanager
def using(impl: str) -> Iterator[MsgpackSerializer]:
    """A serializer on msgpack's C extension or on its pure-Python fallback."""
    if impl == "c":
        yield MsgpackSerializer()
        return
    with (
        mock.patch.object(msgpack, "Packer", msgpack.fallback.Packer),
        mock.patch.object(module, "_unpackb", msgpack.fallback.unpackb),
    ):
        yield MsgpackSerializer()


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down (``1 == 1.0 == True`` is not
    enough); a datetime must come back as the same instant in UTC."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is datetime:
        return a == b and b.tzinfo is UTC
    if type(a) is float and a == 0:
        return math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` lists, one inside the other, around ``leaf``."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
IST = timezone(timedelta(hours=5, minutes=30))

ACCEPTED = [
    None,
    True,
    False,
    0,
    -1,
    127,
    -33,
    2**32,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    math.inf,
    -math.inf,
    1e308,
    5e-324,
    "",
    "plain",
    "unicode ☃ 𝄞 ü Ωmega 日本語",
    "\x00nul",
    "x" * 70_000,
    b"",
    b"\x00\xff\xc1",
    bytes(70_000),
    [],
    {},
    [1, "two", 3.0, None, True, b"6", [7], {"eight": 8}],
    {"": 0, "ключ": {"nested": [1, {"deep": [b"x", None]}]}, "a.b": [1]},
    datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC),
    datetime(2024, 5, 17, 12, 30, 45, 999999, tzinfo=IST),
    datetime(2024, 1, 15, 9, 0, tzinfo=PARIS),
    datetime(2024, 7, 15, 9, 0, 0, 1, tzinfo=NEW_YORK),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(2106, 2, 7, 6, 28, 16, tzinfo=UTC),  # past the 32-bit timestamp form
    datetime(2514, 5, 30, 1, 53, 4, 1, tzinfo=UTC),  # past the 64-bit timestamp form
    datetime.min.replace(tzinfo=UTC),
    datetime.max.replace(tzinfo=UTC),
    datetime(1, 1, 1, 5, tzinfo=timezone(timedelta(hours=5))),
    {"when": [datetime(2000, 2, 29, tzinfo=timezone(timedelta(hours=-12)))]},
    nested(32),
    {"a": nested(31)},
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("value", ACCEPTED, ids=repr)
def test_accepted_values_round_trip(impl: str, value: Any) -> None:
    with using(impl) as serializer:
        serializer.check("k", value)
        loaded = serializer.loads_value(serializer.dumps_value("k", value))
        assert same(value, loaded), (value, loaded)
        whole = serializer.loads(serializer.dumps({"k": value, "other": 1}))
        assert same({"k": value, "other": 1}, whole)


def test_datetime_comes_back_in_utc() -> None:
    serializer = MsgpackSerializer()
    stored = datetime(2024, 5, 17, 18, 0, 0, 250, tzinfo=IST)
    loaded = serializer.loads_value(serializer.dumps_value("at", stored))
    assert loaded == stored
    assert loaded.tzinfo is UTC
    assert loaded == datetime(2024, 5, 17, 12, 30, 0, 250, tzinfo=UTC)
    # The Timestamp extension (-1), not a string.
    assert serializer.dumps_value("at", stored)[:2] == b"\xd7\xff"


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    LOW = 1


class MyStr(str):
    __slots__ = ()


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyList(list[Any]):
    pass


class MyBytes(bytes):
    pass


class MyDateTime(datetime):
    pass


class NoOffset(tzinfo):
    """A tzinfo that does not know its offset: Python treats such a datetime as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


class BrokenOffset(NoOffset):
    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return timedelta(days=2)  # Python refuses offsets of a day or more


recursive: list[Any] = []
recursive.append(recursive)

REFUSED: list[tuple[Any, str, str]] = [
    # value, path named in the message, a fragment of the reason
    ((1, 2), "k", "list"),
    ({1, 2}, "k", "set"),
    (frozenset({"a"}), "k", "set"),
    ({"a": {1: "x"}}, "k.a", "dict key 1 is not a str"),
    ({b"a": 1}, "k", "dict key b'a' is not a str"),
    ({None: 1}, "k", "not a str"),
    ([1, [2, {"x": {(1, 2): 3}}]], "k[1][1].x", "not a str"),
    (datetime(2024, 1, 1), "k", "naive"),
    ([0, datetime(2024, 1, 1)], "k[1]", "naive"),
    (datetime(2024, 1, 1, tzinfo=NoOffset()), "k", "naive"),
    ([datetime(2024, 1, 1, tzinfo=BrokenOffset())], "k[0]", "tzinfo failed (ValueError"),
    (datetime(2021, 11, 7, 1, 30, tzinfo=NEW_YORK), "k", "ambiguous"),  # repeated hour
    (datetime(2021, 3, 14, 2, 30, tzinfo=NEW_YORK), "k", "ambiguous or missing"),  # skipped
    (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), "k", "range"),
    (datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5))), "k", "range"),
    (2**64, "k", "2**64-1"),
    (-(2**63) - 1, "k", "-2**63"),
    ({"n": [10**30]}, "k.n[0]", "2**64-1"),
    (math.nan, "k", "NaN"),
    ([1.0, float("nan")], "k[1]", "NaN"),
    (object(), "k", "store None, bool"),
    (Decimal("1.5"), "k", "store None"),
    (uuid.UUID(int=1), "k", "store None"),
    (date(2024, 1, 1), "k", "store None"),
    (time(12, 0, tzinfo=UTC), "k", "store None"),
    (timedelta(seconds=5), "k", "store None"),
    (1 + 2j, "k", "store None"),
    (Color.RED, "k", "plain str"),
    (Level.LOW, "k", "plain int"),
    (MyStr("x"), "k", "plain str"),
    (MyInt(1), "k", "plain int"),
    (MyFloat(1.0), "k", "plain float"),
    (MyList(), "k", "plain list"),
    (MyBytes(b"x"), "k", "plain bytes"),
    (OrderedDict(a=1), "k", "plain dict"),
    (UserDict(a=1), "k", "store None"),
    (MyDateTime(2024, 1, 1, tzinfo=UTC), "k", "plain datetime"),
    ({"a": [Color.RED]}, "k.a[0]", "plain str"),
    (bytearray(b"x"), "k", "bytes(value)"),
    (memoryview(b"x"), "k", "bytes(value)"),
    ("\ud800", "k", "not valid UTF-8"),
    (["ok", "bad \udfff"], "k[1]", "not valid UTF-8"),
    ({"a": {"\ud800": 1}}, "k.a", "not valid UTF-8"),
    (nested(33), "k" + "[0]" * 32, "nested deeper than 32"),
    ({"a": nested(32)}, "k.a" + "[0]" * 31, "nested deeper than 32"),
    (recursive, "k" + "[0]" * 32, "nested deeper than 32"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("value", "path", "why"), REFUSED, ids=lambda v: repr(v)[:40])
def test_refused_values_name_key_and_path(impl: str, value: Any, path: str, why: str) -> None:
    with using(impl) as serializer:
        for write in (serializer.check, serializer.dumps_value):
            with pytest.raises(SerializationError) as info:
                write("k", value)
            assert info.value.key == "k"
            assert f"at {path!r}" in str(info.value)
            assert why in str(info.value)
        with pytest.raises(SerializationError) as info:
            serializer.dumps({"fine": 1, "k": value})
        assert info.value.key == "k"
        assert f"at {path!r}" in str(info.value)


@pytest.mark.parametrize("key", [1, b"k", None, ("a",), "\ud800"], ids=repr)
def test_refused_session_keys(key: Any) -> None:
    serializer = MsgpackSerializer()
    with pytest.raises(SerializationError):
        serializer.check(key, 1)
    with pytest.raises(SerializationError):
        serializer.dumps_value(key, 1)
    with pytest.raises(SerializationError):
        serializer.dumps({key: 1})


def test_session_refuses_at_assignment() -> None:
    serializer = MsgpackSerializer()
    session = Session(check=serializer.check)
    session["ok"] = {"at": datetime(2024, 1, 1, tzinfo=UTC), "raw": b"\x00"}
    with pytest.raises(SerializationError, match=r"'cart\.items'") as info:
        session["cart"] = {"items": {1, 2}}
    assert info.value.key == "cart"
    assert "cart" not in session
    # dumps takes a Session (a dict subclass) and stores a plain map.
    assert serializer.loads(serializer.dumps(session)) == {"ok": session["ok"]}


def test_dumps_rechecks_values_mutated_in_place() -> None:
    serializer = MsgpackSerializer()
    data: dict[str, list[Any]] = {"cart": [1, 2]}
    serializer.check("cart", data["cart"])
    data["cart"].append((3, 4))
    with pytest.raises(SerializationError, match=r"'cart\[2\]'"):
        serializer.dumps(data)


def test_dumps_and_loads_of_mappings() -> None:
    serializer = MsgpackSerializer()
    data = {
        "user_id": 42,
        "name": "Zoë",
        "roles": ["admin", "user"],
        "login_at": datetime(2024, 5, 17, 8, 0, tzinfo=UTC),
        "token": b"\x01\x02",
        "prefs": {"theme": "dark", "ratio": 0.75, "none": None},
    }
    raw = serializer.dumps(data)
    assert raw[0] == 0x86  # a fixmap of six entries
    assert same(data, serializer.loads(raw))
    assert serializer.loads(serializer.dumps({})) == {}
    # A value blob and the same value inside a whole session are the same bytes.
    assert serializer.dumps_value("roles", data["roles"]) in raw


def test_size_limit_on_dumps() -> None:
    serializer = MsgpackSerializer(max_size=100)
    serializer.check("k", "x" * 90)
    with pytest.raises(SessionTooLarge) as info:
        serializer.check("k", "x" * 100)
    assert info.value.key == "k"
    with pytest.raises(SessionTooLarge):
        serializer.dumps_value("k", b"x" * 100)
    with pytest.raises(SessionTooLarge):
        serializer.dumps({"a": "x" * 60, "b": "y" * 60})
    assert len(serializer.dumps({"a": "x" * 40, "b": "y" * 40})) <= 100
    # The default is one MiB.
    default = MsgpackSerializer()
    default.check("k", b"x" * (1024 * 1024 - 5))
    with pytest.raises(SessionTooLarge):
        default.check("k", b"x" * (1024 * 1024))


def test_unpack_takes_its_limit_or_max_size() -> None:
    serializer = MsgpackSerializer(max_size=100)
    document = msgpack.packb(["x" * 150])
    with pytest.raises(SerializationError, match="over the limit of 100"):
        serializer.unpack(document)
    assert serializer.unpack(document, limit=200) == ["x" * 150]
    with pytest.raises(SerializationError, match="over the limit of 120"):
        serializer.unpack(document, limit=120)


def test_an_oversized_value_does_not_keep_a_big_packer_buffer() -> None:
    serializer = MsgpackSerializer(max_size=100)
    pack = serializer._pack
    with pytest.raises(SessionTooLarge):
        serializer.check("k", b"x" * 1_000_000)
    assert serializer._pack is not pack  # a fresh Packer, its 1 MB buffer dropped
    assert serializer.loads_value(serializer.dumps_value("k", b"ok")) == b"ok"


def test_size_limit_on_load_refuses_before_unpacking() -> None:
    big = MsgpackSerializer()
    small = MsgpackSerializer(max_size=100)
    raw = big.dumps_value("k", "x" * 200)
    whole = big.dumps({"k": "x" * 200})
    with mock.patch.object(module, "_unpackb", side_effect=AssertionError("unpacked")):
        for load in (small.loads_value, small.loads):
            with pytest.raises(SerializationError, match="over the limit") as info:
                load(raw if load == small.loads_value else whole)
            assert info.value.__cause__ is None


@pytest.mark.parametrize(
    "kwargs",
    [{"max_depth": 0}, {"max_depth": 513}, {"max_depth": 1.5}, {"max_size": 0}, {"max_size": "1"}],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        MsgpackSerializer(**kwargs)


def test_custom_depth_limit() -> None:
    serializer = MsgpackSerializer(max_depth=2)
    serializer.check("k", [[1]])
    with pytest.raises(SerializationError, match="nested deeper than 2"):
        serializer.check("k", [[[1]]])
    with pytest.raises(SerializationError, match="nested deeper than 2"):
        serializer.loads_value(MsgpackSerializer().dumps_value("k", [[[1]]]))


# -- hostile and broken bytes ------------------------------------------------------

TS96 = b"\xc7\x0c\xff"

# name: (bytes, exception msgpack 1.2 raises with the C extension, with the fallback)
# ``None``: msgpack accepts the bytes and our own validation refuses the result.
MALFORMED: dict[str, tuple[bytes, type[BaseException] | None, type[BaseException] | None]] = {
    "empty": (b"", ValueError, ValueError),
    "reserved byte 0xc1": (b"\xc1", msgpack.FormatError, msgpack.FormatError),
    "truncated str": (b"\xa5ab", ValueError, ValueError),
    "truncated map": (b"\x82\xa1a\x01", ValueError, ValueError),
    "truncated int64": (b"\xd3\x00\x00", ValueError, ValueError),
    "extra data": (b"\x80\x00", msgpack.ExtraData, msgpack.ExtraData),
    "str32 declaring 4 GiB": (b"\xdb\xff\xff\xff\xff", ValueError, ValueError),
    "bin32 declaring 4 GiB": (b"\xc6\xff\xff\xff\xff", ValueError, ValueError),
    "array32 declaring 4G items": (b"\xdd\xff\xff\xff\xff", ValueError, ValueError),
    "map32 declaring 4G items": (b"\xdf\xff\xff\xff\xff", ValueError, ValueError),
    "map16 over max_map_len": (b"\xde\x00\x05", ValueError, ValueError),
    "ext32 declaring 4 GiB": (b"\xc9\xff\xff\xff\xff\x01", ValueError, ValueError),
    "invalid utf-8": (b"\xa1\xff", UnicodeDecodeError, UnicodeDecodeError),
    "lone surrogate in utf-8": (b"\xa3\xed\xa0\x80", UnicodeDecodeError, UnicodeDecodeError),
    "int map key": (b"\x81\x01\x01", ValueError, ValueError),
    "nil map key": (b"\x81\xc0\x01", ValueError, ValueError),
    "array map key": (b"\x81\x90\x01", ValueError, ValueError),
    "timestamp map key": (b"\x81\xd6\xff\x00\x00\x00\x01\x01", ValueError, ValueError),
    "unknown ext type 5": (b"\xd4\x05\x00", ValueError, ValueError),
    "unknown ext type -5": (b"\xd4\xfb\x00", ValueError, ValueError),
    "timestamp of bad length": (b"\xd5\xff\x00\x00", ValueError, ValueError),
    "timestamp64 nanoseconds > 1e9": (
        b"\xd7\xff\xff\xff\xff\xff\x00\x00\x00\x05",
        ValueError,
        ValueError,
    ),
    "timestamp96 nanoseconds > 1e9": (
        TS96 + b"\xff\xff\xff\xff" + bytes(8),
        ValueError,
        ValueError,
    ),
    "timestamp96 year 33658": (TS96 + struct.pack("!Iq", 0, 10**12), OverflowError, OverflowError),
    "timestamp96 before year 1": (
        TS96 + struct.pack("!Iq", 0, -(10**12)),
        OverflowError,
        OverflowError,
    ),
    "timestamp96 2**63-1 seconds": (
        TS96 + struct.pack("!Iq", 0, 2**63 - 1),
        OverflowError,
        OverflowError,
    ),
    "100,000 nested arrays": (b"\x91" * 100_000 + b"\xc0", msgpack.StackError, msgpack.StackError),
    "100,000 nested maps": (
        b"\x81\xa1a" * 100_000 + b"\xc0",
        msgpack.StackError,
        msgpack.StackError,
    ),
    # 1000 levels: the C unpacker's stack (1024) allows it, the fallback recurses
    # into Python's recursion limit and turns RecursionError into StackError.
    "1000 nested arrays": (b"\x91" * 1000 + b"\xc0", None, msgpack.StackError),
    "33 nested arrays": (b"\x91" * 33 + b"\xc0", None, None),
    "NaN float64": (b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", None, None),
    "NaN float32": (b"\xca\x7f\xc0\x00\x00", None, None),
    "bytes map key": (b"\x81\xc4\x01a\x01", None, None),
    "nested bytes map key": (b"\x91\x81\xc4\x01a\x01", None, None),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bytes_raise_serialization_error(impl: str, name: str) -> None:
    raw, c_error, python_error = MALFORMED[name]
    expected = c_error if impl == "c" else python_error
    with using(impl) as serializer:
        with pytest.raises(SerializationError) as info:
            serializer.loads_value(raw)
        cause = info.value.__cause__
        if expected is None:
            assert cause is None, cause
            assert "stored record holds an invalid value" in str(info.value)
        else:
            assert type(cause) is expected, (type(cause), cause)
            assert "not valid msgpack" in str(info.value)
        # Inside a session map, under a key, the same.
        with pytest.raises(SerializationError):
            serializer.loads(b"\x81\xa1k" + raw)


@pytest.mark.parametrize(
    "error",
    [
        msgpack.OutOfData(),
        msgpack.BufferFull(),
        RecursionError(),
        TypeError("x"),
        KeyError("x"),
        RuntimeError("x"),
        OverflowError("x"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_msgpack_does_not_raise_today_are_caught_too(error: Exception) -> None:
    # unpackb turns OutOfData into ValueError and RecursionError into StackError,
    # and BufferFull belongs to the streaming Unpacker; msgpack documents that
    # "other exceptions can be raised", so whatever it raises is caught.
    with (
        mock.patch.object(module, "_unpackb", side_effect=error),
        pytest.raises(SerializationError) as info,
    ):
        MsgpackSerializer().loads(b"\x80")
    assert info.value.__cause__ is error


def test_memory_error_is_not_disguised() -> None:
    with (
        mock.patch.object(module, "_unpackb", side_effect=MemoryError),
        pytest.raises(MemoryError),
    ):
        MsgpackSerializer().loads(b"\x80")


def test_not_bytes_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError) as info:
        MsgpackSerializer().loads_value("text")  # type: ignore[arg-type]
    assert type(info.value.__cause__) is TypeError


def test_every_truncation_of_a_record_is_refused() -> None:
    serializer = MsgpackSerializer()
    raw = serializer.dumps(
        {"a": [1, 2.5, "x" * 40, b"\x00" * 300], "b": {"c": datetime(2024, 1, 1, tzinfo=IST)}}
    )
    for end in range(len(raw)):
        with pytest.raises(SerializationError):
            serializer.loads(raw[:end])
    with pytest.raises(SerializationError) as info:
        serializer.loads(raw + b"\xc0")
    assert type(info.value.__cause__) is msgpack.ExtraData


def test_depth_limit_on_load() -> None:
    serializer = MsgpackSerializer()
    ok = serializer.dumps_value("k", nested(32))
    assert serializer.loads_value(ok) == nested(32)
    # One more level: msgpack returns it, the (iterative) depth check refuses it.
    with pytest.raises(SerializationError, match="nested deeper than 32") as info:
        serializer.loads_value(b"\x91" + ok)
    assert info.value.__cause__ is None
    # In a session map, the map itself does not count: its values are at depth 0.
    assert serializer.loads(b"\x81\xa1k" + ok) == {"k": nested(32)}
    with pytest.raises(SerializationError, match="nested deeper than 32"):
        serializer.loads(b"\x81\xa1k\x91" + ok)


@pytest.mark.parametrize(
    "raw",
    [b"\xc0", b"\x01", b"\xa1k", b"\x91\x80", b"\xc4\x00", b"\xd6\xff\x00\x00\x00\x01"],
    ids=["nil", "int", "str", "array", "bin", "timestamp"],
)
def test_loads_wants_a_map(raw: bytes) -> None:
    serializer = MsgpackSerializer()
    serializer.loads_value(raw)  # a fine value
    with pytest.raises(SerializationError, match="not a map"):
        serializer.loads(raw)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b"\x81\xc4\x01k\x01", "top level"),
        (b"\x81\xa1k\x81\xc4\x01a\x01", "k"),
        (b"\x81\xa1k\x91\x81\xc4\x01a\x01", "k[0]"),
    ],
)
def test_loads_refuses_non_str_keys(raw: bytes, where: str) -> None:
    with pytest.raises(SerializationError, match=re.escape(f"at '{where}'") + ".*not a str"):
        MsgpackSerializer().loads(raw)


# -- properties --------------------------------------------------------------------

FIXED_ZONES = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)


def _unambiguous(value: datetime) -> bool:
    return value.utcoffset() == value.replace(fold=1 - value.fold).utcoffset()


AWARE_DATETIMES = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(
        min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=FIXED_ZONES
    ),
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from([PARIS, NEW_YORK, ZoneInfo("Australia/Lord_Howe")]),
    ).filter(_unambiguous),
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    AWARE_DATETIMES,
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(key=st.text(), value=VALUES)
def test_property_accepted_values_round_trip(key: str, value: Any) -> None:
    serializer = MsgpackSerializer()
    loaded = serializer.loads_value(serializer.dumps_value(key, value))
    assert same(value, loaded)
    assert loaded == value
    assert same({key: value}, serializer.loads(serializer.dumps({key: value})))


ANYTHING = st.recursive(
    st.one_of(
        LEAVES,
        st.floats(),
        st.integers(),
        st.datetimes(timezones=st.none() | st.timezones() | FIXED_ZONES),
        st.tuples(st.integers()),
        st.frozensets(st.integers(), max_size=2),
        st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010)),
        st.just(bytearray(b"x")),
        st.just(Color.RED),
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text() | st.integers() | st.binary(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=ANYTHING)
def test_property_refused_or_round_trips(value: Any) -> None:
    serializer = MsgpackSerializer()
    try:
        raw = serializer.dumps_value("k", value)
    except SerializationError as exc:
        refused: SerializationError | None = exc
    else:
        refused = None
        assert same(value, serializer.loads_value(raw))
    if refused is not None:
        assert refused.key == "k"
        with pytest.raises(SerializationError):
            serializer.check("k", value)


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    index = data.draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))
    if action == "truncate":
        return raw[:index]
    if action == "delete":
        return raw[:index] + raw[index + 1 :]
    byte = bytes([data.draw(st.integers(0, 255))])
    if action == "insert":
        return raw[:index] + byte + raw[index:]
    return raw[:index] + byte + raw[index + 1 :]


def _loads_or_refuses(serializer: MsgpackSerializer, raw: bytes) -> None:
    """Loading raises SerializationError or returns a value that can be stored again."""
    try:
        value = serializer.loads_value(raw)
    except SerializationError:
        pass
    else:
        assert same(value, serializer.loads_value(serializer.dumps_value("k", value)))
    try:
        data = serializer.loads(raw)
    except SerializationError:
        pass
    else:
        assert type(data) is dict
        assert all(type(key) is str for key in data)
        assert same(data, serializer.loads(serializer.dumps(data)))


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=64))
def test_property_arbitrary_bytes(impl: str, raw: bytes) -> None:
    with using(impl) as serializer:
        _loads_or_refuses(serializer, raw)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=500, deadline=None)
@given(value=VALUES, data=st.data())
def test_property_mutated_records(impl: str, value: Any, data: st.DataObject) -> None:
    with using(impl) as serializer:
        raw = serializer.dumps({"k": value})
        for _ in range(data.draw(st.integers(1, 3))):
            raw = _mutate(raw, data)
        _loads_or_refuses(serializer, raw)
