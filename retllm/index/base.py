"""The index role: one interface over Qdrant backends, with named vectors per modality.

Each point stores up to three named vectors (``image``, ``text``, ``fused``) and a payload:
``retllm_id`` (the item id), ``text``, ``image`` (path or URL) and ``meta`` (the user's fields).
Filters name user fields (``color=red`` matches ``meta.color``).

Indexes are shared: one instance (and several instances over the same store) may be used from many
threads at once.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from retllm.errors import ConfigError, DimensionMismatchError, FilterError
from retllm.payload import check_record_payload
from retllm.types import VECTOR_NAMES, VectorName, point_id

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

FilterSpec = Mapping[str, Any]
"""Payload filter: every ``key=value`` must match (``meta.<key>`` equals value)."""


def check_collection_name(name: str) -> str:
    """Reject names that are unsafe as folder names or Qdrant collection names."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting alnum"
        )
    return name


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def field_path(key: str) -> str:
    """The store's JSON path of user field ``key`` (``a.b`` is field ``b`` inside ``a``): every part quoted,
    so no key can reach outside ``meta`` or break the path syntax.

    Raises:
        FilterError: an empty part (``..``, a leading dot), a quote, a control character or over 256 characters.
    """
    parts = key.split(".") if isinstance(key, str) else [""]
    bad_part = any(not p or '"' in p or "\\" in p or any(ord(c) < 32 for c in p) for p in parts)
    if not _utf8(key) or len(key) > 256 or bad_part:
        raise FilterError(
            f"filter key {key[:80]!r}: use a stored field's name (a.b for field b inside a), in valid Unicode, "
            "without empty parts, quotes, backslashes or control characters"
        )
    return "meta." + ".".join(f'"{p}"' for p in parts)


def filter_alternatives(value: Any, *, bools: bool = True) -> list[Any]:
    """Values a filter value may stand for: a list means any of its values; a CLI ``key=value`` string stands for
    itself and for the int (and, with ``bools``, the bool) it parses as."""
    if isinstance(value, list | tuple):
        return [alt for v in value for alt in filter_alternatives(v, bools=bools)]
    if not isinstance(value, str):
        return [value]
    if not _utf8(value):
        raise FilterError(f"filter value {value[:80]!r} is not valid Unicode (a lone surrogate)")
    alts: list[Any] = [value]
    if re.fullmatch(r"[+-]?\d+", value):
        alts.append(int(value))
    if bools and value.lower() in ("true", "false"):
        alts.append(value.lower() == "true")
    return alts


def group_matches(match_value: Any, match_any: Any, values: list[Any]) -> list[Any]:
    """One ``MatchAny`` per value type (strings, integers) instead of a ``should`` of one ``MatchValue`` per value:
    a thousand-value filter (MMEB's candidate lists) is then one indexed lookup, not a thousand conditions."""
    strs = list(dict.fromkeys(v for v in values if isinstance(v, str)))
    ints = list(dict.fromkeys(v for v in values if isinstance(v, int) and not isinstance(v, bool)))
    rest = [v for v in values if not isinstance(v, str | int) or isinstance(v, bool)]
    out = [match_value(vs[0]) if len(vs) == 1 else match_any(vs) for vs in (strs, ints) if vs]
    return out + [match_value(v) for v in rest]


def check_records(records: Sequence[Record]) -> None:
    """Every record's payload within what the store can read back (:func:`check_record_payload`); backends
    call this before any write, so nothing is half-written when one record is refused."""
    for r in records:
        check_record_payload(r.id, r.payload)


@dataclass
class Record:
    """One stored point: the item id, its vectors by name, and its payload."""

    id: str
    vectors: dict[VectorName, np.ndarray] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def point_id(self) -> str:
        return point_id(self.id)


Fusion = Literal["rank", "rrf", "dbsf"]
FUSIONS: tuple[Fusion, ...] = ("rank", "rrf", "dbsf")
RRF_K = 2
"""Qdrant's own RRF constant: score = sum over the searches of 1 / (RRF_K + rank)."""


def fuse_best_rank(lists: Sequence[Sequence[SearchResult]], limit: int) -> list[SearchResult]:
    """Each item at its best rank in any of the per-kind rankings (so the rankings interleave: every kind's
    best items make the pool, whatever the scale of its cosines and however many kinds an item stores).

    Ties in best rank go to the item found by more searches (the sum of ``1 / (RRF_K + rank)``), then by id.
    Each result keeps the kind that ranked it best (``vector``) and that kind's cosine (``score``).
    """
    best: dict[str, tuple[int, SearchResult]] = {}
    votes: dict[str, float] = {}
    for ranking in lists:
        # Equal cosines share a rank (the same image stored under several ids): the engine's internal order
        # must not pick among them. Competition ranking over scores rounded to 1e-6, ties by id.
        ordered = sorted(ranking, key=lambda r: (-round(r.score, 6), r.id))
        rank = 0
        for pos, r in enumerate(ordered):
            if pos and round(r.score, 6) != round(ordered[pos - 1].score, 6):
                rank = pos
            votes[r.id] = votes.get(r.id, 0.0) + 1.0 / (RRF_K + rank)
            if r.id not in best or rank < best[r.id][0]:
                best[r.id] = (rank, r)
    order = sorted(best, key=lambda i: (best[i][0], -votes[i], i))
    return [best[i][1] for i in order[:limit]]


@dataclass
class SearchResult:
    """A coarse hit: item id, score, payload, and what matched.

    ``score`` is the cosine similarity when one named vector was searched (``vector`` names it), or the
    fused score when ``auto`` fused the searches over every stored kind (``vector`` is ``rrf``/``dbsf``).
    """

    id: str
    score: float
    payload: dict[str, Any]
    vector: str


class Index(ABC):
    """A store of collections of points with named vectors ``image``/``text``/``fused``.

    Attributes:
        fusion: How ``auto`` search fuses the per-vector searches (``rrf`` or ``dbsf``).
    """

    name: str = "index"
    fusion: Fusion = "rank"

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

    def payloads(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored payloads of those of ``ids`` that exist, by id (backends override this with a lookup)."""
        wanted = set(ids) & self.existing(collection, ids)
        return {r.id: r.payload for r in self.scroll(collection) if r.id in wanted} if wanted else {}

    @abstractmethod
    def _search(
        self, collection: str, vector: np.ndarray, using: VectorName, limit: int, flt: FilterSpec | None
    ) -> list[SearchResult]: ...

    def _search_each(
        self, collection: str, vector: np.ndarray, limit: int, flt: FilterSpec | None
    ) -> list[list[SearchResult]]:
        """One ranking per named vector (backends batch them into one request where they can)."""
        return [self._search(collection, vector, name, limit, flt) for name in VECTOR_NAMES]

    @abstractmethod
    def _search_fused(
        self, collection: str, vector: np.ndarray, limit: int, flt: FilterSpec | None, fusion: Fusion
    ) -> list[SearchResult]:
        """One Query API request: a prefetch per named vector, fused by ``fusion``."""

    @abstractmethod
    def count(self, collection: str, flt: FilterSpec | None = None) -> int:
        """Number of points (matching ``flt`` when given)."""

    @abstractmethod
    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 256) -> Iterator[Record]:
        """Every point, in id order."""

    def broken(self, collection: str) -> str | None:
        """Why an existing collection cannot be used (``None``: it can, as far as opening it tells)."""
        return None

    def salvage(self, collection: str, skip: Callable[[str, str], None]) -> Iterator[Record]:
        """Every readable item with its vectors; what cannot be read goes to ``skip(what, why)`` (the embedded
        store reads around a broken shard; a server's own reads are all-or-nothing)."""
        return self.scroll(collection, with_vectors=True)

    def repair(self, collection: str) -> Any:
        """Rebuild a collection from its readable items (the embedded store only)."""
        raise ConfigError(
            f"index repair is for the embedded store; {self.name} collections are repaired by the server's own "
            "tools (snapshots, replicas)"
        )

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
        if not self.exists(collection):
            self._create(collection, dim)  # a no-op when another thread created it meanwhile
        self.check_dim(collection, dim)

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
            using: The stored vector to match. ``None`` ("auto") matches the query's own kind (fused for
                text+image queries) against every stored kind and fuses the rankings by :attr:`fusion`.
                Cosines of different kinds are on different scales (CLIP text-text ~0.7, text-image ~0.3),
                so keeping each item's best cosine would bury image-only items. ``rank`` (default): each
                item at its best rank in any kind's ranking (:func:`fuse_best_rank`); ``rrf``/``dbsf``:
                Qdrant's fusion in one Query API request, which sums over the kinds and so favours items
                that store more kinds.
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
        if self.fusion not in FUSIONS:
            raise ConfigError(f"unknown vector fusion {self.fusion!r}; valid: {', '.join(FUSIONS)}")
        if self.fusion == "rank":  # past the cut, so that ties at the cut are decided by id, not by the engine
            return fuse_best_rank(self._search_each(collection, q, 2 * limit, flt), limit)
        # Fused scores tie often (rank r in one search = rank r in another): fetch past the cut and break
        # ties by id, so the order and the cut do not depend on the engine's internal point order.
        fused = self._search_fused(collection, q, 2 * limit, flt, self.fusion)
        return sorted(fused, key=lambda r: (-round(r.score, 9), r.id))[:limit]
