"""An on-disk score cache for evaluation: a pair the model judged once under the same settings is not sent again.

:class:`CachedScorer` wraps any :class:`~retllm.scorers.base.Scorer`. Each pair's key is a sha256 of the inner
scorer's id, a fingerprint of every setting that changes scores (:func:`settings_fingerprint`), the query (text,
image content) and the candidate (id, text, image content). Hits come from SQLite; the misses go to the inner
scorer in one call, so batching stays the inner scorer's. Fallbacks are never stored: a rerun retries them.

Listwise answers (:meth:`~retllm.scorers.base.Scorer.choose`) are kept too, one per model call: the option
log-probabilities of one presentation, keyed by the same scorer id and fingerprint, the query, and the options
in the order shown. An answer that cannot be read raises and is not stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retllm.images import is_url
from retllm.scorers.base import Candidate, Score, Scorer
from retllm.types import ImageSource, Query

if TYPE_CHECKING:
    from PIL import Image

    from retllm.events import EventSink
    from retllm.settings import Settings

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    key TEXT PRIMARY KEY,
    scorer TEXT NOT NULL,
    score TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS choices (
    key TEXT PRIMARY KEY,
    scorer TEXT NOT NULL,
    answer TEXT NOT NULL,
    created REAL NOT NULL
)
"""


@lru_cache(maxsize=1)
def prompts_hash() -> str:
    """sha256 over the prompt files of ``retllm.prompts`` (name and content) and every scoring prompt rendered
    with :data:`~retllm.prompting.RENDER_PROBE` in every field, so an edited prompt, or another way of putting
    data into one (:func:`~retllm.prompting.delimit`, :func:`~retllm.prompting.render`), is a new key."""
    from retllm.errors import ConfigError
    from retllm.prompting import RENDER_PROBE, load_prompt, render

    h = hashlib.sha256()
    files = sorted(
        (p for p in resources.files("retllm.prompts").iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name
    )
    for p in files:
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
        try:
            spec = load_prompt(p.name.removesuffix(".yaml"))
        except ConfigError:  # not a scoring prompt (the chat agent's system prompt): its bytes are enough
            continue
        for options in (None, [RENDER_PROBE, RENDER_PROBE]):
            parts = render(
                spec,
                query_text=RENDER_PROBE,
                query_image=True,
                candidate_text=RENDER_PROBE,
                candidate_image=True,
                options=options,
            ).parts
            h.update(json.dumps(parts).encode())
    return h.hexdigest()


def settings_fingerprint(settings: Settings) -> str:
    """The settings that change a pair's score, as canonical JSON (throughput settings left out)."""
    from retllm.device import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    local = settings.scorer.startswith("hf:")
    return json.dumps(
        {
            # what a local model really runs in ("auto" is fp32 on CPU, bf16 on CUDA), and which server answers
            "dtype": str(resolve_dtype(device, settings.dtype)) if local else None,
            "device": device.type if local else None,
            "endpoint": None if local else settings.openai_base_url,
            "retrace": settings.retrace.model_dump(mode="json"),
            "min_image_tokens": settings.scorer_min_image_tokens,
            "max_image_tokens": settings.scorer_max_image_tokens,
            "image_side": settings.scorer_image_side,
            "revisit": settings.revisit,
            "max_revisits": settings.max_revisits,
            "send_image_urls": settings.send_image_urls,
            "prompts": prompts_hash(),
        },
        sort_keys=True,
    )


def score_to_json(score: Score) -> str:
    """A :class:`Score` as JSON; :func:`score_from_json` gives back an equal one (floats round-trip exactly)."""
    return json.dumps(dataclasses.asdict(score))


def score_from_json(text: str) -> Score:
    return Score(**json.loads(text))


class CachedScorer(Scorer):
    """Any scorer, with its scores kept in a SQLite file.

    Attributes:
        hits: Pairs (and listwise presentations) answered from the cache.
        misses: Pairs (and listwise presentations) sent to the inner scorer (the model calls an evaluation pays for).
    """

    def __init__(self, inner: Scorer, path: Path, *, fingerprint: str = "") -> None:
        """Open (or create) the cache at ``path``; ``fingerprint`` is part of every key.

        ``fingerprint`` names the settings that change scores (see :func:`settings_fingerprint`).

        The inner scorer stays the caller's: :meth:`close` closes the cache file only.
        """
        self.inner = inner
        self.id = inner.id
        self.limits = inner.limits
        self.max_revisits = inner.max_revisits
        self.fingerprint = fingerprint
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, int, int], str] = {}
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._db.commit()

    # --- keys ------------------------------------------------------------------------------------

    def _image_digest(self, src: ImageSource | None) -> str | None:
        if src is None:
            return None
        if isinstance(src, bytes):
            return "sha256:" + hashlib.sha256(src).hexdigest()
        if is_url(src):
            return "url:" + str(src)  # the reference: fetching every URL to hash it would cost what the cache saves
        path = Path(src)
        try:
            st = path.stat()
        except OSError:
            return "path:" + str(path)  # unreadable: the inner scorer falls back, and fallbacks are not stored
        memo = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            known = self._digests.get(memo)
        if known is None:
            known = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
            with self._lock:
                self._digests[memo] = known
        return known

    def key(self, query: Query, candidate: Candidate) -> str:
        """The cache key of one (query, candidate) pair."""
        parts: list[Any] = [
            self.inner.id,
            self.fingerprint,
            [query.text, self._image_digest(query.image)],
            [candidate.id, candidate.text, self._image_digest(candidate.image)],
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def choice_key(self, query: Query, shown: Sequence[str]) -> str:
        """The cache key of one listwise presentation: the query and the options in the order shown."""
        parts: list[Any] = [
            self.inner.id,
            self.fingerprint,
            "listwise",
            [query.text, self._image_digest(query.image)],
            list(shown),
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    # --- scoring ---------------------------------------------------------------------------------

    def score(
        self,
        query: Query,
        candidates: Sequence[Candidate],
        *,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Score]:
        """Scores in the candidates' order: cached ones looked up, the rest from one inner call, then stored."""
        keys = [self.key(query, c) for c in candidates]
        with self._lock:
            found = self._lookup(keys)
            self.hits += sum(k in found for k in keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        out: list[Score | None] = [found.get(k) for k in keys]
        if todo:
            with self._lock:
                self.misses += len(todo)
            batch = [candidates[i] for i in todo]
            if (on_event is not None or cancel is not None) and type(self.inner).score is Scorer.score:
                fresh = self.inner.score(query, batch, on_event=on_event, cancel=cancel)
            else:  # a scorer written against the older API takes no on_event
                fresh = self.inner.score(query, batch)
            for i, sc in zip(todo, fresh, strict=True):
                out[i] = sc
            self._store([(keys[i], sc) for i, sc in zip(todo, fresh, strict=True) if not sc.failed])
        return [s for s in out if s is not None]

    def _lookup(self, keys: Sequence[str]) -> dict[str, Score]:
        found: dict[str, Score] = {}
        for start in range(0, len(keys), 500):  # SQLite's bound on host parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, score FROM scores WHERE key IN ({marks})", chunk).fetchall()
            found.update((k, score_from_json(v)) for k, v in rows)
        return found

    def _store(self, rows: Sequence[tuple[str, Score]]) -> None:
        if not rows:
            return
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO scores (key, scorer, score, created) VALUES (?, ?, ?, ?)",
                [(k, self.inner.id, score_to_json(s), now) for k, s in rows],
            )
            self._db.commit()

    def _option_logprobs(self, query: Query, shown: list[str]) -> tuple[list[float], str]:
        """The inner scorer's option log-probabilities for this presentation, from the cache when known."""
        key = self.choice_key(query, shown)
        with self._lock:
            row = self._db.execute("SELECT answer FROM choices WHERE key = ?", (key,)).fetchone()
            if row is not None:
                self.hits += 1
            else:
                self.misses += 1
        if row is not None:
            found = json.loads(row[0])
            return [float(x) for x in found["logprobs"]], str(found["method"])
        logprobs, method = self.inner._option_logprobs(query, shown)
        answer = json.dumps({"logprobs": logprobs, "method": method})  # -inf (a verbalised answer) as -Infinity
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO choices (key, scorer, answer, created) VALUES (?, ?, ?, ?)",
                (key, self.inner.id, answer, time.time()),
            )
            self._db.commit()
        return logprobs, method

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    # --- delegated -------------------------------------------------------------------------------

    @property
    def prefers_urls(self) -> bool:
        return self.inner.prefers_urls

    def load(
        self,
        src: ImageSource,
        *,
        min_side: int | None = None,
        fit_side: int | None = None,
        min_pixels: int | None = None,
    ) -> Image.Image:
        return self.inner.load(src, min_side=min_side, fit_side=fit_side, min_pixels=min_pixels)

    def bounded(self, query: Query) -> Query:
        return self.inner.bounded(query)  # the inner model's RETLLM_MAX_QUERY_TOKENS and tokenizer (listwise calls)

    def close(self) -> None:
        """Close the cache file (not the inner scorer)."""
        with self._lock:
            self._db.close()


def default_cache_path(data_dir: Path) -> Path:
    """Where ``retllm eval`` keeps its scores: ``DATA_DIR/eval/scores.sqlite``."""
    return Path(os.fspath(data_dir)) / "eval" / "scores.sqlite"
