"""A bounded, thread-safe LRU of per-image vision-tower outputs, keyed by the image's pixels."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import torch
from PIL import Image


def image_key(im: Image.Image) -> str:
    """A key for an image's exact pixels (mode and size included)."""
    h = hashlib.sha256(f"{im.mode}{im.size}".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def nbytes(value: Any) -> int:
    """Tensor bytes held by ``value`` (tensors, nested lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


class VisionCache:
    """Bounded LRU of per-image vision outputs (``pooler_output`` rows, deepstack features).

    Bounded both by entries (``capacity``) and by tensor bytes (``max_bytes``): one large image can
    produce thousands of vision tokens, so a count alone does not bound memory. Every method takes the
    cache's lock, so one cache can serve forwards running in several threads.
    """

    def __init__(self, capacity: int = 256, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._d: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                self.hits += 1
                return self._d[key]
            self.misses += 1
            return None

    def put(self, key: str, value: Any) -> None:
        size = nbytes(value)
        with self._lock:
            if self.max_bytes is not None and size > self.max_bytes:
                return  # larger than the whole budget: not kept
            if key in self._d:
                self.bytes -= self._sizes[key]
            self._d[key] = value
            self._sizes[key] = size
            self.bytes += size
            self._d.move_to_end(key)
            while len(self._d) > self.capacity or (self.max_bytes is not None and self.bytes > self.max_bytes):
                old, _ = self._d.popitem(last=False)
                self.bytes -= self._sizes.pop(old)

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._sizes.clear()
            self.bytes = 0
