"""Loaders for the retrieval benchmarks of METHOD.md §4, each into one :class:`EvalSet`.

Layouts (``data`` is the folder given to :func:`load`):

- ``flickr30k`` / ``coco``: Karpathy's split file, ``data/dataset_<name>.json`` (or the only
  ``dataset_*.json`` there). An image file is looked up in ``data/images/``, then
  ``data/<filepath>/`` (COCO's ``val2014``), then ``data/``; the first that exists is used. Image id:
  the file stem (``imgid`` where an entry has no filename); text id: ``"<image id>#<n>"``, ``n`` the
  caption's index in the entry. The test split is 1,000 images x 5 captions (Flickr30K), 5,000 x 5
  (COCO).
- ``urban1k``: ``data/image/<stem>.<ext>`` and ``data/caption/<stem>.txt``, paired by file stem and
  ordered by stem (numbers numerically); text id ``"<stem>#0"``.
- ``sharegpt4v``: the first 1,000 entries of the share-captioner JSON list (or JSON Lines) file in
  ``data``; image paths relative to ``data``; the caption is the first ``gpt`` turn; image id the
  entry's ``id``, text id ``"<id>#0"``. The file is read incrementally, so only the head of the
  1.2M-entry file is parsed.

The HF ``datasets`` ``save_to_disk`` layout is not supported (``datasets`` is not a dependency).

Every text id is its own query with only its own image as positive, even where two images share a
caption word for word (the standard protocol; the duplicate is a miss for the other image's query).

A bad entry (malformed JSON line, missing image file, no usable caption, undecodable caption file) is
skipped and described in :attr:`EvalSet.problems` as ``"FILE:LINE: reason"`` or ``"FILE: reason"``
(FILE relative to ``data``); the load goes on. ``limit`` keeps the first N images that load, in file
order, after the split filter; entries after the N-th are not read.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from retllm.errors import ConfigError
from retllm.types import Item, Query, VectorName

log = logging.getLogger(__name__)

SHAREGPT4V_SIZE = 1000
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"
_CHUNK = 1 << 16
_MAX_RECORD = 1 << 24  # a record this long without parsing is bad JSON, not a cut one


CAPTIONS_PER_IMAGE = 5
"""Captions per image in the Karpathy test splits (METHOD.md §4: 1K / 5K images x 5 captions)."""


@dataclass
class Section:
    """One query set of a benchmark: its queries, their positives, and the corpus (by name) they search.

    Attributes:
        name: What the report calls it (``text_to_image``, an M-BEIR task).
        corpus: Key of the searched corpus in :meth:`EvalSet.corpora`.
        using: The stored vector kind matched (``None``: the query's own kind against every kind, fused).
        queries: Query id -> query.
        positives: Query id -> the corpus ids that match it (never empty).
    """

    name: str
    corpus: str
    using: VectorName | None
    queries: dict[str, Query] = field(default_factory=dict)
    positives: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class EvalSet:
    """One benchmark split: images, captions and the positives of each query in both directions.

    Image-caption sets (Flickr30K, COCO, Urban1k, ShareGPT4V) fill ``images``/``texts`` and search both
    ways between them. Pool sets (M-BEIR) fill ``pools`` (corpus name -> items) and ``tasks`` instead.
    """

    name: str
    split: str
    images: dict[str, Path] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    text_to_images: dict[str, set[str]] = field(default_factory=dict)
    image_to_texts: dict[str, set[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    pools: dict[str, list[Item]] = field(default_factory=dict)
    tasks: list[Section] = field(default_factory=list)

    def add(self, image_id: str, path: Path, captions: list[tuple[str, str]]) -> None:
        """Adds one image and its ``(text id, caption)`` pairs as mutual positives."""
        self.images[image_id] = path
        self.image_to_texts[image_id] = {t for t, _ in captions}
        for text_id, caption in captions:
            self.texts[text_id] = caption
            self.text_to_images[text_id] = {image_id}

    def corpora(self) -> dict[str, list[Item]]:
        """Corpus name -> its items: ``images`` and ``texts`` of an image-caption set, then the pools."""
        out: dict[str, list[Item]] = {}
        if self.images:
            out["images"] = [Item(id=i, image=str(p)) for i, p in self.images.items()]
            out["texts"] = [Item(id=t, text=c) for t, c in self.texts.items()]
        return {**out, **self.pools}

    def sections(self) -> list[Section]:
        """The query sets: text→image and image→text between ``images`` and ``texts``, then the pool tasks."""
        out: list[Section] = []
        if self.images:
            out.append(
                Section(
                    "text_to_image",
                    "images",
                    "image",
                    {t: Query(text=self.texts[t]) for t in self.texts if self.text_to_images.get(t)},
                    self.text_to_images,
                )
            )
            out.append(
                Section(
                    "image_to_text",
                    "texts",
                    "text",
                    {i: Query(image=str(self.images[i])) for i in self.images if self.image_to_texts.get(i)},
                    self.image_to_texts,
                )
            )
        return out + self.tasks


def load(name: str, data: Path, *, split: str = "test", limit: int | None = None) -> EvalSet:
    """Loads the benchmark ``name`` from the folder ``data``.

    Args:
        name: One of :data:`DATASETS`.
        data: The dataset folder (layouts in the module docstring).
        split: Karpathy split for ``flickr30k``/``coco``; the others have only ``"test"``.
        limit: Keep the first N images (with their captions), in file order; ``None`` keeps all.

    Raises:
        ConfigError: Unknown name or split, negative limit, missing folder or dataset file, or a
            dataset file that is not JSON at all.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    data = Path(data)
    if not data.is_dir():
        raise ConfigError(f"{name}: dataset folder {data} does not exist")
    out = DATASETS[name](data, split=split, limit=limit)
    if out.problems:
        log.warning("%s: skipped %d entries, e.g. %s", name, len(out.problems), out.problems[0])
    log.info("%s/%s: %d images, %d texts", name, split, len(out.images), len(out.texts))
    return out


def _full(out: EvalSet, limit: int | None) -> bool:
    return limit is not None and len(out.images) >= limit


def _rel(path: Path, data: Path) -> str:
    try:
        return str(path.relative_to(data))
    except ValueError:
        return str(path)


def _one_file(data: Path, name: str, preferred: str, patterns: tuple[str, ...]) -> Path:
    """``data/preferred``, else the only file matching the first pattern that matches any."""
    if (data / preferred).is_file():
        return data / preferred
    what = f"{preferred}, or else a single {' / '.join(patterns)}, in {data}"
    for pattern in patterns:
        found = sorted(p for p in data.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if found:
            raise ConfigError(f"{name}: several dataset files ({', '.join(p.name for p in found)}); expected {what}")
    raise ConfigError(f"{name}: no dataset file; looked for {what}")


def load_karpathy(data: Path, *, name: str, split: str = "test", limit: int | None = None) -> EvalSet:
    """Loads Flickr30K or COCO from Karpathy's ``dataset_<name>.json`` (see the module docstring)."""
    path = _one_file(data, name, f"dataset_{name}.json", ("dataset_*.json",))
    fname = _rel(path, data)
    try:
        entries = json.loads(path.read_bytes().decode("utf-8-sig", errors="surrogateescape")).get("images")
    except (ValueError, AttributeError) as e:
        raise ConfigError(f'{name}: {path} is not a Karpathy split file ({{"images": [...]}}): {e}') from e
    if not isinstance(entries, list):
        raise ConfigError(f'{name}: {path} has no "images" list')
    splits = {e.get("split") for e in entries if isinstance(e, dict)}
    if split not in splits:
        have = ", ".join(sorted(str(s) for s in splits if s)) or "none"
        raise ConfigError(f"{name}: no entry of split {split!r} in {fname} (splits there: {have})")
    out = EvalSet(name, split)
    for i, entry in enumerate(entries):
        if _full(out, limit):
            break
        where = f"{fname}: images[{i}]"
        if not isinstance(entry, dict):
            out.problems.append(f"{where}: not an object")
            continue
        if entry.get("split") != split:
            continue
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename:
            out.problems.append(f"{where}: no filename")
            continue
        image_id = Path(filename).stem
        if image_id in out.images:
            out.problems.append(f"{where}: duplicate image id {image_id!r}")
            continue
        sub = entry.get("filepath")
        dirs = [data / "images", *([data / sub] if isinstance(sub, str) and sub else []), data]
        image = next((d / filename for d in dirs if (d / filename).is_file()), None)
        if image is None:
            out.problems.append(f"{where}: image {filename} not found in {', '.join(_rel(d, data) for d in dirs)}")
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            out.problems.append(f"{where}: no sentences list")
            continue
        captions = []
        for n, s in enumerate(sentences):
            raw = s.get("raw") if isinstance(s, dict) else None
            if isinstance(raw, str) and raw.strip() and _not_utf8(raw):
                out.problems.append(f"{where}.sentences[{n}]: caption is not UTF-8")
            elif isinstance(raw, str) and raw.strip():
                captions.append((f"{image_id}#{n}", raw.strip()))
            else:
                out.problems.append(f"{where}.sentences[{n}]: no caption text")
        if not captions:
            out.problems.append(f"{where}: no captions")
            continue
        if len(captions) > CAPTIONS_PER_IMAGE:  # the protocol's N x 5 (a few COCO images carry 6 or 7)
            out.problems.append(f"{where}: {len(captions)} captions, the first {CAPTIONS_PER_IMAGE} kept")
            captions = captions[:CAPTIONS_PER_IMAGE]
        out.add(image_id, image, captions)
    return out


def _natural(stem: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", stem))


def _by_stem(folder: Path, data: Path, out: EvalSet) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.stem in files:
            out.problems.append(
                f"{_rel(p, data)}: another file has the stem {p.stem!r} ({files[p.stem].name}); skipped"
            )
            continue
        files[p.stem] = p
    return files


def load_urban1k(data: Path, *, split: str = "test", limit: int | None = None) -> EvalSet:
    """Loads Urban1k from ``data/image/`` and ``data/caption/``, pairing files by stem."""
    _only_test("urban1k", split)
    image_dir, caption_dir = data / "image", data / "caption"
    for d in (image_dir, caption_dir):
        if not d.is_dir():
            raise ConfigError(f"urban1k: no {d.name}/ folder in {data} (expected image/ and caption/)")
    out = EvalSet("urban1k", split)
    images, captions = _by_stem(image_dir, data, out), _by_stem(caption_dir, data, out)
    for stem in sorted(images.keys() | captions.keys(), key=_natural):
        if _full(out, limit):
            break
        if stem not in captions:
            out.problems.append(f"{_rel(images[stem], data)}: no caption file caption/{stem}.txt")
            continue
        if stem not in images:
            out.problems.append(f"{_rel(captions[stem], data)}: no image file image/{stem}.*")
            continue
        raw = captions[stem].read_bytes()
        try:
            text = raw.decode("utf-8-sig").strip()
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            out.problems.append(f"{_rel(captions[stem], data)}:{line}: not UTF-8 (byte {e.start})")
            continue
        if not text:
            out.problems.append(f"{_rel(captions[stem], data)}: empty caption")
            continue
        out.add(stem, images[stem], [(f"{stem}#0", text)])
    return out


def _only_test(name: str, split: str) -> None:
    if split != "test":
        raise ConfigError(f"{name} has only the 'test' split, got {split!r}")


def iter_json_records(path: Path, *, chunk_size: int = _CHUNK) -> Iterator[tuple[int, Any]]:
    """Yields ``(line, record)`` from a JSON list or JSON Lines file, reading only as far as asked.

    ``line`` is where the record starts. A record that does not parse is yielded as its ``ValueError``:
    in JSON Lines the next line goes on; in a JSON list the next record cannot be found again, so that
    is the last one. Bytes that are not UTF-8 reach the records as lone surrogates (``surrogateescape``)
    for the caller to report.
    """
    decoder = json.JSONDecoder()
    with path.open("rb") as f:
        utf8 = codecs.getincrementaldecoder("utf-8-sig")(errors="surrogateescape")

        def more() -> str:
            while True:
                chunk = f.read(chunk_size)
                text: str = utf8.decode(chunk, final=not chunk)
                if text or not chunk:
                    return text

        buf = more()
        while buf.isspace():
            if not (chunk := more()):
                return
            buf += chunk
        start = len(buf) - len(buf.lstrip())
        if buf[start] != "[":
            yield from _json_lines(buf, more)
            return
        pos, line, eof = start + 1, 1 + buf.count("\n", 0, start), False
        while True:
            while True:  # past whitespace and the comma before the next record
                while pos < len(buf) and buf[pos] in " \t\r\n,":
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or eof:
                    break
                chunk = more()
                buf, pos, eof = buf[pos:] + chunk, 0, not chunk
            if pos >= len(buf) or buf[pos] == "]":
                return
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except ValueError as e:  # a record cut by the chunk boundary, or bad JSON
                    chunk = "" if eof or len(buf) - pos > _MAX_RECORD else more()
                    if not chunk:
                        yield line, e
                        return
                    buf, pos = buf[pos:] + chunk, 0
            yield line, obj
            line += buf.count("\n", pos, end)
            pos = end


def _json_lines(buf: str, more: Callable[[], str]) -> Iterator[tuple[int, Any]]:
    n = 0
    while True:
        chunk = more()
        lines = (buf + chunk).split("\n")
        buf = lines.pop() if chunk else ""
        for text in lines:
            n += 1
            if text.strip():
                try:
                    yield n, json.loads(text)
                except ValueError as e:
                    yield n, e
        if not chunk:
            return


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def load_sharegpt4v(data: Path, *, split: str = "test", limit: int | None = None) -> EvalSet:
    """Loads the first 1,000 entries of the ShareGPT4V share-captioner file (see the module docstring)."""
    _only_test("sharegpt4v", split)
    path = _one_file(data, "sharegpt4v", SHAREGPT4V_FILE, ("share-captioner*.json*", "*.json", "*.jsonl"))
    fname = _rel(path, data)
    out = EvalSet("sharegpt4v", split)
    for index, (line, rec) in enumerate(iter_json_records(path)):
        if index >= SHAREGPT4V_SIZE or _full(out, limit):
            break
        where = f"{fname}:{line}"
        if isinstance(rec, ValueError):
            out.problems.append(f"{where}: malformed JSON ({rec})")
            continue
        if not isinstance(rec, dict):
            out.problems.append(f"{where}: not an object")
            continue
        rel = rec.get("image")
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            out.problems.append(f"{where}: no relative image path")
            continue
        image_id = str(rec.get("id") or Path(rel).with_suffix("").as_posix())
        if image_id in out.images:
            out.problems.append(f"{where}: duplicate id {image_id!r}")
            continue
        if not (data / rel).is_file():
            out.problems.append(f"{where}: image {rel} not found")
            continue
        turns = rec.get("conversations")
        gpt = [t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"] if isinstance(turns, list) else []
        caption = gpt[0].get("value") if gpt else None
        if not isinstance(caption, str) or not caption.strip():
            out.problems.append(f"{where}: no gpt caption")
            continue
        if _not_utf8(caption):
            out.problems.append(f"{where}: caption is not UTF-8")
            continue
        out.add(image_id, data / rel, [(f"{image_id}#0", caption.strip())])
    return out


DATASETS: dict[str, Callable[..., EvalSet]] = {
    "flickr30k": partial(load_karpathy, name="flickr30k"),
    "coco": partial(load_karpathy, name="coco"),
    "urban1k": load_urban1k,
    "sharegpt4v": load_sharegpt4v,
}
"""The loaders by name; each takes ``(data, *, split, limit)``."""
