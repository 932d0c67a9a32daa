"""Ingest: folders, JSONL/CSV manifests and single files into a collection.

Decoding and preprocessing run in a thread pool ahead of the model (bounded prefetch), embedding is
batched, and each batch is upserted as soon as it is embedded. Ids are stable, items already stored
are skipped before embedding, so re-running an interrupted ingest stores every item exactly once.
Bad items are reported with their reason and never stop the rest.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import ValidationError

from retllm.embedders.base import Embedder, fuse
from retllm.errors import BadItemError
from retllm.images import IMAGE_EXTENSIONS, ImageLimits, decode_text, is_url, keep_bytes
from retllm.index.base import Index, Record
from retllm.payload import check_record_payload, check_string
from retllm.types import Item, VectorName, content_id

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = frozenset({".txt", ".md"})
MANIFEST_EXTENSIONS = frozenset({".jsonl", ".csv"})
_RESERVED = ("id", "text", "image")

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Source:
    """One item to ingest, before any I/O: where it came from and what it points at."""

    origin: str
    item: Item | None = None
    text_path: Path | None = None
    error: str | None = None


@dataclass
class Prepared:
    """An item after decoding: ready to embed."""

    origin: str
    id: str
    text: str | None
    image_input: Any
    image_ref: str | None
    meta: dict[str, Any]


@dataclass
class IngestReport:
    """What an ingest did: counts, and every skipped item with its reason."""

    added: int = 0
    already_present: int = 0
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)
    """The id of every item that was read, by origin."""

    @property
    def seen(self) -> int:
        return self.added + self.already_present + self.duplicates + len(self.skipped)


def _row_to_source(row: dict[str, Any], base: Path, origin: str) -> Source:
    row = {k: (None if v == "" else v) for k, v in row.items() if k is not None}
    image = row.get("image")
    if image is not None and not isinstance(image, str):
        return Source(origin, error="'image' must be a path or URL string")
    if isinstance(image, str) and not is_url(image) and not Path(image).is_absolute():
        image = str(base / image)
    text = row.get("text")
    if text is not None and not isinstance(text, str):
        text = str(text)
    item_id = row.get("id")
    meta = {k: v for k, v in row.items() if k not in _RESERVED}
    if text is None and image is None:
        return Source(origin, error="row has neither 'text' nor 'image'")
    return _item_source(origin, id=None if item_id is None else str(item_id), text=text, image=image, payload=meta)


def _item_source(origin: str, **fields: Any) -> Source:
    """A source for an item built from ``fields``, or one that carries why the item cannot be used."""
    try:
        return Source(origin, Item(**fields))
    except BadItemError as e:
        return Source(origin, error=str(e))
    except ValidationError as e:
        return Source(origin, error="; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors()))


def _manifest_sources(path: Path) -> Iterator[Source]:
    base = path.parent
    if path.suffix.lower() == ".jsonl":
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                origin = f"{path}:{n}"
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield Source(origin, error="line is not valid UTF-8")
                    continue
                except json.JSONDecodeError as e:
                    yield Source(origin, error=f"invalid JSON: {e.msg}")
                    continue
                except RecursionError:
                    yield Source(origin, error="invalid JSON: nested too deeply to read")
                    continue
                except ValueError as e:  # an integer of thousands of digits (int_max_str_digits)
                    yield Source(origin, error=f"invalid JSON: {e}")
                    continue
                if not isinstance(row, dict):
                    yield Source(origin, error="line is not a JSON object")
                    continue
                yield _row_to_source(row, base, origin)
    else:
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            yield Source(str(path), error="CSV manifest is not valid UTF-8")
            return
        reader = csv.DictReader(io.StringIO(text, newline=""))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # a field over csv.field_size_limit(): this row only; the reader goes on
                yield Source(f"{path}:{reader.line_num + 1}", error=f"bad CSV row: {e}")  # not yet counted
                continue
            # line_num is where the row ends, so quoted multi-line fields still get a findable origin.
            yield _row_to_source(dict(row), base, f"{path}:{reader.line_num}")


def _file_source(path: Path) -> Source:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return _item_source(str(path), image=str(path))
    if ext in TEXT_EXTENSIONS:
        return Source(str(path), text_path=path)
    return Source(str(path), error=f"unsupported format {ext or '(no extension)'}")


def iter_sources(paths: Iterable[str | Path]) -> Iterator[Source]:
    """Expand CLI paths: folders (recursive), manifests (.jsonl/.csv) and single files."""
    for p in paths:
        path = Path(p)
        if not path.exists():
            yield Source(str(path), error="path not found")
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                rel = f.relative_to(path)
                if f.is_file() and not any(part.startswith(".") for part in rel.parts):
                    yield _file_source(f)
        elif path.suffix.lower() in MANIFEST_EXTENSIONS:
            yield from _manifest_sources(path)
        else:
            yield _file_source(path)


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], pool: ThreadPoolExecutor, depth: int) -> Iterator[Future[R]]:
    """Ordered, bounded ``pool.map``: at most ``depth`` items in flight, so memory stays flat."""
    pending: deque[Future[R]] = deque()
    for x in items:
        pending.append(pool.submit(fn, x))
        if len(pending) >= depth:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


class Ingestor:
    """Runs the decode → embed → upsert pipeline for one collection."""

    def __init__(
        self,
        embedder: Embedder,
        index: Index,
        collection: str,
        *,
        blob_dir: Path | None = None,
        fusion_weight: float = 0.5,
        limits: ImageLimits | None = None,
        workers: int = 2,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.collection = collection
        self.blob_dir = blob_dir
        self.fusion_weight = fusion_weight
        self.limits = limits or ImageLimits()
        self.workers = workers

    def prepare(self, src: Source) -> Prepared:
        """Read, decode and preprocess one source (runs in a worker thread)."""
        if src.error is not None:
            raise BadItemError(src.error)
        check_string(src.origin, "the file name")  # stored with the item: the store takes UTF-8 only
        if src.text_path is not None:
            try:
                data = src.text_path.read_bytes()
            except OSError as e:
                raise BadItemError(f"cannot read: {e.strerror or e}") from e
            item = Item(text=decode_text(data), payload={})
        else:
            assert src.item is not None
            item = src.item
        image_input = image_ref = image_bytes = None
        if item.image is not None:
            image_bytes = self.limits.read(item.image)
            im = self.limits.decode(image_bytes, min_side=self.embedder.input_side)
            image_input = self.embedder.prepare_image(im)
            image_ref = self._image_ref(item.image, image_bytes)
        if item.text is not None and not item.text.strip():
            raise BadItemError("text is empty")
        item_id = item.id or content_id(item.text, image_bytes)
        return Prepared(src.origin, item_id, item.text, image_input, image_ref, dict(item.payload))

    def _image_ref(self, src: Any, data: bytes) -> str:
        if is_url(src):
            return str(src)
        if not isinstance(src, bytes) and (self.limits.file_roots is None or self.blob_dir is None):
            return str(Path(src).resolve())
        # bytes, or a path confined to roots (a request's): keep the bytes read, so no later swap of the file
        # (a symlink to outside the roots) changes what the item's reference reads
        if self.blob_dir is None:
            raise BadItemError("image given as bytes but no blob folder is configured to keep it")
        return keep_bytes(self.blob_dir, data)

    def _store(self, batch: list[Prepared], report: IngestReport, seen: set[str]) -> None:
        fresh: list[Prepared] = []
        for p in batch:
            if p.id in seen:
                report.duplicates += 1
            else:
                seen.add(p.id)
                fresh.append(p)
        present = self.index.existing(self.collection, [p.id for p in fresh])
        report.already_present += len(present)
        todo = [p for p in fresh if p.id not in present]
        if not todo:
            return
        with_img = [p for p in todo if p.image_input is not None]
        with_txt = [p for p in todo if p.text is not None]
        img_vecs = dict(
            zip(
                (p.id for p in with_img),
                self.embedder.embed_image_inputs([p.image_input for p in with_img]),
                strict=True,
            )
        )
        txt_vecs = dict(
            zip((p.id for p in with_txt), self.embedder.embed_texts([p.text for p in with_txt if p.text]), strict=True)
        )
        records = []
        for p in todo:
            vecs: dict[VectorName, np.ndarray] = {}
            if p.id in img_vecs:
                vecs["image"] = img_vecs[p.id]
            if p.id in txt_vecs:
                vecs["text"] = txt_vecs[p.id]
            if "image" in vecs and "text" in vecs:
                vecs["fused"] = fuse(vecs["image"], vecs["text"], self.fusion_weight)
            payload = {"retllm_id": p.id, "text": p.text, "image": p.image_ref, "source": p.origin, "meta": p.meta}
            try:  # the index refuses the whole batch for one record it cannot store: leave that one out here
                check_record_payload(p.id, payload)
            except BadItemError as e:
                report.skipped.append((p.origin, str(e)))
                report.ids.pop(p.origin, None)
                continue
            records.append(Record(p.id, vecs, payload))
        if not records:
            return
        self.index.upsert(self.collection, records)
        report.added += len(records)
        log.info("stored %d items (%d so far)", len(records), report.added)

    def add(self, items: Iterable[Item], *, progress: bool = False) -> IngestReport:
        """Ingest :class:`Item` objects (API use); origins in the report are ``item[i]`` or the item id."""
        return self.run((Source(it.id or f"item[{i}]", it) for i, it in enumerate(items)), progress=progress)

    def run(self, sources: Iterable[Source], *, progress: bool = False) -> IngestReport:
        """Ingest ``sources``; bad ones land in ``report.skipped`` with their reason."""
        from tqdm import tqdm

        self.index.ensure_collection(self.collection, self.embedder.dim)
        srcs = list(sources)
        report = IngestReport()
        seen: set[str] = set()
        batch: list[Prepared] = []
        bs = self.embedder.batch_size
        bar = tqdm(total=len(srcs), unit="item", desc=f"ingest -> {self.collection}", disable=not progress)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="retllm-decode") as pool:
            for fut, src in zip(prefetch_map(self.prepare, srcs, pool, depth=max(2 * bs, 8)), srcs, strict=True):
                try:
                    batch.append(fut.result())
                    report.ids[src.origin] = batch[-1].id
                except Exception as e:  # one bad item never stops the rest; each is reported
                    reason = str(e) if isinstance(e, BadItemError) else f"unexpected {type(e).__name__}: {e}"
                    report.skipped.append((src.origin, reason))
                    log.info("skipped %s: %s", src.origin, reason, exc_info=not isinstance(e, BadItemError))
                    bar.update(1)
                    continue
                if len(batch) >= bs:
                    self._store(batch, report, seen)
                    bar.update(len(batch))
                    batch = []
            if batch:
                self._store(batch, report, seen)
                bar.update(len(batch))
        bar.close()
        return report
