"""Session: dict semantics, change tracking and set_expiry, table style."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asgi_sessions import JSONSerializer, SerializationError, Session


def fresh() -> Session:
    return Session({"a": 1, "b": 2}, check=JSONSerializer().check)


MUTATORS: list[tuple[str, Callable[[Session], Any], set[str]]] = [
    ("setitem", lambda s: s.__setitem__("c", 3), {"c"}),
    ("delitem", lambda s: s.__delitem__("a"), {"a"}),
    ("clear", lambda s: s.clear(), {"a", "b"}),
    ("pop", lambda s: s.pop("a"), {"a"}),
    ("popitem", lambda s: s.popitem(), {"b"}),
    ("setdefault new", lambda s: s.setdefault("c", 3), {"c"}),
    ("update", lambda s: s.update({"c": 3}, d=4), {"c", "d"}),
    ("ior", lambda s: s.__ior__({"c": 3}), {"c"}),
]


@pytest.mark.parametrize(("name", "mutate", "changed"), MUTATORS, ids=[m[0] for m in MUTATORS])
def test_every_mutator_marks_modified_and_records_the_key(
    name: str, mutate: Callable[[Session], Any], changed: set[str]
) -> None:
    session = fresh()
    mutate(session)
    assert session.modified
    assert session.accessed
    assert session._changed == changed


NON_MUTATORS: list[tuple[str, Callable[[Session], Any]]] = [
    ("getitem", lambda s: s["a"]),
    ("get", lambda s: s.get("zz")),
    ("contains", lambda s: "a" in s),
    ("iter", lambda s: list(s)),
    ("len", lambda s: len(s)),
    ("keys", lambda s: s.keys()),
    ("values", lambda s: s.values()),
    ("items", lambda s: s.items()),
    ("pop missing", lambda s: s.pop("zz", None)),
    ("setdefault existing", lambda s: s.setdefault("a", 9)),
    ("copy", lambda s: s.copy()),
]


@pytest.mark.parametrize(("name", "read"), NON_MUTATORS, ids=[m[0] for m in NON_MUTATORS])
def test_reads_mark_accessed_only(name: str, read: Callable[[Session], Any]) -> None:
    session = fresh()
    read(session)
    assert session.accessed
    assert not session.modified


def test_a_new_session_is_neither_accessed_nor_modified() -> None:
    session = fresh()
    assert not session.accessed
    assert not session.modified
    assert session.new
    assert session.id is None


def test_starlette_compatibility_hooks() -> None:
    session = fresh()
    session.mark_accessed()
    assert session.accessed
    assert not session.modified
    session.mark_modified()
    assert session.modified
    assert session._replace


@pytest.mark.parametrize(
    "value",
    [(1, 2), {1, 2}, b"x", datetime.now(UTC), float("nan"), {1: "int key"}, object()],
    ids=["tuple", "set", "bytes", "datetime", "nan", "int-key", "object"],
)
def test_values_that_would_not_round_trip_are_refused_on_write(value: Any) -> None:
    session = fresh()
    with pytest.raises(SerializationError) as caught:
        session["bad"] = value
    assert "bad" in str(caught.value)
    assert "bad" not in session
    assert not session.modified


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("\ud800", r"'bad'"),
        (["ok", "x\udfff"], r"'bad\[1\]'"),
        ({"k\udcff": 1}, r"'bad'.*dict key"),
        (10**5000, r"'bad'"),
        ({"n": [-(10**5000)]}, r"'bad\.n\[0\]'"),
    ],
    ids=["lone-surrogate", "nested-surrogate", "surrogate-dict-key", "long-int", "nested-long-int"],
)
def test_values_json_cannot_encode_are_refused_on_write(value: Any, where: str) -> None:
    """A str with a lone surrogate (not encodable as UTF-8) and an int of more digits
    than sys.get_int_max_str_digits() are refused where they are set, naming the
    path, and by dumps (a value mutated in place after it was set). They passed the
    check, and the commit's encoder raised UnicodeEncodeError or ValueError out of
    the middleware: a 500."""
    session = fresh()
    with pytest.raises(SerializationError, match=where):
        session["bad"] = value
    assert "bad" not in session
    assert not session.modified
    with pytest.raises(SerializationError, match=where):
        JSONSerializer().dumps({"bad": value})


def test_a_key_json_cannot_encode_is_refused_on_write() -> None:
    with pytest.raises(SerializationError, match="not valid UTF-8"):
        fresh()["\udcff"] = 1
    with pytest.raises(SerializationError, match="not valid UTF-8"):
        JSONSerializer().dumps({"\udcff": 1})


def test_the_int_digit_limit_in_force_decides() -> None:
    """Long ints within sys.get_int_max_str_digits() are stored and load back; the
    limit is read at each check, so an app that lowers or lifts it is followed."""
    serializer = JSONSerializer()
    value = 10**4000
    assert serializer.loads(serializer.dumps({"n": value})) == {"n": value}
    before = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(640)
        with pytest.raises(SerializationError, match="640"):
            serializer.check("n", value)
        sys.set_int_max_str_digits(0)  # no limit
        serializer.check("n", 10**5000)
    finally:
        sys.set_int_max_str_digits(before)


def test_nested_values_are_checked_with_their_path() -> None:
    session = fresh()
    with pytest.raises(SerializationError, match=r"cart\[1\]"):
        session["cart"] = [1, (2, 3)]


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(SerializationError):
        fresh()[1] = "x"  # type: ignore[index]


def test_update_is_all_or_nothing() -> None:
    session = fresh()
    with pytest.raises(SerializationError):
        session.update({"ok": 1, "bad": {1, 2}})
    assert "ok" in session  # each key is checked as it is set, like repeated setitem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, (None, None, True)),
        (60, (60, None, False)),
        (timedelta(minutes=2), (120, None, False)),
        (None, (None, None, False)),
    ],
)
def test_set_expiry_forms(value: Any, expected: tuple[Any, ...]) -> None:
    session = fresh()
    session.set_expiry(value)
    assert session._expiry == expected
    assert session.modified


def test_set_expiry_datetime_is_a_fixed_deadline() -> None:
    session = fresh()
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    session.set_expiry(moment)
    assert session._expiry == (None, moment.timestamp(), False)


@pytest.mark.parametrize("bad", [-1, float("inf"), datetime(2030, 1, 1), "10", True])
def test_set_expiry_rejects_bad_values(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        fresh().set_expiry(bad)


def test_invalidate_clears_and_flags() -> None:
    session = fresh()
    session.invalidate()
    assert dict(session) == {}
    assert session._invalidated
    assert session.modified


def test_pickle_gives_plain_data() -> None:
    import copy
    import pickle

    session = fresh()
    assert pickle.loads(pickle.dumps(session)) == {"a": 1, "b": 2}
    assert copy.deepcopy(session) == {"a": 1, "b": 2}
