"""qdrant-client backend: a Qdrant server or cluster by URL, or the client's local mode (':memory:' / path)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retllm.errors import CollectionLockedError, CollectionNotFoundError, ConfigError
from retllm.index.base import FilterSpec, Index, Record, SearchResult, filter_alternatives
from retllm.types import VECTOR_NAMES, VectorName, point_id

log = logging.getLogger(__name__)


def client_filter(flt: FilterSpec | None) -> Any:
    """A qdrant-client Filter for a ``key=value`` spec."""
    if not flt:
        return None
    from qdrant_client import models as m

    must: list[Any] = []
    for key, value in flt.items():
        alts: list[Any] = [
            m.FieldCondition(key=f"meta.{key}", match=m.MatchValue(value=v)) for v in filter_alternatives(value)
        ]
        must.append(alts[0] if len(alts) == 1 else m.Filter(should=alts))
    return m.Filter(must=must)


class QdrantIndex(Index):
    """Collections in Qdrant through qdrant-client.

    Args:
        location: ``http(s)://...`` for a server or cluster, ``:memory:`` or a folder path for local mode.
        api_key: Server API key.
    """

    name = "qdrant"

    def __init__(self, location: str, api_key: str | None = None, *, timeout: int = 30) -> None:
        from qdrant_client import QdrantClient

        self.location = location
        try:
            if location.startswith(("http://", "https://")):
                self.client = QdrantClient(url=location, api_key=api_key, timeout=timeout)
            elif location == ":memory:":
                self.client = QdrantClient(location=":memory:")
            else:
                Path(location).mkdir(parents=True, exist_ok=True)
                self.client = QdrantClient(path=location)
        except RuntimeError as e:
            if "already accessed" in str(e):
                raise CollectionLockedError(
                    f"Qdrant local storage {location} is open in another process; wait for it to finish"
                ) from e
            raise ConfigError(f"cannot open Qdrant at {location}: {e}") from e

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def exists(self, collection: str) -> bool:
        return bool(self.client.collection_exists(collection))

    def _require(self, collection: str) -> None:
        if not self.exists(collection):
            existing = ", ".join(self.list_collections()) or "none"
            raise CollectionNotFoundError(f"no collection {collection!r} at {self.location}; existing: {existing}")

    def _create(self, collection: str, dim: int) -> None:
        from qdrant_client import models as m

        self.client.create_collection(
            collection,
            vectors_config={n: m.VectorParams(size=dim, distance=m.Distance.COSINE) for n in VECTOR_NAMES},
        )

    def dim(self, collection: str) -> int:
        self._require(collection)
        vectors = self.client.get_collection(collection).config.params.vectors
        assert isinstance(vectors, dict)
        return int(vectors["image"].size)

    def drop_collection(self, collection: str) -> None:
        self.client.delete_collection(collection)

    def upsert(self, collection: str, records: Sequence[Record]) -> None:
        if not records:
            return
        from qdrant_client import models as m

        self._require(collection)
        points = [
            m.PointStruct(
                id=r.point_id,
                vector={k: np.asarray(v, np.float32).tolist() for k, v in r.vectors.items()},
                payload=r.payload,
            )
            for r in records
        ]
        self.client.upsert(collection, points=points, wait=True)

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        from qdrant_client import models as m

        present = self.existing(collection, ids)
        if present:
            self.client.delete(
                collection, points_selector=m.PointIdsList(points=[point_id(i) for i in present]), wait=True
            )
        return len(present)

    def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        self._require(collection)
        recs = self.client.retrieve(collection, ids=[point_id(i) for i in ids], with_payload=True)
        return {r.payload["retllm_id"] for r in recs if r.payload}

    def _search(
        self, collection: str, vector: np.ndarray, using: VectorName, limit: int, flt: FilterSpec | None
    ) -> list[SearchResult]:
        self._require(collection)
        res = self.client.query_points(
            collection,
            query=np.asarray(vector, np.float32).tolist(),
            using=using,
            limit=limit,
            query_filter=client_filter(flt),
            with_payload=True,
        )
        return [
            SearchResult(p.payload["retllm_id"], float(p.score), dict(p.payload), using)
            for p in res.points
            if p.payload
        ]

    def count(self, collection: str, flt: FilterSpec | None = None) -> int:
        self._require(collection)
        return int(self.client.count(collection, count_filter=client_filter(flt), exact=True).count)

    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 256) -> Iterator[Record]:
        self._require(collection)
        offset = None
        while True:
            pts, offset = self.client.scroll(
                collection, limit=batch, offset=offset, with_payload=True, with_vectors=with_vectors
            )
            for p in pts:
                payload = dict(p.payload or {})
                vecs: dict[Any, np.ndarray] = {}
                if with_vectors and isinstance(p.vector, dict):
                    vecs = {k: np.asarray(v, np.float32) for k, v in p.vector.items()}
                yield Record(payload["retllm_id"], vecs, payload)
            if offset is None:
                return

    def close(self) -> None:
        self.client.close()
