"""Embedded backend: Qdrant's in-process engine (qdrant-edge), one shard folder per collection.

A shard folder can be opened once per process (its WAL is locked), so open shards live in one
process-wide table shared by every :class:`EdgeIndex` over the same folder, with a reference count;
opening, creating and dropping go through that table's lock. The shard itself serves concurrent
queries and updates from many threads.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retllm.errors import CollectionLockedError, CollectionNotFoundError, FilterError, MissingDependencyError
from retllm.index.base import (
    RRF_K,
    FilterSpec,
    Fusion,
    Index,
    Record,
    SearchResult,
    check_collection_name,
    filter_alternatives,
    group_matches,
)
from retllm.types import VECTOR_NAMES, VectorName, point_id

log = logging.getLogger(__name__)


def _edge() -> Any:
    try:
        import qdrant_edge
    except ImportError as e:
        raise MissingDependencyError("the embedded store needs qdrant-edge: pip install qdrant-edge-py") from e
    return qdrant_edge


def edge_filter(flt: FilterSpec | None) -> Any:
    """A qdrant-edge Filter for a ``key=value`` spec (see :func:`filter_alternatives`)."""
    if not flt:
        return None
    q = _edge()
    must = []
    for key, value in flt.items():
        values = filter_alternatives(value, bools=False)  # qdrant-edge matches True as 1: it has no bool match
        if any(isinstance(v, bool) for v in values):
            raise FilterError(
                f"filter {key!r}: the embedded store cannot match true/false values (qdrant-edge would match them "
                "as 1/0); store the field as a string, or use a Qdrant server (RETLLM_QDRANT_URL)"
            )
        alts = [q.FieldCondition(key=f"meta.{key}", match=m) for m in group_matches(q.MatchValue, q.MatchAny, values)]
        must.append(alts[0] if len(alts) == 1 else q.Filter(should=alts))
    return q.Filter(must=must)


class _OpenShards:
    """The process-wide table of open shards: folder -> [shard, references]."""

    lock = threading.Lock()
    table: dict[Path, list[Any]] = {}


class EdgeIndex(Index):
    """Collections as qdrant-edge shards under ``root`` (WAL on, so a killed process loses no upsert)."""

    name = "edge"

    def __init__(self, root: Path, *, fusion: Fusion = "rank") -> None:
        self.root = Path(root)
        self.fusion = fusion
        self._held: dict[Path, list[Any]] = {}  # the table entries this instance holds a reference to

    def _path(self, collection: str) -> Path:
        return self.root / check_collection_name(collection)

    def list_collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "edge_config.json").is_file())

    def exists(self, collection: str) -> bool:
        return (self._path(collection) / "edge_config.json").is_file()

    def _key(self, collection: str) -> Path:
        return self._path(collection).resolve()

    def _hold(self, key: Path, entry: list[Any]) -> Any:
        """Take this instance's reference to an open shard (caller holds the table lock). An entry held from
        before a drop and re-create by another instance is a different object: the new one is counted."""
        if self._held.get(key) is not entry:
            entry[1] += 1
            self._held[key] = entry
        return entry[0]

    def _open(self, collection: str) -> Any:
        key = self._key(collection)
        with _OpenShards.lock:
            entry = _OpenShards.table.get(key)
            if entry is not None:
                return self._hold(key, entry)
            self._held.pop(key, None)  # dropped by another instance since
            if not (key / "edge_config.json").is_file():
                existing = ", ".join(self.list_collections()) or "none"
                raise CollectionNotFoundError(f"no collection {collection!r} in {self.root}; existing: {existing}")
            try:
                shard = _edge().EdgeShard.load(str(key))
            except Exception as e:
                if "WouldBlock" in str(e) or "lock" in str(e).lower():
                    raise CollectionLockedError(
                        f"collection {collection!r} is open in another process; wait for it to finish"
                    ) from e
                raise
            entry = _OpenShards.table[key] = [shard, 0]
            return self._hold(key, entry)

    def _create(self, collection: str, dim: int) -> None:
        q = _edge()
        params = {n: q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine) for n in VECTOR_NAMES}
        key = self._key(collection)
        with _OpenShards.lock:
            if key in _OpenShards.table or (key / "edge_config.json").is_file():
                return  # created meanwhile by another thread; ensure_collection checks its size
            key.mkdir(parents=True, exist_ok=True)
            shard = q.EdgeShard.create(str(key), q.EdgeConfig(vectors=params))
            self._hold(key, _OpenShards.table.setdefault(key, [shard, 0]))

    def dim(self, collection: str) -> int:
        cfg = self._path(collection) / "edge_config.json"
        if not cfg.is_file():
            raise CollectionNotFoundError(f"no collection {collection!r} in {self.root}")
        return int(json.loads(cfg.read_text())["vectors"]["image"]["size"])

    def drop_collection(self, collection: str) -> None:
        key = self._key(collection)
        with _OpenShards.lock:
            entry = _OpenShards.table.pop(key, None)
            self._held.pop(key, None)
            if entry is not None:
                entry[0].close()
            shutil.rmtree(key, ignore_errors=True)

    def upsert(self, collection: str, records: Sequence[Record]) -> None:
        if not records:
            return
        q = _edge()
        points = [
            q.Point(r.point_id, {k: np.asarray(v, np.float32).tolist() for k, v in r.vectors.items()}, r.payload)
            for r in records
        ]
        self._open(collection).update(q.UpdateOperation.upsert_points(points))

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        present = self.existing(collection, ids)
        if present:
            q = _edge()
            self._open(collection).update(q.UpdateOperation.delete_points([point_id(i) for i in present]))
        return len(present)

    def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        recs = self._open(collection).retrieve([point_id(i) for i in ids], with_payload=True, with_vector=False)
        return {r.payload["retllm_id"] for r in recs}

    def payloads(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        recs = self._open(collection).retrieve([point_id(i) for i in ids], with_payload=True, with_vector=False)
        return {r.payload["retllm_id"]: dict(r.payload) for r in recs}

    def _search(
        self, collection: str, vector: np.ndarray, using: VectorName, limit: int, flt: FilterSpec | None
    ) -> list[SearchResult]:
        q = _edge()
        req = q.QueryRequest(
            limit=limit,
            query=q.Query.Nearest(np.asarray(vector, np.float32).tolist(), using=using),
            filter=edge_filter(flt),
            with_payload=True,
        )
        return [
            SearchResult(p.payload["retllm_id"], float(p.score), p.payload, using)
            for p in self._open(collection).query(req)
        ]

    def _search_each(
        self, collection: str, vector: np.ndarray, limit: int, flt: FilterSpec | None
    ) -> list[list[SearchResult]]:
        q = _edge()
        vec, f = np.asarray(vector, np.float32).tolist(), edge_filter(flt)
        reqs = [
            q.QueryRequest(limit=limit, query=q.Query.Nearest(vec, using=name), filter=f, with_payload=True)
            for name in VECTOR_NAMES
        ]
        out = self._open(collection).query_batch(q.QueryBatchRequest(reqs))
        return [
            [SearchResult(p.payload["retllm_id"], float(p.score), p.payload, name) for p in points]
            for name, points in zip(VECTOR_NAMES, out, strict=True)
        ]

    def _search_fused(
        self, collection: str, vector: np.ndarray, limit: int, flt: FilterSpec | None, fusion: Fusion
    ) -> list[SearchResult]:
        q = _edge()
        vec = np.asarray(vector, np.float32).tolist()
        f = edge_filter(flt)
        prefetches = [
            q.Prefetch(query=q.Query.Nearest(vec, using=name), limit=limit, filter=f) for name in VECTOR_NAMES
        ]
        method = q.Fusion.Rrf(k=RRF_K) if fusion == "rrf" else q.Fusion.Dbsf()
        req = q.QueryRequest(limit=limit, query=method, prefetches=prefetches, filter=f, with_payload=True)
        return [
            SearchResult(p.payload["retllm_id"], float(p.score), p.payload, fusion)
            for p in self._open(collection).query(req)
        ]

    def count(self, collection: str, flt: FilterSpec | None = None) -> int:
        q = _edge()
        return int(self._open(collection).count(q.CountRequest(exact=True, filter=edge_filter(flt))))

    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 256) -> Iterator[Record]:
        q = _edge()
        shard = self._open(collection)
        offset = None
        while True:
            recs, offset = shard.scroll(
                q.ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=with_vectors)
            )
            for r in recs:
                vecs = {k: np.asarray(v, np.float32) for k, v in (r.vector or {}).items()} if with_vectors else {}
                yield Record(r.payload["retllm_id"], vecs, dict(r.payload))
            if offset is None:
                return

    def optimize(self, collection: str) -> bool:
        """Build the HNSW index and merge segments (run after large ingests; queries stay exact before)."""
        self._open(collection).optimize()
        return True

    def close(self) -> None:
        """Flush and release this instance's shards; the last holder in the process closes each one."""
        with _OpenShards.lock:
            for key, held in self._held.items():
                entry = _OpenShards.table.get(key)
                if entry is None or entry is not held:  # dropped (and maybe re-created) by another instance
                    continue
                entry[0].flush()
                entry[1] -= 1
                if entry[1] <= 0:
                    del _OpenShards.table[key]
                    entry[0].close()
            self._held.clear()
