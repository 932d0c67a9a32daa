"""A collection as one request could leave it before payloads were bounded: good items, then one whose
payload is nested past what qdrant-edge reads back, written with the store's own API (not through retllm's
checks), by a separate process that closes the store or is killed before anything is flushed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import os, sys
from pathlib import Path
import numpy as np
from retllm.index.base import Record
from retllm.index.edge import EdgeIndex, _OpenShards
import qdrant_edge as q

root, name, dim, depth, kill = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
rng = np.random.default_rng(0)
index = EdgeIndex(root)
index.ensure_collection(name, dim)


def vec():
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


good = [
    Record(f"good-{i}", {"image": vec(), "text": vec()}, {"retllm_id": f"good-{i}", "text": f"item {i}",
           "image": None, "source": "test", "meta": {"n": i}})
    for i in range(4)
]
index.upsert(name, good[:2])
bad = {"a": 1}
for _ in range(depth):
    bad = {"a": bad}
shard = _OpenShards.table[index._key(name)][0]
rec = Record("bad", {"text": vec()}, {"retllm_id": "bad", "text": "x", "image": None, "source": "test",
             "meta": {"x": bad}})
shard.update(q.UpdateOperation.upsert_points([q.Point(rec.point_id, {"text": rec.vectors["text"].tolist()},
                                                      rec.payload)]))
index.upsert(name, good[2:])
index.delete(name, ["good-1"])
if kill:
    os._exit(0)
index.close()
"""


def poison(root: Path, name: str, dim: int, *, depth: int = 130, kill: bool = False) -> list[str]:
    """Build the poisoned collection ``name`` under the embedded store folder ``root``; returns the ids of the
    good items it should still hold (``good-1`` was deleted after the bad item, so a replay must honour it)."""
    args = [sys.executable, "-c", _SCRIPT, str(root), name, str(dim), str(depth), "1" if kill else "0"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return ["good-0", "good-2", "good-3"]
