"""Embedded backend: Qdrant's in-process engine (qdrant-edge), one shard folder per collection.

A shard folder can be opened once per process (its WAL is locked), so open shards live in one
process-wide table shared by every :class:`EdgeIndex` over the same folder, with a reference count;
opening, creating and dropping go through that table's lock. The shard itself serves concurrent
queries and updates from many threads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retllm.errors import (
    CollectionBrokenError,
    CollectionLockedError,
    CollectionNotFoundError,
    FilterError,
    MissingDependencyError,
    RetllmError,
)
from retllm.index.base import (
    _NAME_RE,
    RRF_K,
    FilterSpec,
    Fusion,
    Index,
    Record,
    SearchResult,
    check_collection_name,
    check_records,
    field_path,
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
        alts = [q.FieldCondition(key=field_path(key), match=m) for m in group_matches(q.MatchValue, q.MatchAny, values)]
        must.append(alts[0] if len(alts) == 1 else q.Filter(should=alts))
    return q.Filter(must=must)


class _OpenShards:
    """The process-wide table of open shards: folder -> [shard, references]; and of shards that failed to
    open: folder -> (the folder's state then, the message), so a broken one is not replayed on every call."""

    lock = threading.Lock()
    table: dict[Path, list[Any]] = {}
    broken: dict[Path, tuple[Any, str]] = {}


def _state(folder: Path) -> Any:
    """What changes when a shard's files do (a repair replaces the folder, a writer the WAL)."""
    try:
        wal = folder / "wal"
        logs = [p for p in wal.iterdir() if p.name.startswith(("open-", "closed-"))] if wal.is_dir() else []
        files = sorted(
            (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in logs
        )  # not first-index: a load writes it
        return (folder.stat().st_ino, tuple(files))
    except OSError:
        return None


def _unreadable(message: str) -> bool:
    """Whether an engine error says its own files cannot be read back (not a passing failure)."""
    low = message.lower()
    return any(w in low for w in ("deserialize", "recursion limit", "read wal", "corrupt"))


def repair_hint(collection: str) -> str:
    return f"retllm index repair -c {collection} recovers its good items (docs/reliability.md)"


@dataclass
class RepairReport:
    """What :meth:`EdgeIndex.repair` did: items kept, items left out with why, where the old store went."""

    collection: str
    kept: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)
    backup: Path | None = None


@contextmanager
def _wal_lock(folder: Path, collection: str) -> Iterator[None]:
    """Hold the shard's WAL lock (the engine's own: an exclusive flock on the folder), so no process opens
    the shard while it is read around the engine or replaced."""
    import fcntl

    wal = folder / "wal"
    if not wal.is_dir():
        yield
        return
    fd = os.open(wal, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise CollectionLockedError(
                f"collection {collection!r} is open in another process; stop it (the service, a CLI run) and retry"
            ) from e
        yield
    finally:
        os.close(fd)


def _clean_leftovers(root: Path, collection: str) -> None:
    """Remove what a repair of ``collection`` killed mid-way left (its rebuild and salvage folders are named
    with the repairing process's id, so one still running is left alone)."""
    for p in root.glob(f".*-{collection}-*"):
        kind, _, rest = p.name[1:].partition(f"-{collection}-")
        pid = rest.split("-")[-1]
        if kind not in ("repair", "salvage") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            continue


def _point(q: Any, r: Record) -> Any:
    return q.Point(r.point_id, {k: np.asarray(v, np.float32).tolist() for k, v in r.vectors.items()}, r.payload)


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
        return sorted(
            p.name for p in self.root.iterdir() if _NAME_RE.fullmatch(p.name) and (p / "edge_config.json").is_file()
        )

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
            state = _state(key)
            known = _OpenShards.broken.get(key)
            if known is not None and known[0] == state:
                raise CollectionBrokenError(known[1])
            try:
                shard = _edge().EdgeShard.load(str(key))
            except Exception as e:
                if "WouldBlock" in str(e) or "lock" in str(e).lower():
                    raise CollectionLockedError(
                        f"collection {collection!r} is open in another process; wait for it to finish"
                    ) from e
                reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
                message = f"collection {collection!r} cannot be opened ({reason}); {repair_hint(collection)}"
                log.info("%s", message)
                if _unreadable(str(e)):  # the store's own files: remembered until they change
                    _OpenShards.broken[key] = (state, message)
                raise CollectionBrokenError(message) from e  # else (out of file handles...): tried again next time
            _OpenShards.broken.pop(key, None)
            entry = _OpenShards.table[key] = [shard, 0]
            return self._hold(key, entry)

    @staticmethod
    def _new_shard(folder: Path, dim: int) -> Any:
        q = _edge()
        params = {n: q.EdgeVectorParams(size=dim, distance=q.Distance.Cosine) for n in VECTOR_NAMES}
        folder.mkdir(parents=True, exist_ok=True)
        return q.EdgeShard.create(str(folder), q.EdgeConfig(vectors=params))

    def _create(self, collection: str, dim: int) -> None:
        key = self._key(collection)
        with _OpenShards.lock:
            if key in _OpenShards.table or (key / "edge_config.json").is_file():
                return  # created meanwhile by another thread; ensure_collection checks its size
            shard = self._new_shard(key, dim)
            self._hold(key, _OpenShards.table.setdefault(key, [shard, 0]))

    def dim(self, collection: str) -> int:
        cfg = self._path(collection) / "edge_config.json"
        if not cfg.is_file():
            raise CollectionNotFoundError(f"no collection {collection!r} in {self.root}")
        return int(json.loads(cfg.read_text())["vectors"]["image"]["size"])

    def _shut(self, key: Path) -> None:
        """Close the process's shard at ``key`` for every instance (caller holds the table lock): a drop, a
        repair, a shard found broken; the next call opens whatever is there then."""
        entry = _OpenShards.table.pop(key, None)
        self._held.pop(key, None)
        if entry is not None:
            entry[0].close()

    def drop_collection(self, collection: str) -> None:
        key = self._key(collection)
        with _OpenShards.lock:
            self._shut(key)
            _OpenShards.broken.pop(key, None)
            shutil.rmtree(key, ignore_errors=True)

    def upsert(self, collection: str, records: Sequence[Record]) -> None:
        if not records:
            return
        check_records(records)
        q = _edge()
        self._call(collection, "update", q.UpdateOperation.upsert_points([_point(q, r) for r in records]))

    def _call(self, collection: str, op: str, *args: Any, **kw: Any) -> Any:
        """``op`` on the collection's shard; an item whose payload the engine cannot read back (stored before
        payloads were bounded) is a broken collection, not an internal error."""
        try:
            return getattr(self._open(collection), op)(*args, **kw)
        except (RetllmError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # the engine's Rust panics are BaseExceptions (pyo3's PanicException)
            text = str(e)
            if not _unreadable(text) and type(e).__name__ != "PanicException":
                raise
            reason = text.splitlines()[0][:300]
            message = (
                f"collection {collection!r} holds an item the store cannot read back ({reason}); "
                f"{repair_hint(collection)}"
            )
            self._give_up(collection, message)
            raise CollectionBrokenError(message) from e

    def _give_up(self, collection: str, message: str) -> None:
        """Close a shard found broken and remember why: later calls fail fast (listing and readiness see it,
        writes are refused), and its lock is free for ``retllm index repair`` in another process."""
        key = self._key(collection)
        with _OpenShards.lock:
            self._shut(key)
            _OpenShards.broken[key] = (_state(key), message)
        log.info("%s", message)  # the error itself carries it to the caller

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        present = self.existing(collection, ids)
        if present:
            q = _edge()
            self._call(collection, "update", q.UpdateOperation.delete_points([point_id(i) for i in present]))
        return len(present)

    def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        recs = self._call(collection, "retrieve", [point_id(i) for i in ids], with_payload=True, with_vector=False)
        return {r.payload["retllm_id"] for r in recs}

    def payloads(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        recs = self._call(collection, "retrieve", [point_id(i) for i in ids], with_payload=True, with_vector=False)
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
            for p in self._call(collection, "query", req)
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
        out = self._call(collection, "query_batch", q.QueryBatchRequest(reqs))
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
            for p in self._call(collection, "query", req)
        ]

    def count(self, collection: str, flt: FilterSpec | None = None) -> int:
        q = _edge()
        return int(self._call(collection, "count", q.CountRequest(exact=True, filter=edge_filter(flt))))

    def scroll(self, collection: str, *, with_vectors: bool = False, batch: int = 256) -> Iterator[Record]:
        q = _edge()
        offset = None
        while True:
            recs, offset = self._call(
                collection,
                "scroll",
                q.ScrollRequest(offset=offset, limit=batch, with_payload=True, with_vector=with_vectors),
            )
            for r in recs:
                vecs = {k: np.asarray(v, np.float32) for k, v in (r.vector or {}).items()} if with_vectors else {}
                yield Record(r.payload["retllm_id"], vecs, dict(r.payload))
            if offset is None:
                return

    def broken(self, collection: str) -> str | None:
        try:
            self._open(collection)
        except CollectionBrokenError as e:
            return str(e)
        return None

    def salvage(self, collection: str, skip: Callable[[str, str], None]) -> Iterator[Record]:
        """Every readable item with its vectors, skipping (and telling ``skip``) what cannot be read or kept:
        from the open shard, or, when it will not open, around the engine (:mod:`.edge_repair`). Reads only."""
        try:
            shard = self._open(collection)
        except CollectionBrokenError:
            from retllm.index.edge_repair import salvage

            with _wal_lock(self._key(collection), collection):
                yield from salvage(self._key(collection), skip)
            return
        from retllm.index.edge_repair import named, read_points

        q = _edge()
        offset, tell = None, named(self._key(collection) / "wal", skip)
        while True:
            ids, offset = shard.scroll(q.ScrollRequest(offset=offset, limit=256, with_payload=False, with_vector=False))
            yield from read_points(shard, [r.id for r in ids], tell)
            if offset is None:
                return

    def repair(self, collection: str) -> RepairReport:
        """Rebuild a collection from its readable items, leaving out (and naming) what the store could not read
        back. A shard that opens and reads back whole is left as it is. Otherwise the shard is closed in this
        process and read around the engine under its lock (so no write is acknowledged meanwhile and lost: other
        callers get :class:`CollectionLockedError` until it is done), and the new store replaces the old, which
        is kept under ``ROOT/.backups/`` (the report says where).

        Raises:
            CollectionNotFoundError: no such collection.
            CollectionLockedError: another process has it open.
            CollectionBrokenError: its log holds updates retllm never writes (not repaired).
        """
        import time

        from retllm.index.edge_repair import salvage

        key, dim = self._key(collection), self.dim(collection)
        report = RepairReport(collection)
        if self.broken(collection) is None:  # it opens: does every item read back?
            unread: list[tuple[str, str]] = []
            report.kept = sum(1 for _ in self.salvage(collection, lambda what, why: unread.append((what, why))))
            if not unread:
                return report
        report.kept = 0
        with _OpenShards.lock:  # closed here, so the lock below is the engine's only holder: ours
            self._shut(key)
            _OpenShards.broken.pop(key, None)
        _clean_leftovers(self.root, collection)
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        tmp = self.root / f".repair-{collection}-{stamp}"
        backup = self.root / ".backups" / f"{collection}-{stamp}"
        q = _edge()
        with _wal_lock(key, collection):
            new = self._new_shard(tmp, dim)
            try:
                batch: list[Record] = []
                for rec in salvage(key, lambda what, why: report.dropped.append((what, why))):
                    batch.append(rec)
                    if len(batch) >= 256:
                        new.update(q.UpdateOperation.upsert_points([_point(q, r) for r in batch]))
                        report.kept, batch = report.kept + len(batch), []
                if batch:
                    new.update(q.UpdateOperation.upsert_points([_point(q, r) for r in batch]))
                    report.kept += len(batch)
                new.flush()
                new.close()
            except BaseException:
                new.close()
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            backup.parent.mkdir(parents=True, exist_ok=True)
            key.rename(backup)
            try:
                tmp.rename(key)
            except BaseException:
                backup.rename(key)  # the old store goes back where it was: nothing is lost, nothing changed
                raise
        report.backup = backup
        log.warning("repaired %r: kept %d items, left out %d", collection, report.kept, len(report.dropped))
        return report

    def optimize(self, collection: str) -> bool:
        """Build the HNSW index and merge segments (run after large ingests; queries stay exact before)."""
        self._call(collection, "optimize")
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
