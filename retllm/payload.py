"""What an item may carry: the bounds every face's items pass before anything reaches the store.

One rule, one place: :class:`retllm.types.Item` checks its id, text and payload here, and the index
checks every record again before it writes (:func:`check_record_payload`), so a bad value is refused
with one line naming it and never reaches the write-ahead log.

Why these bounds: the embedded store (qdrant-edge) accepts a payload nested about 123 levels deep
but cannot read its own write-ahead log back (serde's recursion limit of 128), so one such item made
a whole collection unopenable (docs/reliability.md). Payloads are metadata to filter on; long content
belongs in ``text`` (itself bounded, since it is embedded and shown to the MLLM).
"""

from __future__ import annotations

import json
import math
from typing import Any

from retllm.errors import BadItemError

MAX_DEPTH = 16
"""Most nested objects/lists in a payload (``{"a": 1}`` is 1 level)."""
MAX_PAYLOAD_BYTES = 64 * 1024
"""Largest payload, as compact UTF-8 JSON."""
MAX_KEYS = 1_000
"""Most object keys in a payload, counted at every level."""
MAX_KEY_CHARS = 256
"""Longest key."""
MAX_TEXT_CHARS = 100_000
"""Longest item text (the embedder reads its first tokens; the MLLM reads it whole)."""
MAX_ID_CHARS = 512
"""Longest item id."""
INT64 = (-(2**63), 2**63 - 1)
"""Integers the store keeps exactly (larger ones it silently changes)."""


def _shown(path: str) -> str:
    return path if len(path) <= 80 else f"{path[:77]}..."


def check_string(value: str, what: str) -> None:
    """Refuse a string the store cannot hold: a lone surrogate (not UTF-8) or a NUL character.

    Raises:
        BadItemError: naming ``what`` and the position.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadItemError(f"{what} is not valid Unicode (a lone surrogate at character {e.start})") from None
    if "\x00" in value:
        raise BadItemError(f"{what} contains a NUL character (at character {value.index(chr(0))})")


def check_text(text: str, what: str = "text", *, limit: int = MAX_TEXT_CHARS) -> None:
    """Refuse text over ``limit`` characters or that the store cannot hold (see :func:`check_string`)."""
    if len(text) > limit:
        raise BadItemError(f"{what} has {len(text):,} characters; at most {limit:,}")
    check_string(text, what)


def check_payload(
    payload: Any,
    what: str = "payload",
    *,
    max_depth: int = MAX_DEPTH,
    max_bytes: int | None = MAX_PAYLOAD_BYTES,
    max_keys: int | None = MAX_KEYS,
    max_key_chars: int | None = MAX_KEY_CHARS,
) -> None:
    """Refuse a payload outside the bounds (defaults: the module's): not a JSON object of JSON values,
    too deep, too big, too many or too long keys, an integer outside 64 bits, a NaN or infinity, a
    string the store cannot hold. Iterative: a payload nested 100,000 levels deep costs no recursion.

    Raises:
        BadItemError: one line naming the first problem and where it is (``payload.a.b[2]``).
    """
    if not isinstance(payload, dict):
        raise BadItemError(f"{what} must be a JSON object, not {type(payload).__name__}")
    keys = chars = 0
    # a path is built only for the message: (parent, part) links, so a list of millions costs no strings
    stack: list[tuple[Any, Any, int]] = [(payload, (None, what), 1)]

    def at(node: Any) -> str:
        parts = []
        while node is not None:
            node, part = node
            parts.append(part)
        return _shown("".join(reversed(parts)))

    values = 1  # every value found so far: a container's are counted before they are walked
    while stack:
        value, path, depth = stack.pop()
        values += len(value) if isinstance(value, dict | list | tuple) else 0
        if max_bytes is not None and (2 * values > max_bytes + 2 or chars > max_bytes):
            raise BadItemError(f"{what} is over {max_bytes:,} bytes as JSON")  # refused before it is all walked
        if isinstance(value, dict | list | tuple) and depth > max_depth:
            raise BadItemError(f"{what} is nested more than {max_depth} levels deep (at {at(path)})")
        if isinstance(value, dict):
            keys += len(value)
            if max_keys is not None and keys > max_keys:
                raise BadItemError(f"{what} has more than {max_keys:,} keys (counted at every level)")
            for k, v in value.items():
                if not isinstance(k, str):
                    raise BadItemError(f"{what} keys must be strings, got {type(k).__name__} at {at(path)}")
                if max_key_chars is not None and len(k) > max_key_chars:
                    raise BadItemError(f"{what} key of {len(k):,} characters at {at(path)}; at most {max_key_chars}")
                check_string(k, f"{what} key at {at(path)}")
                chars += len(k)
                stack.append((v, (path, f".{k}"), depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((v, (path, f"[{i}]"), depth + 1) for i, v in enumerate(value))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not INT64[0] <= value <= INT64[1]:
                raise BadItemError(f"{what}: the integer at {at(path)} does not fit in 64 bits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise BadItemError(f"{what}: {value} at {at(path)} is not a JSON number")
        elif isinstance(value, str):
            check_string(value, f"{what} value at {at(path)}")
            chars += len(value)
        else:
            raise BadItemError(f"{what}: {type(value).__name__} at {at(path)} is not a JSON value")
    if max_bytes is None:
        return
    size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > max_bytes:
        raise BadItemError(f"{what} is {size:,} bytes as JSON; at most {max_bytes:,}")


STORE_MAX_DEPTH = 100
"""Nesting the index lets through to the store: a margin under the ~123 levels its log cannot read back, and
above :data:`MAX_DEPTH`, so items stored under looser bounds are still written and repaired as they are."""


def check_stored(payload: dict[str, Any]) -> None:
    """A whole stored payload within what the store itself can write and read back: nesting, JSON values,
    64-bit integers, UTF-8 strings. The size and key bounds are the item's (:func:`check_payload`), not
    the store's, so what an item passed is never refused here.

    Raises:
        BadItemError: the first problem.
    """
    check_payload(
        payload, "stored payload", max_depth=STORE_MAX_DEPTH, max_bytes=None, max_keys=None, max_key_chars=None
    )


def check_record_payload(item_id: str, payload: dict[str, Any]) -> None:
    """The index's own check before it writes (:func:`check_stored`), so no writer (ingest, eval, migration,
    a caller of ``Index.upsert``) can store what the engine cannot read back. Raises :class:`BadItemError`
    naming the item."""
    try:
        check_stored(payload)
    except BadItemError as e:
        raise BadItemError(f"item {item_id!r}: {e}") from None
