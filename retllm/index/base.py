"""The index role: one interface over Qdrant backends, with named vectors per modality.

Each point stores up to three named vectors (``image``, ``text``, ``fused``) and a payload:
``retllm_id`` (the item id), ``text``, ``image`` (path or URL) and ``meta`` (the user's fields).
Filters name user fields (``color=red`` matches ``meta.color``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retllm.errors import ConfigError, DimensionMismatchError
from retllm.types import VECTOR_NAMES, VectorName, point_id

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

FilterSpec = Mapping[str, Any]
"""Payload filter: every ``key=value`` must match (``meta.<key>`` equals value)."""


def check_collection_name(name: str) -> str:
    """Reject names that are unsafe as folder names or Qdrant collection names."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting alnum"
        )
    return name


def filter_alternatives(value: Any) -> list[Any]:
    """Values a CLI ``key=value`` string may stand for: the string itself, and int/bool when it parses."""
    if not isinstance(value, str):
        return [value]
    alts: list[Any] = [value]
    if re.fullmatch(r"[+-]?\d+", value):
        alts.append(int(value))
    if value.lower() in ("true", "false"):
        alts.append(value.lower() == "true")
    return alts


@dataclass
class Record:
    """One stored point: the item id, its vectors by name, and its payload."""

    id: str
    vectors: dict[VectorName, np.ndarray] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def point_id(self) -> str:
        return point_id(self.id)


@dataclass
class SearchResult:
    """A coarse hit: item id, cosine score, payload, and which named vector matched."""

    id: str
    score: float
    payload: dict[str, Any]
    vector: VectorName


class Index(ABC):
    """A store of collections of points with named vectors ``image``/``text``/``fused``."""

    name: str = "index"

    @abstractmethod
    def list_collections(self) -> list[str]:
        """Names of existing collections."""

    @abstractmethod
    def _create(self, collection: str, dim: int) -> None: ...

    @abstractmethod
    def dim(self, collection: str) -> int:
        """Vector size of an existing collection (raises CollectionNotFoundError)."""

    @abstractmethod
    def drop_collection(self, collection: str) -> None:
        """Delete a collection and its points."""

    @abstractmethod
    def upsert(self, collection: str, records: Sequence[Record]) -> None:
        """Insert or replace points by item id."""

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> int:
        """Delete points by item id; returns how many existed."""

    @abstractmethod
    def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        """The subset of ``ids`` stored in the collection."""

    @abstractmethod
    def _search(
        self, collection: str, vector: np.ndarray, using: VectorName, limit: int, flt: FilterSpec | None
    ) -> list[SearchResult]: ...

    @abstractmethod
    def count(self, collection: str, flt: FilterSpec | None = None) -> int:
        """Number of points (matching ``flt`` when given)."""

    @abstractmethod
    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 256) -> Iterator[Record]:
        """Every point, in id order."""

    def optimize(self, collection: str) -> bool:
        """Build the vector index (HNSW) now; ``False`` where the backend manages it on its own."""
        self.dim(collection)  # raises for an unknown collection
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self, collection: str) -> bool:
        """Whether the collection exists."""
        return collection in self.list_collections()

    def ensure_collection(self, collection: str, dim: int) -> None:
        """Create the collection if missing; raise if it exists with another vector size."""
        check_collection_name(collection)
        if self.exists(collection):
            self.check_dim(collection, dim)
        else:
            self._create(collection, dim)

    def check_dim(self, collection: str, dim: int) -> None:
        """Raise :class:`DimensionMismatchError` when the collection's size differs from ``dim``."""
        have = self.dim(collection)
        if have != dim:
            raise DimensionMismatchError(
                f"collection {collection!r} holds {have}-d vectors but the embedder makes {dim}-d ones; "
                "use the embedder the collection was built with (RETLLM_EMBEDDER) or a new --collection"
            )

    def search(
        self,
        collection: str,
        vectors: Mapping[VectorName, np.ndarray],
        *,
        limit: int = 10,
        using: VectorName | None = None,
        flt: FilterSpec | None = None,
    ) -> list[SearchResult]:
        """Top ``limit`` points by cosine similarity.

        Args:
            vectors: Query vectors by kind (see :meth:`Embedder.embed_query`).
            using: The stored vector to match. ``None`` ("auto") matches the query's own kind
                (fused for text+image queries) against every stored kind and keeps each item's best.
            flt: Payload filter.
        """
        if limit < 1:
            raise ConfigError(f"k must be at least 1, got {limit}")
        qkind: VectorName = "fused" if "fused" in vectors else next(iter(vectors))
        q = vectors[qkind]
        if using is not None:
            if using not in VECTOR_NAMES:
                raise ConfigError(f"unknown vector {using!r}; valid: {', '.join(VECTOR_NAMES)}")
            return self._search(collection, q, using, limit, flt)
        best: dict[str, SearchResult] = {}
        for name in VECTOR_NAMES:
            for r in self._search(collection, q, name, limit, flt):
                if r.id not in best or r.score > best[r.id].score:
                    best[r.id] = r
        return sorted(best.values(), key=lambda r: (-r.score, r.id))[:limit]
