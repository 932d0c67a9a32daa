"""Loaders of the candidate-list benchmarks of METHOD.md §4: SugarCrepe and the MMEB eval subsets.

Layouts (``data`` is the folder given to the loader):

- SugarCrepe: ``data/<category>.json`` for the 7 categories (:data:`SUGARCREPE_CATEGORIES`), each a JSON object
  ``{"<id>": {"filename": "...jpg", "caption": positive, "negative_caption": negative}}``; the COCO val2017
  image is looked up in ``data/images/``, ``data/val2017/``, then ``data/``. Question id: the JSON key.
- MMEB (TIGER-Lab/MMEB-eval): one folder per subset, ``data/<Subset>/test-*.parquet`` (the repository's
  layout), ``data/<Subset>/test/*.parquet`` (the parquet-converter's) or ``data/<Subset>/test.jsonl``, with
  the columns ``qry_text``, ``qry_img_path`` (``""``: none), ``tgt_text`` and ``tgt_img_path`` (lists, one entry
  per candidate; candidate 0 is the positive). Image paths are relative to the unpacked ``images.zip`` in
  ``data/eval_images/`` (or ``data/images/``, or ``data/``). Query id: the row's index in the subset (0-based,
  bad rows counted); candidate id: a hash of what the candidate shows, so a candidate shared by many queries
  is embedded once.

MMEB's texts are written for instruction-following embedding models (VLM2Vec): the ``<|image_1|>`` placeholder
is removed, and the embedding model's instructions are dropped unless ``keep_instructions``, so CLIP embeds and
the MLLM reads only the content:

1. MMEB's own instructions, text by text (:data:`MMEB_WHOLE_INSTRUCTIONS`, :data:`MMEB_INSTRUCTION_PREFIXES`):
   a text that is one (``Represent the given image.``) leaves an image item its image alone; a text that opens
   with one keeps what follows (MSCOCO_t2i's ``Find me an everyday image that matches the given caption:
   <caption>``, the VQA subsets' ``Represent the given image with the following question: <question>``,
   VisualNews_t2i's ``Retrieve an image of this news caption. <caption>``, RefCOCO's ``... follows the language
   expressions. <expression>``, MSCOCO grounding's ``Crop the image to to isolate the object labeled as
   "<label>"`` without the quotes). A text-only item whose text is only an instruction has nothing to search
   with or for: its row is reported in ``problems`` and skipped.
   HatefulMemes' ``Represent the given image for binary classification to determine whether it constitutes
   hateful speech or not`` is the question its Yes/No candidates answer, so it stays.
2. Then, for wordings not in those tables, an opening that every query (or candidate) text of a subset has (at
   least :data:`MIN_SHARED` different texts, so a small file's coincidences are content), up to its first colon
   followed by whitespace, with 3 words or more before it (so a common ``Q:`` is content). A whole text that
   every query shares is not dropped by this rule: the same question asked of every image is still the question.

What was dropped is in :attr:`MMEBSubset.instructions` (and the run's ``results.json``). It is found over the
whole file, so ``limit`` does not change what a query says.

A bad entry (not an object, empty caption, missing image, unreadable row) is skipped and described in
``problems`` as ``"FILE: KEY: reason"`` (SugarCrepe), ``"FILE: row N: reason"`` (parquet) or
``"FILE:LINE: reason"`` (JSONL); FILE is relative to ``data``. A missing category file or subset is reported
too; only when no question is left is it an error (one line: the folder, the count skipped and the first reason).
``limit`` keeps the first N good questions per category/subset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retllm.errors import BadItemError, ConfigError, MissingDependencyError
from retllm.eval.datasets import iter_json_records, not_utf8, nothing_to_evaluate
from retllm.types import Item

log = logging.getLogger(__name__)

SUGARCREPE_CATEGORIES = ("add_obj", "add_att", "replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att")
SUGARCREPE_IMAGE_DIRS = ("images", "val2017", "")
MMEB_IMAGE_DIRS = ("eval_images", "images", "")
MMEB_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
_INSTRUCTION_END = re.compile(r":(?:\s|$)")

MMEB_WHOLE_INSTRUCTIONS = frozenset(
    {
        "Represent the given image",
        "Represent the given image for classification",
        "Represent the given cropped image of the object",
        "Represent the given document screenshot",
        "Find an image caption describing the given everyday image",
        "Find a caption for the news in the given photo",
        "Find a day-to-day image that looks similar to the provided image",
        "Identify the scene shown in the image",
        "Identify the object shown in the image",
        "Identify the country depicted in the image",
    }
)
"""MMEB's instructions that are a whole text (placeholders removed, trailing period and spaces ignored)."""

MMEB_INSTRUCTION_PREFIXES = tuple(
    sorted(
        {
            "Represent the given image with the following question:",
            "Represent the given news image with the following caption for domain classification:",
            "Represent the given dialogue about an image, which is used for image retrieval:",
            "Represent the given Wikipedia image with related text information:",
            "Represent the given image with related text information:",
            "Find me an everyday image that matches the given caption:",
            "Find an image to match the fashion image and style note:",
            "Find a Wikipedia image that answers this question:",
            "Find a news image that matches the provided caption:",
            "Find the document image that can answer the given query:",
            "Given an image, find a similar everyday image with the described changes:",
            "Retrieve an image of this news caption.",
            "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image:",
            "Select the portion of the image that isolates the object labeled as",
            "Select the portion of the image that isolates the object of the given label:",
            "Crop the image to to isolate the object labeled as",
            "Select the portion of the image that follows the language expressions.",
            "Select the portion of the image that follows the language expressions:",
            "Select the portion of the image that answers the question",
        },
        key=len,
        reverse=True,  # the longest first, so a longer instruction is never cut after a shorter one's end
    )
)
"""MMEB's instructions that open a text, the content following (placeholders removed)."""

MIN_SHARED = 5
"""Different texts that must share an opening before it counts as an instruction not in the tables."""


@dataclass(frozen=True)
class SugarCrepeQuestion:
    """One SugarCrepe question: which of two captions describes the image."""

    id: str
    image: Path
    positive: str
    negative: str


@dataclass
class SugarCrepeSet:
    """SugarCrepe's questions by category (in :data:`SUGARCREPE_CATEGORIES` order) and what was skipped."""

    categories: dict[str, list[SugarCrepeQuestion]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    name: str = "sugarcrepe"
    split: str = "test"
    root: Path | None = None
    """The folder it was loaded from (named in the errors of a run left with nothing to evaluate)."""


@dataclass(frozen=True)
class MMEBQuery:
    """One MMEB query and its own candidate list (candidate ids, the positive first, each once)."""

    id: str
    text: str | None
    image: Path | None
    candidates: tuple[str, ...]


@dataclass
class MMEBSubset:
    """One MMEB subset: its queries, the candidates they name (by id), and the instructions dropped."""

    name: str
    queries: list[MMEBQuery] = field(default_factory=list)
    candidates: dict[str, Item] = field(default_factory=dict)
    instructions: dict[str, str] = field(default_factory=dict)
    """``"query"``/``"candidate"`` (an instruction that was a whole text) and ``"query_prefix"``/
    ``"candidate_prefix"`` (an instruction that opened the text) -> what was dropped from that side (several
    different ones joined by `` | ``)."""

    def positive(self, query: MMEBQuery) -> str:
        return query.candidates[0]


@dataclass
class MMEBSet:
    """The MMEB subsets that loaded (in the order asked, else by name) and what was skipped."""

    subsets: dict[str, MMEBSubset] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    name: str = "mmeb"
    split: str = "test"
    root: Path | None = None
    """The folder it was loaded from (named in the errors of a run left with nothing to evaluate)."""
    instructions_kept: bool = False
    """Loaded with ``keep_instructions``: the texts (so the candidate ids) differ from a default load's."""


def _check(data: Path, limit: int | None, what: str) -> Path:
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    data = Path(data)
    if not data.is_dir():
        raise ConfigError(f"{what}: dataset folder {data} does not exist")
    return data


def _text(value: object) -> str | None:
    """A caption as given, stripped; None when missing or blank."""
    return value.strip() or None if isinstance(value, str) else None


# --- SugarCrepe --------------------------------------------------------------------------------------------------


def _sugar_question(key: str, entry: object, image: Callable[[str], Path | None]) -> SugarCrepeQuestion | str:
    """One entry as a question, or why it is not one."""
    if not isinstance(entry, dict):
        return "not an object"
    name, pos, neg = _text(entry.get("filename")), _text(entry.get("caption")), _text(entry.get("negative_caption"))
    if name is None:
        return "no filename"
    if pos is None:
        return "empty or missing caption"
    if neg is None:
        return "empty or missing negative_caption"
    im = image(name)
    if im is None:
        return f"image {name} not found in images/, val2017/ or the data folder"
    return SugarCrepeQuestion(key, im, pos, neg)


def load_sugarcrepe(data: Path, *, categories: Sequence[str] | None = None, limit: int | None = None) -> SugarCrepeSet:
    """SugarCrepe's questions from ``data`` (layout in the module docstring).

    Args:
        categories: The categories to read (default all 7).
        limit: Keep the first N good questions of each category, in file order.

    Raises:
        ConfigError: Missing folder, unknown category, negative limit, no category file at all, or no usable
            question in any (:func:`~retllm.eval.datasets.nothing_to_evaluate`).
    """
    data = _check(data, limit, "sugarcrepe")
    wanted = list(categories or SUGARCREPE_CATEGORIES)
    if bad := [c for c in wanted if c not in SUGARCREPE_CATEGORIES]:
        raise ConfigError(f"unknown SugarCrepe category {bad[0]!r}; valid: {', '.join(SUGARCREPE_CATEGORIES)}")
    out = SugarCrepeSet(root=data)
    found: dict[str, Path | None] = {}

    def image(name: str) -> Path | None:
        if name not in found:
            found[name] = next((p for d in SUGARCREPE_IMAGE_DIRS if (p := data / d / name).is_file()), None)
        return found[name]

    files = 0
    for cat in wanted:
        path = data / f"{cat}.json"
        if not path.is_file():
            out.problems.append(f"{path.name}: not found in {data}; category skipped")
            continue
        files += 1
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            out.problems.append(f"{path.name}: not JSON ({e}); category skipped")
            continue
        if not isinstance(entries, dict):
            out.problems.append(f"{path.name}: not a JSON object of questions; category skipped")
            continue
        kept: list[SugarCrepeQuestion] = []
        for key, entry in entries.items():
            if limit is not None and len(kept) >= limit:
                break
            q = _sugar_question(str(key), entry, image)
            if isinstance(q, str):
                out.problems.append(f"{path.name}: {key}: {q}")
            else:
                kept.append(q)
        out.categories[cat] = kept
    if not files:
        raise ConfigError(f"no SugarCrepe category file ({', '.join(f'{c}.json' for c in wanted)}) in {data}")
    if not any(out.categories.values()):
        raise nothing_to_evaluate(out.name, data, out.problems)
    if out.problems:
        log.warning("sugarcrepe: %d problem(s), e.g. %s", len(out.problems), out.problems[0])
    return out


# --- MMEB --------------------------------------------------------------------------------------------------------


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependencyError(
            f"reading MMEB's parquet files needs pyarrow ({e}): pip install 'retllm[eval]'"
        ) from e
    return pq


def _subset_files(folder: Path) -> list[Path]:
    """The subset's data files in the first layout present: test-*.parquet, test/*.parquet, test.jsonl."""
    for pattern in ("test-*.parquet", "test/*.parquet", "test.jsonl"):
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def _records(path: Path, rel: str, problems: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` of each row of one data file; rows that are not objects are reported and skipped."""
    if path.suffix == ".jsonl":
        for n, row in iter_json_records(path):
            if isinstance(row, ValueError):
                problems.append(f"{rel}:{n}: not JSON ({row})")
                yield "", {}
            elif not isinstance(row, dict):
                problems.append(f"{rel}:{n}: not a JSON object")
                yield "", {}
            else:
                yield f"{rel}:{n}", row
        return
    pq = _pyarrow_parquet()
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for a damaged file
        problems.append(f"{rel}: unreadable parquet file ({type(e).__name__}: {e})")
        return
    if missing := [c for c in MMEB_COLUMNS if c not in table.column_names]:
        problems.append(f"{rel}: missing column(s) {', '.join(missing)}; file skipped")
        return
    for n, row in enumerate(table.select(list(MMEB_COLUMNS)).to_pylist()):
        yield f"{rel}: row {n}", row


@dataclass
class _Row:
    where: str
    index: int
    text: str | None
    image: str | None
    cands: list[tuple[str | None, str | None]]


def _parse_row(row: dict[str, Any]) -> tuple[str | None, str | None, list[tuple[str | None, str | None]]]:
    """(query text, query image, [(text, image)]) with placeholders removed; ValueError says what is wrong."""

    def clean(v: object, name: str) -> str | None:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError(f"{name} is a {type(v).__name__}, not text")
        if not_utf8(v):
            raise ValueError(f"{name} is not UTF-8")
        return _PLACEHOLDER.sub("", v).strip() or None

    qt, qi = clean(row.get("qry_text"), "qry_text"), clean(row.get("qry_img_path"), "qry_img_path")
    if qt is None and qi is None:
        raise ValueError("the query has neither text nor image")
    tt: Any = row.get("tgt_text")  # checked below
    ti: Any = row.get("tgt_img_path")
    if tt is None and ti is None:
        raise ValueError("no candidates (tgt_text and tgt_img_path are both missing)")
    for name, v in (("tgt_text", tt), ("tgt_img_path", ti)):
        if v is not None and not isinstance(v, list):
            raise ValueError(f"{name} is a {type(v).__name__}, not a list")
    # one side missing: the candidates are all image, or all text
    tt = [None] * len(ti) if tt is None else tt
    ti = [None] * len(tt) if ti is None else ti
    if len(ti) != len(tt):
        raise ValueError(f"tgt_img_path has {len(ti)} entries but tgt_text {len(tt)}: one per candidate each")
    if not tt:
        raise ValueError("no candidates")
    cands = [
        (clean(t, f"tgt_text[{j}]"), clean(i, f"tgt_img_path[{j}]"))
        for j, (t, i) in enumerate(zip(tt, ti, strict=True))
    ]
    if empty := [j for j, (t, i) in enumerate(cands) if t is None and i is None]:
        raise ValueError(f"candidate {empty[0]} has neither text nor image")
    return qt, qi, cands


_QUOTED_LABEL = ("labeled as", "of the given label:")
"""The grounding instructions whose content is a label in double quotes (``... labeled as "dog"``)."""


class _OnlyInstruction(ValueError):
    """A text-only item whose text is only one of MMEB's instructions: nothing is left to search with or for."""


def _known_instruction(text: str | None, has_image: bool) -> tuple[str | None, tuple[str, str] | None]:
    """``text`` without MMEB's instruction, and ``("", instruction)`` (a whole text) or ``("_prefix",
    instruction)`` for what was dropped.

    Raises:
        _OnlyInstruction: The text is only an instruction and there is no image.
    """
    if text is None:
        return None, None
    if text.rstrip(" .") in MMEB_WHOLE_INSTRUCTIONS:
        if not has_image:
            raise _OnlyInstruction(f"its text is only the instruction {text!r} and it has no image")
        return None, ("", text)
    for inst in MMEB_INSTRUCTION_PREFIXES:
        if text.startswith(inst):
            rest = text[len(inst) :].strip()
            if inst.endswith(_QUOTED_LABEL) and len(rest) >= 2 and rest[0] == rest[-1] == '"' and '"' not in rest[1:-1]:
                rest = rest[1:-1].strip()
            if not rest and not has_image:
                raise _OnlyInstruction(f"its text is only the instruction {inst!r} and it has no image")
            return rest or None, ("_prefix", inst)
    return text, None


def _shared_prefix(texts: Iterable[str]) -> str | None:
    """The instruction all of ``texts`` open with: their common start up to its first colon followed by
    whitespace (in every text, or the text's end), when there are :data:`MIN_SHARED` or more different texts and
    the head before the colon has 3 words or more (so a shared ``"Q:"`` or ``"Photo:"`` is content)."""
    distinct = set(texts)
    if len(distinct) < MIN_SHARED:
        return None
    m = _INSTRUCTION_END.search(os.path.commonprefix(list(distinct)))
    if m is None or len(m.string[: m.start()].split()) < 3:
        return None
    head = m.string[: m.start() + 1]
    if any(len(t) > len(head) and not t[len(head)].isspace() for t in distinct):
        return None  # the colon is inside content, e.g. a score "2:1" / "2:0"
    return head


def _strip_prefix(text: str | None, prefix: str | None, has_image: bool) -> str | None:
    """``text`` without the instruction ``prefix``; a text that is only the instruction is kept as it is, unless
    an image says what the item is (then it has no text)."""
    if text is None or prefix is None or not text.startswith(prefix):
        return text
    return text[len(prefix) :].strip() or (None if has_image else text)


def _drop_instructions(rows: list[_Row], problems: list[str]) -> tuple[list[_Row], dict[str, str]]:
    """Remove the embedding model's instructions from ``rows`` (module docstring): the rows left (a row whose query
    or candidate is only an instruction is described in ``problems`` and dropped), and what was removed, by kind
    (``query``/``candidate``: whole texts, ``query_prefix``/``candidate_prefix``: openings; several different ones
    joined by `` | ``)."""
    dropped: dict[str, list[str]] = {}

    def note(key: str, inst: str | None) -> None:
        if inst is not None and inst not in (seen := dropped.setdefault(key, [])):
            seen.append(inst)

    kept: list[_Row] = []
    for r in rows:  # 1. MMEB's own instructions; noted only for the rows kept
        who = "the query"
        try:
            text, f = _known_instruction(r.text, r.image is not None)
            found = [("query", f)]
            cands = []
            for j, (t, i) in enumerate(r.cands):
                who = f"candidate {j}"
                t, f = _known_instruction(t, i is not None)
                found.append(("candidate", f))
                cands.append((t, i))
        except _OnlyInstruction as e:
            problems.append(f"{r.where}: {who}: {e}")
            continue
        r.text, r.cands = text, cands
        for side, f in found:
            if f is not None:
                note(side + f[0], f[1])
        kept.append(r)
    rows = kept
    # 2. an opening every text of the subset shares
    q_pre = _shared_prefix([r.text for r in rows if r.text is not None])
    c_pre = _shared_prefix([t for r in rows for t, _ in r.cands if t is not None])
    for r in rows:
        r.text = _strip_prefix(r.text, q_pre, r.image is not None)
        r.cands = [(_strip_prefix(t, c_pre, i is not None), i) for t, i in r.cands]
    note("query_prefix", q_pre)
    note("candidate_prefix", c_pre)
    return rows, {k: " | ".join(v) for k, v in dropped.items() if v}


def candidate_id(text: str | None, image: str | None) -> str:
    """A candidate's id: a hash of what it shows (text, image path relative to the image folder)."""
    return "c" + hashlib.sha256(json.dumps([text, image]).encode()).hexdigest()[:16]


def load_mmeb(
    data: Path, subsets: Sequence[str] | None = None, *, limit: int | None = None, keep_instructions: bool = False
) -> MMEBSet:
    """MMEB eval subsets from ``data`` (layout in the module docstring).

    Args:
        subsets: Subset folder names (default: every folder of ``data`` holding a layout's file).
        limit: Keep the first N good queries of each subset, in file order.
        keep_instructions: Keep the instructions written for embedding models (module docstring; dropped by
            default).

    Raises:
        ConfigError: Missing folder, negative limit, or no subset with a usable query.
        MissingDependencyError: A subset is parquet and pyarrow is not installed.
    """
    data = _check(data, limit, "mmeb")
    names = list(subsets) if subsets else sorted(p.name for p in data.iterdir() if p.is_dir() and _subset_files(p))
    roots = [data / d for d in MMEB_IMAGE_DIRS if (data / d).is_dir()]
    found: dict[str, Path | None] = {}

    def image(rel: str) -> Path | None:
        if rel not in found:
            found[rel] = next((p for r in roots if (p := r / rel).is_file()), None)
        return found[rel]

    out = MMEBSet(instructions_kept=keep_instructions, root=data)
    for name in names:
        files = _subset_files(data / name)
        if not files:
            out.problems.append(f"{name}: no test-*.parquet, test/*.parquet or test.jsonl in {data / name}; skipped")
            continue
        rows: list[_Row] = []
        index = 0
        for path in files:
            for where, raw in _records(path, str(path.relative_to(data)), out.problems):
                index += 1
                if not where:
                    continue
                try:
                    rows.append(_Row(where, index - 1, *_parse_row(raw)))
                except ValueError as e:
                    out.problems.append(f"{where}: {e}")
        if not rows and not any(p.startswith(f"{name}/") for p in out.problems):
            out.problems.append(f"{name}: no rows; skipped")
        if not rows:
            continue
        sub = MMEBSubset(name)
        if not keep_instructions:
            rows, sub.instructions = _drop_instructions(rows, out.problems)
        for r in rows:
            if limit is not None and len(sub.queries) >= limit:
                break
            q_img = image(r.image) if r.image is not None else None
            if r.image is not None and q_img is None:
                out.problems.append(f"{r.where}: query image {r.image} not found under {', '.join(map(str, roots))}")
                continue
            if gone := [i for _, i in r.cands if i is not None and image(i) is None]:
                out.problems.append(f"{r.where}: candidate image {gone[0]} not found ({len(gone)} missing)")
                continue
            ids: list[str] = []
            try:
                for t, i in r.cands:
                    cid = candidate_id(t, i)
                    if cid not in sub.candidates:
                        sub.candidates[cid] = Item(id=cid, text=t, image=str(image(i)) if i is not None else None)
                    if cid not in ids:  # a negative identical to the positive is the positive
                        ids.append(cid)
            except BadItemError as e:  # a candidate no item may be (retllm.payload): this question only
                out.problems.append(f"{r.where}: {e}")
                continue
            sub.queries.append(MMEBQuery(str(r.index), r.text, q_img, tuple(ids)))
        out.subsets[name] = sub
    if not any(sub.queries for sub in out.subsets.values()):
        raise nothing_to_evaluate(out.name, data, out.problems, "" if out.subsets else "no MMEB subset could be read")
    if out.problems:
        log.warning("mmeb: %d problem(s), e.g. %s", len(out.problems), out.problems[0])
    return out
