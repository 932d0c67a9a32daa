"""qdrant-client backend: a Qdrant server or cluster by URL, or the client's local mode (':memory:' / path).

On a server whose cluster mode is on, new collections are sharded across the peers and replicated
(see :meth:`QdrantIndex.sharding`); a single node and local mode create them plain.

The server client is thread-safe. Local mode is not (concurrent writes and reads corrupt its arrays), so
every call on a local store takes that store's lock; and since a local folder can be opened by one
client per process, instances over the same folder share one client, with a reference count.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retllm.errors import CollectionLockedError, CollectionNotFoundError, ConfigError
from retllm.index.base import (
    RRF_K,
    FilterSpec,
    Fusion,
    Index,
    Record,
    SearchResult,
    check_records,
    field_path,
    filter_alternatives,
    group_matches,
)
from retllm.types import VECTOR_NAMES, VectorName, point_id

log = logging.getLogger(__name__)


def client_filter(flt: FilterSpec | None) -> Any:
    """A qdrant-client Filter for a ``key=value`` spec."""
    if not flt:
        return None
    from qdrant_client import models as m

    must: list[Any] = []
    for key, value in flt.items():
        matches = group_matches(
            lambda v: m.MatchValue(value=v), lambda vs: m.MatchAny(any=vs), filter_alternatives(value)
        )
        alts: list[Any] = [m.FieldCondition(key=field_path(key), match=x) for x in matches]
        must.append(alts[0] if len(alts) == 1 else m.Filter(should=alts))
    return m.Filter(must=must)


class _LocalStores:
    """Process-wide local-mode clients: folder -> [client, lock, references]."""

    lock = threading.Lock()
    table: dict[Path, list[Any]] = {}


class QdrantIndex(Index):
    """Collections in Qdrant through qdrant-client.

    Args:
        location: ``http(s)://...`` for a server or cluster, ``:memory:`` or a folder path for local mode.
        api_key: Server API key.
        fusion: How ``auto`` search fuses the per-vector searches.
        shards: ``shard_number`` of new collections on a server (default: the cluster's peer count).
        replication: ``replication_factor`` of new collections on a server (default: min(2, peers)).
    """

    name = "qdrant"

    def __init__(
        self,
        location: str,
        api_key: str | None = None,
        *,
        timeout: int = 30,
        fusion: Fusion = "rank",
        shards: int | None = None,
        replication: int | None = None,
    ) -> None:
        from qdrant_client import QdrantClient

        self.location = location
        self.fusion = fusion
        self._remote = location.startswith(("http://", "https://"))
        for what, value in (("shards", shards), ("replication", replication)):
            if value is not None and (not self._remote or value < 1):
                raise ConfigError(f"{what}={value}: needs a Qdrant server URL and a value of at least 1")
        self._shards, self._replication = shards, replication
        self._sharding: dict[str, int] | None = None  # found on the first create, then kept
        self._key: Path | None = None
        self._closed = False
        self._lock: Any = contextlib.nullcontext()
        try:
            if self._remote:
                # a blank key is no key (Compose passes an unset QDRANT_API_KEY as "")
                self.client = QdrantClient(url=location, api_key=api_key or None, timeout=timeout)
            elif location == ":memory:":
                self.client = QdrantClient(location=":memory:")
                self._lock = threading.RLock()
            else:
                Path(location).mkdir(parents=True, exist_ok=True)
                key = Path(location).resolve()
                with _LocalStores.lock:
                    entry = _LocalStores.table.get(key)
                    if entry is None:
                        entry = _LocalStores.table[key] = [QdrantClient(path=str(key)), threading.RLock(), 0]
                    entry[2] += 1
                self.client, self._lock, self._key = entry[0], entry[1], key
        except RuntimeError as e:
            if "already accessed" in str(e):
                raise CollectionLockedError(
                    f"Qdrant local storage {location} is open in another process; wait for it to finish"
                ) from e
            raise ConfigError(f"cannot open Qdrant at {location}: {e}") from e

    def list_collections(self) -> list[str]:
        with self._lock:
            return sorted(c.name for c in self.client.get_collections().collections)

    def exists(self, collection: str) -> bool:
        with self._lock:
            return bool(self.client.collection_exists(collection))

    def _require(self, collection: str) -> None:
        if not self.exists(collection):
            existing = ", ".join(self.list_collections()) or "none"
            raise CollectionNotFoundError(f"no collection {collection!r} at {self.location}; existing: {existing}")

    def _cluster_peers(self) -> int:
        """Peers of the server's cluster: 1 when cluster mode is off or the status cannot be read."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            status = self.client.http.distributed_api.cluster_status().result
        except UnexpectedResponse as e:  # 401/403 (a key without cluster rights), 404 (a proxy or a cloud API)
            log.debug("no cluster status from %s (%s); creating collections unsharded", self.location, e.status_code)
            return 1
        except ResponseHandlingException as e:
            if not isinstance(e.source, ValueError):  # unreachable: the create would fail the same way
                raise
            log.warning("unreadable cluster status from %s; creating collections unsharded: %s", self.location, e)
            return 1
        if status is None or status.status != "enabled":
            return 1
        return len(getattr(status, "peers", None) or {}) or 1

    def sharding(self) -> dict[str, int]:
        """The ``create_collection`` arguments that spread new collections over a cluster.

        A cluster of n >= 2 peers gets n shards, each on min(2, n) peers (a replica survives one node), and
        writes acknowledged by one replica; explicit ``shards`` / ``replication`` win. Local mode, a single
        node and a server with cluster mode off get no arguments (Qdrant's defaults). Asked of the server
        once per index object, on the first create.
        """
        if self._sharding is None:
            peers = self._cluster_peers() if self._remote else 1
            args: dict[str, int] = {}
            if peers >= 2 or self._shards or self._replication:
                args = {
                    "shard_number": self._shards or peers,
                    "replication_factor": self._replication or min(2, peers),
                    "write_consistency_factor": 1,
                }
            log.debug("Qdrant at %s: %d peer(s); new collections get %s", self.location, peers, args or "defaults")
            self._sharding = args
        return self._sharding

    def _create(self, collection: str, dim: int) -> None:
        from qdrant_client import models as m
        from qdrant_client.http.exceptions import UnexpectedResponse

        sharding = self.sharding()
        with self._lock:
            try:
                self.client.create_collection(
                    collection,
                    vectors_config={n: m.VectorParams(size=dim, distance=m.Distance.COSINE) for n in VECTOR_NAMES},
                    shard_number=sharding.get("shard_number"),  # None: Qdrant's default, left out of the request
                    replication_factor=sharding.get("replication_factor"),
                    write_consistency_factor=sharding.get("write_consistency_factor"),
                )
            except (UnexpectedResponse, ValueError) as e:
                if not self.client.collection_exists(collection):
                    raise
                log.debug("collection %s was created concurrently: %s", collection, e)

    def dim(self, collection: str) -> int:
        self._require(collection)
        with self._lock:
            vectors = self.client.get_collection(collection).config.params.vectors
        assert isinstance(vectors, dict)
        return int(vectors["image"].size)

    def drop_collection(self, collection: str) -> None:
        with self._lock:
            self.client.delete_collection(collection)

    def upsert(self, collection: str, records: Sequence[Record]) -> None:
        if not records:
            return
        from qdrant_client import models as m

        check_records(records)
        self._require(collection)
        points = [
            m.PointStruct(
                id=r.point_id,
                vector={k: np.asarray(v, np.float32).tolist() for k, v in r.vectors.items()},
                payload=r.payload,
            )
            for r in records
        ]
        with self._lock:
            self.client.upsert(collection, points=points, wait=True)

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        from qdrant_client import models as m

        present = self.existing(collection, ids)
        if present:
            with self._lock:
                self.client.delete(
                    collection, points_selector=m.PointIdsList(points=[point_id(i) for i in present]), wait=True
                )
        return len(present)

    def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        self._require(collection)
        with self._lock:
            recs = self.client.retrieve(collection, ids=[point_id(i) for i in ids], with_payload=True)
        return {r.payload["retllm_id"] for r in recs if r.payload}

    def payloads(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        self._require(collection)
        with self._lock:
            recs = self.client.retrieve(collection, ids=[point_id(i) for i in ids], with_payload=True)
        return {r.payload["retllm_id"]: dict(r.payload) for r in recs if r.payload}

    def _results(self, points: Any, vector: str) -> list[SearchResult]:
        return [
            SearchResult(p.payload["retllm_id"], float(p.score), dict(p.payload), vector) for p in points if p.payload
        ]

    def _search(
        self, collection: str, vector: np.ndarray, using: VectorName, limit: int, flt: FilterSpec | None
    ) -> list[SearchResult]:
        self._require(collection)
        with self._lock:
            res = self.client.query_points(
                collection,
                query=np.asarray(vector, np.float32).tolist(),
                using=using,
                limit=limit,
                query_filter=client_filter(flt),
                with_payload=True,
            )
        return self._results(res.points, using)

    def _search_each(
        self, collection: str, vector: np.ndarray, limit: int, flt: FilterSpec | None
    ) -> list[list[SearchResult]]:
        from qdrant_client import models as m

        self._require(collection)
        vec, f = np.asarray(vector, np.float32).tolist(), client_filter(flt)
        reqs = [
            m.QueryRequest(query=vec, using=name, limit=limit, filter=f, with_payload=True) for name in VECTOR_NAMES
        ]
        with self._lock:
            out = self.client.query_batch_points(collection, requests=reqs)
        return [self._results(r.points, name) for name, r in zip(VECTOR_NAMES, out, strict=True)]

    def _search_fused(
        self, collection: str, vector: np.ndarray, limit: int, flt: FilterSpec | None, fusion: Fusion
    ) -> list[SearchResult]:
        from qdrant_client import models as m

        self._require(collection)
        vec = np.asarray(vector, np.float32).tolist()
        f = client_filter(flt)
        prefetch = [m.Prefetch(query=vec, using=name, limit=limit, filter=f) for name in VECTOR_NAMES]
        query: Any = m.RrfQuery(rrf=m.Rrf(k=RRF_K)) if fusion == "rrf" else m.FusionQuery(fusion=m.Fusion.DBSF)
        with self._lock:
            res = self.client.query_points(
                collection, prefetch=prefetch, query=query, limit=limit, query_filter=f, with_payload=True
            )
        return self._results(res.points, fusion)

    def count(self, collection: str, flt: FilterSpec | None = None) -> int:
        self._require(collection)
        with self._lock:
            return int(self.client.count(collection, count_filter=client_filter(flt), exact=True).count)

    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 256) -> Iterator[Record]:
        self._require(collection)
        offset = None
        while True:
            with self._lock:  # per page: a slow consumer never holds the store
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
        """Close the client; a shared local store closes when its last instance does. Idempotent."""
        with _LocalStores.lock:  # two threads closing one instance at once must not release it twice
            if self._closed:
                return
            self._closed = True
        if self._key is None:
            self.client.close()
            return
        with _LocalStores.lock:
            entry = _LocalStores.table.get(self._key)
            if entry is not None and entry[0] is self.client:
                entry[2] -= 1
                if entry[2] <= 0:
                    del _LocalStores.table[self._key]
                    self.client.close()
            self._key = None
