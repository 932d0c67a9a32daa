"""What a server path is and how it is shown to a remote caller: the one rule every face applies.

A path is cut to its last part (``…/scene.png``; after an id prefix, ``hf:…/model``); a protected folder (the data
dir, the file roots, the working directory), however written, becomes ``…``. URLs are left alone: the caller's
own, or links this service made. The service applies :func:`redact_data` to every answer as it leaves.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

_SEGMENT = r"[^/\s'\"(),\[\]]+"
# Not after a word character, a dot, a slash or "]": a URL's path (an IPv6 host's too), a relative path (a/b/c,
# ./x/y) and a half-cut one (…/x/y) stay; after ':' it does match, so an id like hf:/srv/models/x is cut (a URL's
# '//' never starts one).
_PATH = re.compile(rf"(?<![\w.…/\]])(?:file://)?(?:/{_SEGMENT})+/({_SEGMENT})")
_ROOT_END = r"(?=/|$|[\s'\"),\]:])"  # a whole folder name only: /app, not /apple.png
# A path that ends a message after ": " ("file not found: /srv/My Photos/a b.png"): up to the line's end, spaces
# and all, since nothing after it can be mistaken for part of it.
_TAIL = re.compile(r"(?<=: )(?:file://)?/(?:[^\n]*/)?([^/\n]+)$", re.M)
_USER_DATA = frozenset({"text", "id", "payload"})
"""Fields of a stored item (a hit, a record): the caller's own data, returned as stored, paths and all."""
_CALLERS = frozenset({"payload", "query", "id", "ids", "missing"})
"""Fields that hold what the caller sent or stored wherever they appear (ids come back to be used again)."""

_roots: set[str] = set()
_roots_re: re.Pattern[str] | None = None
_lock = threading.Lock()


def protect(*folders: object) -> None:
    """Folders whose names never reach a caller, however they are written (relative, with spaces): the data
    dir, the file roots, the working directory. Process-wide: every app in the process adds its own."""
    global _roots_re
    with _lock:
        for f in folders:
            for form in {str(f), str(Path(str(f)).resolve())}:
                if form not in ("", ".", "/"):
                    _roots.add(form.rstrip("/"))
        longest_first = sorted(_roots, key=len, reverse=True)
        _roots_re = re.compile(f"(?:{'|'.join(map(re.escape, longest_first))}){_ROOT_END}") if _roots else None


def redact(text: str) -> str:
    """``text`` with server file paths cut to their last part and protected folders to ``…``."""
    roots = _roots_re
    if roots is not None:
        text = roots.sub("…", text)
    return _PATH.sub(r"…/\1", _TAIL.sub(r"…/\1", text))


def redact_data(data: Any) -> Any:
    """``data`` (JSON-like: dicts, lists, strings, numbers) with :func:`redact` applied to every string value.
    Keys are left as they are (field names, payload keys the caller chose), and so are a stored item's own
    text (an object with a ``coarse_score`` or a ``retllm_id``) and every ``payload``, ``query``, ``id``,
    ``ids`` and ``missing``: what the caller stored or asked comes back as it was, whatever paths it mentions."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        item = "coarse_score" in data or "retllm_id" in data
        return {k: v if (k in _CALLERS or (item and k in _USER_DATA)) else _field(k, v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v) for v in data]
    return data


def _field(key: str, value: Any) -> Any:
    if key == "image" and isinstance(value, str) and value.startswith("/"):  # a whole path, spaces and all
        return "…/" + value.rstrip("/").rsplit("/", 1)[-1]
    return redact_data(value)
