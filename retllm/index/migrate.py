"""Copy a collection between index backends (embedded store → Qdrant server), with verification."""

from __future__ import annotations

import logging

from retllm.errors import RetllmError
from retllm.index.base import Index, Record

log = logging.getLogger(__name__)


def migrate(src: Index, dst: Index, collection: str, *, batch: int = 256, progress: bool = False) -> int:
    """Copy every point (vectors and payloads) of ``collection``; returns the number copied.

    The target collection is created with the source's vector size (or must already have it);
    afterwards every source id must exist in the target, else :class:`RetllmError`.
    """
    from tqdm import tqdm

    dim = src.dim(collection)
    total = src.count(collection)
    dst.ensure_collection(collection, dim)
    n = 0
    buf: list[Record] = []
    ids: list[str] = []
    with tqdm(total=total, unit="item", desc=f"migrate {collection}", disable=not progress) as bar:
        for rec in src.scroll(collection, with_vectors=True, batch=batch):
            buf.append(rec)
            if len(buf) >= batch:
                dst.upsert(collection, buf)
                ids += [r.id for r in buf]
                n += len(buf)
                bar.update(len(buf))
                buf = []
        if buf:
            dst.upsert(collection, buf)
            ids += [r.id for r in buf]
            n += len(buf)
            bar.update(len(buf))
    missing = sum(
        len(ids[i : i + 1000]) - len(dst.existing(collection, ids[i : i + 1000])) for i in range(0, len(ids), 1000)
    )
    if n != total or missing:
        raise RetllmError(
            f"migration of {collection!r} incomplete: source {total}, copied {n}, missing in target {missing}"
        )
    log.info("migrated %d points; target now holds %d", n, dst.count(collection))
    return n
