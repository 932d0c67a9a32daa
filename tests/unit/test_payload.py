"""The bounds every item passes (retllm.payload): each edge just inside is accepted, just outside refused
with one line that names the problem and where it is."""

from __future__ import annotations

from typing import Any

import pytest

from retllm.errors import BadItemError, FilterError
from retllm.index.base import check_collection_name, field_path
from retllm.payload import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_KEY_CHARS,
    MAX_KEYS,
    MAX_PAYLOAD_BYTES,
    MAX_TEXT_CHARS,
    check_payload,
)
from retllm.types import Item, Query


def nest(n: int, leaf: Any = 1) -> Any:
    """A value nested ``n`` objects deep (``nest(1) == {"a": 1}``), built without recursion."""
    v = leaf
    for _ in range(n):
        v = {"a": v}
    return v


OK: list[dict[str, Any]] = [
    nest(MAX_DEPTH),
    {"k": [[[1]]]},
    {"i": 2**63 - 1, "j": -(2**63), "f": 1.5e308, "b": True, "n": None, "s": "é ✓ 😀"},
    {"k" * MAX_KEY_CHARS: 1},
    {f"k{i}": i for i in range(MAX_KEYS)},
    {"s": "x" * (MAX_PAYLOAD_BYTES - len('{"s":""}'))},
    {"my key": 1, "a.b": 2, "../text": 3},  # any key is stored; only filters restrict the names they reach
]

BAD: list[tuple[dict[str, Any], str]] = [
    (nest(MAX_DEPTH + 1), f"nested more than {MAX_DEPTH} levels deep (at payload.a.a"),
    (nest(121), "nested more than"),  # the depth that made a collection unopenable after a restart
    (nest(100_000), "nested more than"),  # no recursion: refused as fast as the shallow one
    ({"l": nest(MAX_DEPTH, [1])}, "nested more than"),  # lists count as levels too
    ({"i": 2**63}, "does not fit in 64 bits"),
    ({"i": -(2**63) - 1}, "does not fit in 64 bits"),
    ({"i": 10**5000}, "does not fit in 64 bits"),
    ({"f": float("nan")}, "nan at payload.f is not a JSON number"),
    ({"f": float("-inf")}, "is not a JSON number"),
    ({"s": "\ud800"}, "payload value at payload.s is not valid Unicode"),
    ({"\udcff": 1}, "key at payload is not valid Unicode"),
    ({"s": "a\x00b"}, "NUL"),
    ({"k" * (MAX_KEY_CHARS + 1): 1}, f"key of {MAX_KEY_CHARS + 1} characters"),
    ({f"k{i}": i for i in range(MAX_KEYS + 1)}, f"more than {MAX_KEYS:,} keys"),
    ({"s": "x" * MAX_PAYLOAD_BYTES}, f"bytes as JSON; at most {MAX_PAYLOAD_BYTES:,}"),
    ({"b": b"bytes"}, "bytes at payload.b is not a JSON value"),
    ({"a": {1: "x"}}, "keys must be strings, got int at payload.a"),
]


@pytest.mark.parametrize("payload", OK, ids=range(len(OK)))
def test_payloads_inside_the_bounds_are_kept(payload: dict[str, Any]) -> None:
    assert Item(text="t", payload=payload).payload == payload


@pytest.mark.parametrize(("payload", "message"), BAD, ids=range(len(BAD)))
def test_payloads_outside_the_bounds_are_refused_with_one_line(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(BadItemError, match="^payload") as e:
        Item(text="t", payload=payload)
    assert message in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "a\ud800b"}, "text is not valid Unicode (a lone surrogate at character 1)"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, f"text has {MAX_TEXT_CHARS + 1:,} characters"),
        ({"text": "t", "id": "x" * (MAX_ID_CHARS + 1)}, f"id has {MAX_ID_CHARS + 1:,} characters"),
        ({"text": "t", "id": "\udc80"}, "id is not valid Unicode"),
        ({"image": "/tmp/\udcff.png"}, "image is not valid Unicode"),
    ],
)
def test_ids_texts_and_image_references_the_store_cannot_hold_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BadItemError) as e:
        Item(**fields)
    assert message in str(e.value)
    Item(**{**fields, **{k: "ok" for k in fields if k != "id" or fields[k] != "t"}})  # the same fields, clean


def test_a_query_text_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(BadItemError, match="query text is not valid Unicode"):
        Query(text="red \ud83d car")
    assert Query(text="red 🚗 car").text == "red 🚗 car"


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "\nabc", "a/b", "..", ".hidden", "a" * 65, "", "ab c"])
def test_collection_names_are_matched_whole(name: str) -> None:
    from retllm.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid collection name"):
        check_collection_name(name)


def test_filter_keys_become_quoted_paths_inside_meta() -> None:
    assert field_path("color") == 'meta."color"'
    assert field_path("a.b") == 'meta."a"."b"'
    assert field_path("my key") == 'meta."my key"'
    for bad in ["../text", ".x", "x.", "a..b", "", 'a"b', "a\\b", "a\nb", "k" * 257, "a\udcff"]:
        with pytest.raises(FilterError, match="filter key"):
            field_path(bad)


def test_a_filter_value_the_store_cannot_take_is_refused_not_a_500() -> None:
    from retllm.index.base import filter_alternatives

    for value in ("\ud800", ["ok", "x\udcff"]):
        with pytest.raises(FilterError, match="is not valid Unicode"):
            filter_alternatives(value)
    assert filter_alternatives("7") == ["7", 7]


def test_a_payload_of_millions_of_values_is_refused_before_it_is_walked() -> None:
    """Each list element used to get a tuple and a path string before the size check: a 32 MiB body of zeros
    held the worker for seconds and hundreds of MiB. Now the count of values refuses it before any is read."""

    class Unwalkable(list):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("walked")

    with pytest.raises(BadItemError, match="is over 65,536 bytes as JSON"):
        check_payload({"a": Unwalkable([0] * 3_000_000)})
    check_payload({"a": [0] * 32_000})  # 64,000 bytes as JSON: inside
