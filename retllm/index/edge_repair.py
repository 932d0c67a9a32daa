"""Getting an embedded collection's good items back when its store will not open or read.

A qdrant-edge shard keeps its points in segments and the updates not yet merged into them in a
write-ahead log (WAL) that every open replays. When one logged update cannot be read back (a
payload nested past the engine's recursion limit: docs/reliability.md) the shard never opens
again, and all its other items are out of reach. :func:`salvage` reads both parts without the
engine's replay: the segments from a copy without the WAL, and the WAL itself, whose format is the
``wal`` crate's (segment header ``wal``, version 0, a CRC seed; entries of a u64 length, CBOR data,
padding to 8 bytes and a chained CRC32-C). Logged updates are applied in order over the segments'
points; anything that cannot be read, or that the store could not read back, is skipped and named.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retllm.errors import BadItemError, CollectionBrokenError, MissingDependencyError
from retllm.index.base import Record
from retllm.payload import check_stored

Skip = Callable[[str, str], None]
"""Called with (what: an item or point id, or a WAL entry; why) for everything left out."""


@dataclass
class _Entry:
    where: str
    data: bytes


def _reversed32(x: int) -> int:
    return int(f"{x:032b}"[::-1], 2)


def _segment_entries(path: Path) -> Iterator[_Entry]:
    """The valid entries of one WAL segment file, in order (reading stops at the first bad CRC, as the
    engine's does: what follows is unwritten or left over from an earlier use of the file)."""
    try:
        import crc32c
    except ImportError as e:
        raise MissingDependencyError("reading the write-ahead log needs crc32c: pip install crc32c") from e
    data = path.read_bytes()
    if data[:3] != b"wal" or len(data) < 8 or data[3] != 0:
        raise CollectionBrokenError(f"{path.name} is not a WAL segment this version can read")
    crc = struct.unpack_from("<I", data, 4)[0]
    end, offset, n = len(data) & ~7, 8, 0
    while offset + 12 < end:
        length = struct.unpack_from("<Q", data, offset)[0]
        body_end = offset + 8 + length + ((4 - length) & 7)
        if body_end + 4 > end:
            return
        # the crate's CRC starts from the previous one, bit-reversed and inverted in crc32c's terms
        got = crc32c.crc32c(data[offset:body_end], value=_reversed32(crc) ^ 0xFFFFFFFF)
        if got != struct.unpack_from("<I", data, body_end)[0]:
            return
        yield _Entry(f"WAL {path.name} entry {n}", data[offset + 8 : offset + 8 + length])
        crc, offset, n = got, body_end + 4, n + 1


def wal_entries(wal: Path) -> Iterator[_Entry]:
    """Every WAL entry in the engine's replay order: closed segments by start index, then the
    written open segments by id."""
    closed: list[tuple[int, Path]] = []
    opened: list[tuple[int, Path]] = []
    for p in wal.iterdir() if wal.is_dir() else []:
        kind, _, num = p.name.partition("-")
        if kind in ("closed", "open") and num.isdigit():
            (closed if kind == "closed" else opened).append((int(num), p))
    for _, p in sorted(closed) + sorted(opened):
        yield from _segment_entries(p)


def _point_key(pid: Any) -> str:
    if isinstance(pid, bytes | bytearray) and len(pid) == 16:
        return str(uuid.UUID(bytes=bytes(pid)))
    return str(pid)


def _record(payload: Any, vectors: dict[str, Any]) -> Record:
    """A record from a stored point, checked as the index checks every write."""
    if not isinstance(payload, dict) or not isinstance(payload.get("retllm_id"), str):
        raise BadItemError("not a retllm item (no retllm_id)")
    rid = payload["retllm_id"]
    check_stored(payload)
    vecs = {k: np.asarray(v, np.float32) for k, v in (vectors or {}).items() if isinstance(v, list)}
    return Record(rid, vecs, payload)  # type: ignore[arg-type]


def _wal_overlay(wal: Path, skip: Skip) -> dict[str, Record | None]:
    """The WAL's updates applied in order: point key -> its last state (``None``: deleted or refused)."""
    import cbor2

    out: dict[str, Record | None] = {}
    refused: dict[str, tuple[str, str]] = {}
    for entry in wal_entries(wal):
        try:
            op = cbor2.loads(entry.data)
        except (RecursionError, ValueError, cbor2.CBORDecodeError) as e:
            skip(entry.where, f"cannot be read ({type(e).__name__}); the updates in it are lost")
            continue
        kind, body = next(iter(op.items())) if isinstance(op, dict) and len(op) == 1 else (None, {})
        body = body if isinstance(body, dict) else {}
        if kind == "upsert_points":
            for p in body.get("points", []):
                key = _point_key(p.get("id"))
                try:
                    out[key] = _record(p.get("payload"), p.get("vector") or {})
                    refused.pop(key, None)
                except BadItemError as e:
                    out[key] = None
                    who = (p.get("payload") or {}).get("retllm_id") if isinstance(p.get("payload"), dict) else None
                    refused[key] = (repr(who) if isinstance(who, str) else f"point {key}", str(e))
        elif kind == "delete_points":
            for pid in body.get("ids", []):
                out[_point_key(pid)] = None
                refused.pop(_point_key(pid), None)
        else:
            raise CollectionBrokenError(
                f"{entry.where} holds an update retllm never writes ({kind or type(op).__name__}); "
                "not repairing a store another program changed"
            )
    for what, why in refused.values():
        skip(what, f"{why} (logged in the WAL)")
    return out


def _segment_points(folder: Path, overlay: dict[str, Record | None], skip: Skip, batch: int) -> Iterator[Record]:
    """The segments' points (from a copy of ``folder`` without its WAL), except those the WAL overrides."""
    from retllm.index.edge import _edge

    q = _edge()
    # beside the store (same disk), named so a later repair can tell it from a running one's and clean it up
    prefix = f".salvage-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}-"
    with tempfile.TemporaryDirectory(prefix=prefix, suffix=f"-{os.getpid()}", dir=folder.parent) as tmp:
        copy = Path(tmp) / "shard"
        shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("wal"))
        shard = q.EdgeShard.load(str(copy))
        try:
            offset = None
            while True:
                ids, offset = shard.scroll(
                    q.ScrollRequest(offset=offset, limit=batch, with_payload=False, with_vector=False)
                )
                todo = [r.id for r in ids if _point_key(r.id) not in overlay]
                yield from read_points(shard, todo, named(folder / "wal", skip))
                if offset is None:
                    return
        finally:
            shard.close()


def read_points(shard: Any, ids: list[Any], skip: Skip) -> Iterator[Record]:
    """Points of an open shard by id with payloads and vectors; a batch that fails is read point by point,
    and a point whose payload cannot be read or kept is skipped and named."""
    if not ids:
        return
    try:
        found = shard.retrieve(ids, with_payload=True, with_vector=True)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:  # the engine's Rust panics are BaseExceptions
        if len(ids) > 1:
            for pid in ids:
                yield from read_points(shard, [pid], skip)
            return
        skip(f"point {_point_key(ids[0])}", "its payload cannot be read back by the store")
        return
    for p in found:
        try:
            yield _record(p.payload, p.vector or {})
        except BadItemError as e:
            skip(f"point {_point_key(p.id)}", str(e))


def wal_names(wal: Path) -> dict[str, str]:
    """Item ids by point key, as far as the WAL still logs them (to name a point whose payload will not read)."""
    import cbor2

    names: dict[str, str] = {}
    for entry in wal_entries(wal):
        try:
            op = cbor2.loads(entry.data)
        except (RecursionError, ValueError, cbor2.CBORDecodeError):
            continue
        for p in op.get("upsert_points", {}).get("points", []) if isinstance(op, dict) else []:
            payload = p.get("payload")
            if isinstance(payload, dict) and isinstance(payload.get("retllm_id"), str):
                names[_point_key(p.get("id"))] = payload["retllm_id"]
    return names


def named(wal: Path, skip: Skip) -> Skip:
    """``skip`` that names a point by its item id when the WAL still logs it."""
    names: dict[str, str] | None = None

    def tell(what: str, why: str) -> None:
        nonlocal names
        if what.startswith("point "):
            names = wal_names(wal) if names is None else names
            if what[6:] in names:
                what = repr(names[what[6:]])
        skip(what, why)

    return tell


def salvage(folder: Path, skip: Skip, *, batch: int = 256) -> Iterator[Record]:
    """Every good item of the unopenable shard at ``folder``, read around the engine (see the module);
    ``skip`` hears of each one left out. Reads only: ``folder`` is not changed."""
    overlay = _wal_overlay(folder / "wal", skip)
    yield from _segment_points(folder, overlay, skip, batch)
    yield from (r for r in overlay.values() if r is not None)
