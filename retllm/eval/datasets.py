"""Loaders for the retrieval benchmarks of METHOD.md §4, each into one :class:`EvalSet`.

Layouts (``data`` is the folder given to :func:`load`):

- ``flickr30k`` / ``coco``: Karpathy's split file, ``data/dataset_<name>.json`` (or the only
  ``dataset_*.json`` there). An image file is looked up in ``data/images/``, ``data/<filepath>/`` and
  ``data/images/<filepath>/`` (Karpathy's ``filepath``: COCO's ``val2014``), then the folders the official
  archives unpack to (:data:`ARCHIVE_DIRS`; COCO 2017's ``val2017/``/``train2017/`` under the name without
  the ``COCO_val2014_`` prefix), then ``data/``; the first that exists is used. Image id: the file stem
  (``imgid`` where an entry has no filename); text id: ``"<image id>#<n>"``, ``n`` the caption's index in
  the entry. The test split is 1,000 images x 5 captions (Flickr30K), 5,000 x 5 (COCO).
- ``urban1k``: ``data/image/<stem>.<ext>`` and ``data/caption/<stem>.txt`` (or both under ``data/Urban1k/``,
  as ``Urban1k.zip`` unpacks), paired by file stem and ordered by stem (numbers numerically); text id
  ``"<stem>#0"``.
- ``sharegpt4v``: the first 1,000 entries of the share-captioner JSON list (or JSON Lines) file in
  ``data`` (or ``data/sharegpt4v/``, ShareGPT4V's own ``data/`` layout); image paths relative to ``data``;
  the caption is the first ``gpt`` turn; image id the entry's ``id``, text id ``"<id>#0"``. The file is read
  incrementally, so only the head of the 1.2M-entry file is parsed.

- ``flickr30k`` / ``coco`` saved by Hugging Face ``datasets`` (``save_to_disk``; the ``eval`` extra): see
  :func:`load_hf_saved`. Used when ``data`` holds a ``state.json`` or ``dataset_dict.json``.
- ``mbeir``: M-BEIR's query JSONL files and local candidate pools (see :func:`load_mbeir`); one section per
  task, each searching its own pool.

Every text id is its own query with only its own image as positive, even where two images share a
caption word for word (the standard protocol; the duplicate is a miss for the other image's query).

A bad entry (malformed JSON line, missing image file, no usable caption, undecodable caption file) is
skipped and described in :attr:`EvalSet.problems` as ``"FILE:LINE: reason"`` or ``"FILE: reason"``
(FILE relative to ``data``); the load goes on. A load left with nothing to evaluate (no image, no query)
is an error naming the folder, the number of entries skipped and the first reason
(:func:`nothing_to_evaluate`), never an empty run. ``limit`` keeps the first N images that load, in file
order, after the split filter; entries after the N-th are not read.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from retllm.errors import BadItemError, ConfigError
from retllm.payload import check_text
from retllm.types import Item, Query, VectorName

log = logging.getLogger(__name__)

SHAREGPT4V_SIZE = 1000
SHAREGPT4V_FILE = "share-captioner_coco_lcs_sam_1246k_1107.json"
_CHUNK = 1 << 16
_MAX_RECORD = 1 << 24  # a record this long without parsing is bad JSON, not a cut one


CAPTIONS_PER_IMAGE = 5
"""Captions per image in the Karpathy test splits (METHOD.md §4: 1K / 5K images x 5 captions)."""

ARCHIVE_DIRS = {
    "flickr30k": ("flickr30k-images", "flickr30k_images", "flickr30k_images/flickr30k_images"),
    "coco": ("val2014", "train2014"),
}
"""Folders the official image archives unpack to (``flickr30k-images.tar.gz``; the Kaggle copy; COCO's
``val2014.zip``/``train2014.zip``), tried after ``images/`` and Karpathy's ``filepath``."""
COCO_2017_DIRS = ("val2017", "train2017")
_COCO_2014_NAME = re.compile(r"COCO_(?:train|val)2014_(\d+\.jpg)")
URBAN1K_DIR = "Urban1k"
SHAREGPT4V_DIR = "sharegpt4v"


def nothing_to_evaluate(name: str, data: Path | None, skipped: Sequence[str], what: str = "") -> ConfigError:
    """The error of a load or run left with no corpus item or no query, in one line: the folder, how many
    entries were skipped and the first reason (``what``: which part ended up empty, when not the whole set)."""
    n = len(skipped)
    msg = f"{name}: nothing to evaluate" + (f" in {data}" if data is not None else "") + (f": {what}" if what else "")
    msg += f"; {n} {'entry' if n == 1 else 'entries'} skipped" + (f", first: {skipped[0]}" if skipped else "")
    return ConfigError(msg.replace("\r", "\\r").replace("\n", "\\n"))


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
    root: Path | None = None
    """The folder it was loaded from (named in the errors of a run left with nothing to evaluate)."""

    def add(self, image_id: str, path: Path, captions: list[tuple[str, str]]) -> None:
        """Adds one image and its ``(text id, caption)`` pairs as mutual positives; a caption no item may hold
        (:mod:`retllm.payload`: a NUL, a lone surrogate, past the length) is skipped and listed, and an image
        left with none is skipped too."""
        kept = []
        for text_id, caption in captions:
            try:
                check_text(caption, f"caption {text_id!r}")
                kept.append((text_id, caption))
            except BadItemError as e:
                self.problems.append(f"{image_id}: {e}")
        if not kept:
            return
        captions = kept
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


def load(
    name: str, data: Path, *, split: str = "test", limit: int | None = None, tasks: Sequence[str] | None = None
) -> EvalSet:
    """Loads the benchmark ``name`` from the folder ``data``.

    Args:
        name: One of :data:`DATASETS`.
        data: The dataset folder (layouts in the module docstring).
        split: Karpathy split for ``flickr30k``/``coco``; the others have only ``"test"``.
        limit: Keep the first N images (with their captions), in file order; for ``mbeir`` the first N queries
            of each task. ``None`` keeps all.
        tasks: ``mbeir`` only: the tasks to load (``mscoco_task0``...); ``None``: every query file of the split.

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
    if tasks is not None and name != "mbeir":
        raise ConfigError(f"{name} has no tasks; --task is for mbeir")
    out = DATASETS[name](data, split=split, limit=limit, **({"tasks": tasks} if name == "mbeir" else {}))
    out.root = data
    if not out.images and not any(t.queries for t in out.tasks):
        raise nothing_to_evaluate(name, data, out.problems)
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
    """Loads Flickr30K or COCO from Karpathy's ``dataset_<name>.json``, or from a Hugging Face ``datasets`` folder
    written by ``save_to_disk`` (see the module docstring)."""
    if any((data / f).is_file() for f in HF_MARKERS):
        return load_hf_saved(data, name=name, split=split, limit=limit)
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
        if not_utf8(filename):
            out.problems.append(f"{where}: file name is not UTF-8")
            continue
        if image_id in out.images:
            out.problems.append(f"{where}: duplicate image id {image_id!r}")
            continue
        image = karpathy_image(data, name, filename, entry.get("filepath"))
        if isinstance(image, str):
            out.problems.append(f"{where}: {image}")
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            out.problems.append(f"{where}: no sentences list")
            continue
        captions = []
        for n, s in enumerate(sentences):
            raw = s.get("raw") if isinstance(s, dict) else None
            if isinstance(raw, str) and raw.strip() and not_utf8(raw):
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


def karpathy_image(data: Path, name: str, filename: str, filepath: object = None) -> Path | str:
    """A Karpathy entry's image file (lookup order in the module docstring), or why there is none: the
    folders looked in."""
    sub = filepath if isinstance(filepath, str) and filepath else None
    tries = [("images", filename), *([(sub, filename), (f"images/{sub}", filename)] if sub else [])]
    tries += [(d, filename) for d in ARCHIVE_DIRS.get(name, ())]
    if name == "coco" and (m := _COCO_2014_NAME.fullmatch(filename)):  # the 2017 archives: number alone
        tries += [(d, m.group(1)) for d in COCO_2017_DIRS]
    tries.append((".", filename))
    for folder, file in dict.fromkeys(tries):
        if (data / folder / file).is_file():
            return data / folder / file
    looked = ", ".join(dict.fromkeys(f"{f}/" if f != "." else "./" for f, _ in tries))
    return f"image {filename} not found in {looked}"


def _natural(stem: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", stem))


def _by_stem(folder: Path, data: Path, out: EvalSet) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if not_utf8(p.name):
            out.problems.append(f"{_rel(p, data)}: file name is not UTF-8; skipped")
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
    base = data / URBAN1K_DIR if not (data / "image").is_dir() and (data / URBAN1K_DIR).is_dir() else data
    image_dir, caption_dir = base / "image", base / "caption"
    for d in (image_dir, caption_dir):
        if not d.is_dir():
            raise ConfigError(
                f"urban1k: no {d.name}/ folder in {base} (expected image/ and caption/, or {URBAN1K_DIR}/ holding them)"
            )
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


def not_utf8(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (lone surrogates from ``surrogateescape`` decoding)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_here(folder: Path) -> bool:
    return any(p.is_file() for pattern in ("*.json", "*.jsonl") for p in folder.glob(pattern))


def load_sharegpt4v(data: Path, *, split: str = "test", limit: int | None = None) -> EvalSet:
    """Loads the first 1,000 entries of the ShareGPT4V share-captioner file (see the module docstring)."""
    _only_test("sharegpt4v", split)
    home = data / SHAREGPT4V_DIR if (data / SHAREGPT4V_DIR).is_dir() and not _json_here(data) else data
    path = _one_file(home, "sharegpt4v", SHAREGPT4V_FILE, ("share-captioner*.json*", "*.json", "*.jsonl"))
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
        if not_utf8(image_id) or not_utf8(rel):
            out.problems.append(f"{where}: id or image path is not UTF-8")
            continue
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
        if not_utf8(caption):
            out.problems.append(f"{where}: caption is not UTF-8")
            continue
        out.add(image_id, data / rel, [(f"{image_id}#0", caption.strip())])
    return out


HF_MARKERS = ("dataset_dict.json", "state.json")
"""Files ``save_to_disk`` writes at the top of its folder (a ``DatasetDict``, a ``Dataset``)."""
_HF_CAPTIONS = ("caption", "captions", "sentences", "raw", "text")
_HF_IDS = ("filename", "img_id", "image_id", "id")


def load_hf_saved(data: Path, *, name: str, split: str = "test", limit: int | None = None) -> EvalSet:
    """Loads an image-caption set saved by ``datasets``' ``save_to_disk`` (e.g. ``nlphuji/flickr30k``).

    A ``DatasetDict`` gives the split by key; a single dataset with a ``split`` column is filtered on it. The
    captions come from the first of ``caption``/``captions``/``sentences``/``raw``/``text`` (a string, a list
    of strings, or Karpathy's ``[{"raw": ...}]``); the image from an ``image`` column (its file where the
    saved path still exists, else its bytes written once to ``data/.retllm-images/``) or a ``filename``
    looked up like Karpathy's. Image id: the ``filename`` stem, else ``img_id``/``image_id``/``id``, else
    the row number.
    """
    try:
        import datasets as hf
    except ImportError as e:
        raise ConfigError(f"{name}: {data} is a Hugging Face datasets folder; pip install 'retllm[eval]'") from e
    try:
        saved = hf.load_from_disk(str(data))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"{name}: {data} is not a readable save_to_disk folder: {e}") from e
    if isinstance(saved, hf.DatasetDict):
        if split not in saved:
            raise ConfigError(f"{name}: no split {split!r} in {data} (splits there: {', '.join(saved) or 'none'})")
        ds = saved[split]
    else:
        ds = saved
    cols = set(ds.column_names)
    by_column = "split" in cols  # one table of every split: rows of other splits are passed over (not filtered
    if by_column:  # into a new table), so a problem's row number is the row's own
        have = {str(x) for x in ds["split"]}
        if split not in have:
            raise ConfigError(f"{name}: no row of split {split!r} in {data} (splits there: {', '.join(sorted(have))})")
    cap_col = next((c for c in _HF_CAPTIONS if c in cols), None)
    if cap_col is None:
        raise ConfigError(f"{name}: {data} has no caption column (looked for {', '.join(_HF_CAPTIONS)})")
    if "image" in cols and isinstance(ds.features["image"], hf.Image):
        ds = ds.cast_column("image", hf.Image(decode=False))
    elif "filename" not in cols:
        raise ConfigError(f"{name}: {data} has neither an image column nor a filename column")
    id_col = next((c for c in _HF_IDS if c in cols), None)
    cache = data / ".retllm-images"
    out = EvalSet(name, split)
    for row_no, row in enumerate(ds):
        if _full(out, limit):
            break
        if by_column and row.get("split") != split:
            continue
        where = f"{split}[{row_no}]" if not by_column else f"row {row_no}"
        raw_id = row.get(id_col) if id_col else None
        if raw_id is None or raw_id == "":
            image_id = str(row_no)
        else:
            image_id = Path(str(raw_id)).stem if id_col == "filename" else str(raw_id)
        if not_utf8(image_id):
            out.problems.append(f"{where}: image id is not UTF-8")
            continue
        if image_id in out.images:
            out.problems.append(f"{where}: duplicate image id {image_id!r}")
            continue
        image = _hf_image(row, data, cache, image_id, name)
        if isinstance(image, str):
            out.problems.append(f"{where}: {image}")
            continue
        caps = row.get(cap_col)
        caps = [caps] if isinstance(caps, str) else caps if isinstance(caps, list) else []
        texts = [(c.get("raw") if isinstance(c, dict) else c) for c in caps]
        captions = [(f"{image_id}#{n}", t.strip()) for n, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        if not captions:
            out.problems.append(f"{where}: no captions")
            continue
        if len(captions) > CAPTIONS_PER_IMAGE:
            out.problems.append(f"{where}: {len(captions)} captions, the first {CAPTIONS_PER_IMAGE} kept")
            captions = captions[:CAPTIONS_PER_IMAGE]
        out.add(image_id, image, captions)
    return out


def _hf_image(row: dict[str, Any], data: Path, cache: Path, image_id: str, name: str) -> Path | str:
    """The row's image as a file path, or why there is none."""
    from retllm.images import image_mime

    img = row.get("image")
    if isinstance(img, dict):
        path = img.get("path")
        if isinstance(path, str) and path and Path(path).is_file() and not img.get("bytes"):
            return Path(path)
        blob = img.get("bytes")
        if isinstance(blob, bytes) and blob:
            mime = image_mime(blob)
            if not mime.startswith("image/"):
                return "image bytes are not an image"
            # named by content: ids that differ only in characters a file name cannot hold never share a file
            target = cache / f"{hashlib.sha256(blob).hexdigest()[:32]}.{mime.split('/')[1]}"
            if not target.is_file() or target.read_bytes() != blob:
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(blob)
                except OSError as e:
                    raise ConfigError(f"cannot write the images of {data} to {cache}: {e}") from e
            return target
        return "no image"
    filename = row.get("filename")
    if isinstance(filename, str) and filename:
        return karpathy_image(data, name, filename, row.get("filepath"))
    return "no image"


MBEIR_POOL_DIR = Path("cand_pool") / "local"


def load_mbeir(
    data: Path, *, split: str = "test", limit: int | None = None, tasks: Sequence[str] | None = None
) -> EvalSet:
    """Loads M-BEIR tasks with their local candidate pools (METHOD.md §4).

    Layout (the dataset's own): ``data/query/<split>/mbeir_<task>_<split>.jsonl`` (``qid``, ``query_txt``,
    ``query_img_path``, ``query_modality``, ``pos_cand_list``) and ``data/cand_pool/local/mbeir_<task>_cand_pool.jsonl``
    (``did``, ``txt``, ``img_path``, ``modality``; the COCO pools are named ``mbeir_<task>_<split>_cand_pool.jsonl``,
    both names are tried); image paths relative to ``data``. Each task is a section searching its own pool; a
    query's positives are its ``pos_cand_list`` entries present in the pool. A task without its pool is skipped
    and reported; when no task has a query left, that is an error.
    """
    qdir = data / "query" / split
    if not qdir.is_dir():
        raise ConfigError(f"mbeir: no query/{split}/ folder in {data}")
    found = {p.name[len("mbeir_") : -len(f"_{split}.jsonl")]: p for p in sorted(qdir.glob(f"mbeir_*_{split}.jsonl"))}
    if tasks is None:
        chosen = list(found)
        if not chosen:
            raise ConfigError(f"mbeir: no mbeir_<task>_{split}.jsonl in {qdir}")
    else:
        unknown = [t for t in tasks if t not in found]
        if unknown:
            raise ConfigError(f"mbeir: no query file for {', '.join(unknown)}; there: {', '.join(found) or 'none'}")
        chosen = list(dict.fromkeys(tasks))
    out = EvalSet("mbeir", split)
    for task in chosen:
        # the release names most pools mbeir_<task>_cand_pool.jsonl, the COCO ones mbeir_<task>_<split>_cand_pool.jsonl
        names = [f"mbeir_{task}_{split}_cand_pool.jsonl", f"mbeir_{task}_cand_pool.jsonl"]
        pool_file = next((data / MBEIR_POOL_DIR / n for n in names if (data / MBEIR_POOL_DIR / n).is_file()), None)
        if pool_file is None:
            out.problems.append(
                f"{MBEIR_POOL_DIR}/: no local candidate pool for {task} ({' or '.join(names)}); task skipped"
            )
            continue
        pool = _mbeir_pool(pool_file, data, out)
        if not pool:
            out.problems.append(f"{_rel(pool_file, data)}: no usable candidate; task skipped")
            continue
        out.pools[task] = list(pool.values())
        section = Section(task, task, None)
        _mbeir_queries(found[task], data, set(pool), section, out, limit)
        out.tasks.append(section)
    return out


def _mbeir_image(rel: Any, data: Path) -> Path | str | None:
    """``None`` for no image, the file, or why it cannot be used."""
    if rel is None or rel == "":
        return None
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        return f"image path {rel!r} is not a relative path"
    if not_utf8(rel):
        return "image path is not UTF-8"
    return data / rel if (data / rel).is_file() else f"image {rel} not found"


def _mbeir_entry(
    rec: Any, data: Path, seen: Mapping[str, Any], keys: tuple[str, str, str, str]
) -> tuple[str, str | None, str | None] | str:
    """``(id, text, image path)`` of a pool candidate or a query record, or why it is skipped.

    ``keys``: the record's id, text and image fields, and the word naming its text in messages (``"query "``).
    """
    id_key, text_key, image_key, noun = keys
    if not isinstance(rec, dict) or not isinstance(rec.get(id_key), str | int):
        return f"no {id_key}"
    rid = str(rec[id_key])
    if not_utf8(rid):
        return f"{id_key} is not UTF-8"
    if rid in seen:
        return f"duplicate {id_key} {rid!r}"
    image = _mbeir_image(rec.get(image_key), data)
    if isinstance(image, str):
        return image
    txt = rec.get(text_key)
    text = txt.strip() if isinstance(txt, str) and txt.strip() else None
    if text is not None and not_utf8(text):
        return f"{noun}text is not UTF-8"
    if text is None and image is None:
        return f"neither {noun}text nor image"
    return rid, text, str(image) if image else None


def _mbeir_pool(path: Path, data: Path, out: EvalSet) -> dict[str, Item]:
    fname = _rel(path, data)
    pool: dict[str, Item] = {}
    for line, rec in iter_json_records(path):
        where = f"{fname}:{line}"
        if isinstance(rec, ValueError):
            out.problems.append(f"{where}: malformed JSON ({rec})")
            continue
        got = _mbeir_entry(rec, data, pool, ("did", "txt", "img_path", ""))
        if isinstance(got, str):
            out.problems.append(f"{where}: {got}")
            continue
        did, text, image = got
        try:
            pool[did] = Item(id=did, text=text, image=image)
        except BadItemError as e:  # a candidate no item may be (retllm.payload): this one only
            out.problems.append(f"{where}: {e}")
    return pool


def _mbeir_queries(path: Path, data: Path, pool: set[str], section: Section, out: EvalSet, limit: int | None) -> None:
    fname = _rel(path, data)
    for line, rec in iter_json_records(path):
        if limit is not None and len(section.queries) >= limit:
            return
        where = f"{fname}:{line}"
        if isinstance(rec, ValueError):
            out.problems.append(f"{where}: malformed JSON ({rec})")
            continue
        got = _mbeir_entry(rec, data, section.queries, ("qid", "query_txt", "query_img_path", "query "))
        if isinstance(got, str):
            out.problems.append(f"{where}: {got}")
            continue
        qid, text, image = got
        pos = rec.get("pos_cand_list")
        listed = {str(p) for p in pos} if isinstance(pos, list) else set()
        positives = listed & pool
        if not positives:
            why = "no positive in the candidate pool" if listed else "no pos_cand_list"
            out.problems.append(f"{where}: {why}")
            continue
        if len(positives) < len(listed):
            out.problems.append(f"{where}: {len(listed) - len(positives)} positive(s) not in the pool, ignored")
        section.queries[qid] = Query(text=text, image=image)
        section.positives[qid] = positives


DATASETS: dict[str, Callable[..., EvalSet]] = {
    "flickr30k": partial(load_karpathy, name="flickr30k"),
    "coco": partial(load_karpathy, name="coco"),
    "urban1k": load_urban1k,
    "sharegpt4v": load_sharegpt4v,
    "mbeir": load_mbeir,
}
"""The loaders by name; each takes ``(data, *, split, limit)``."""
