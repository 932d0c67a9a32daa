"""Embedded backend: Qdrant's in-process engine (qdrant-edge), one shard folder per collection."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retllm.errors import CollectionLockedError, CollectionNotFoundError, MissingDependencyError
from retllm.index.base import FilterSpec, Index, Record, SearchResult, check_collection_name, filter_alternatives
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
        alts = [q.FieldCondition(key=f"meta.{key}", match=q.MatchValue(v)) for v in filter_alternatives(value)]
        must.append(alts[0] if len(alts) == 1 else q.Filter(should=alts))
    return q.Filter(must=must)


class EdgeIndex(Index):
    """Collections as qdrant-edge shards under ``root`` (WAL on, so a killed process loses no upsert)."""

    name = "edge"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._shards: dict[str, Any] = {}

    def _path(self, collection: str) -> Path:
        return self.root / check_collection_name(collection)

    def list_collections(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "edge_config.json").is_file())

    def exists(self, collection: str) -> bool:
        return (self._path(collection) / "edge_config.json").is_file()

    def _open(self, collection: str) -> Any:
        if collection in self._shards:
            return self._shards[collection]
        path = self._path(collection)
        if not (path / "edge_config.json").is_file():
            raise CollectionNotFoundError(
                f"no collection {collection!r} in {self.root}; existing: {', '.join(self.list_collections()) or 'none'}"
            )
        try:
            shard = _edge().EdgeShard.load(str(path))
        except Exception as e:
            if "WouldBlock" in str(e) or "lock" in str(e).lower():
                raise CollectionLockedError(
                    f"collection {collection!r} is open in another retllm process; wait for it to finish"
                ) from e
            raise
        self._shards[collection] = shard
        return shard

    def _create(self, collection: str, dim: int) -> None:
        q = _edge()
        params = {n: q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine) for n in VECTOR_NAMES}
        path = self._path(collection)
        path.mkdir(parents=True, exist_ok=True)
        self._shards[collection] = q.EdgeShard.create(str(path), q.EdgeConfig(vectors=params))

    def dim(self, collection: str) -> int:
        cfg = self._path(collection) / "edge_config.json"
        if not cfg.is_file():
            raise CollectionNotFoundError(f"no collection {collection!r} in {self.root}")
        return int(json.loads(cfg.read_text())["vectors"]["image"]["size"])

    def drop_collection(self, collection: str) -> None:
        shard = self._shards.pop(collection, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._path(collection), ignore_errors=True)

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
        for shard in self._shards.values():
            try:
                shard.flush()
            finally:
                shard.close()
        self._shards.clear()
