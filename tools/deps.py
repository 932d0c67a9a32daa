"""What the tools work on: the settings, and the embedder, index and scorer built from them once."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from retllm.embedders.base import Embedder
from retllm.images import keep_bytes
from retllm.index.base import Index
from retllm.pipeline import Retriever
from retllm.scorers.base import Scorer
from retllm.settings import Settings


@dataclass
class Deps:
    """Run-time dependencies, shared by every tool call (models load once, on first use, thread-safely).

    Pass built objects to reuse models you already hold (tests inject tiny ones); anything left ``None``
    is built from ``settings`` through the same registry as the CLI, so ``RETLLM_SCORER=hf:...`` or
    ``openai:...`` swaps the MLLM without code changes. ``coarse_only`` skips the fine stage everywhere.
    """

    settings: Settings = field(default_factory=Settings)
    embedder: Embedder | None = None
    index: Index | None = None
    scorer: Scorer | None = None
    coarse_only: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def get_index(self) -> Index:
        with self._lock:
            if self.index is None:
                from retllm.registry import make_index

                self.index = make_index(self.settings)
            return self.index

    def get_embedder(self) -> Embedder:
        with self._lock:
            if self.embedder is None:
                from retllm.registry import make_embedder

                self.embedder = make_embedder(self.settings)
            return self.embedder

    def get_scorer(self) -> Scorer | None:
        """The fine-stage scorer (``None`` when ``coarse_only``)."""
        if self.coarse_only:
            return None
        with self._lock:
            if self.scorer is None:
                from retllm.registry import make_scorer

                self.scorer = make_scorer(self.settings)
            return self.scorer

    def retriever(self, collection: str, *, fine: bool = True) -> Retriever:
        s = self.settings
        return Retriever(
            self.get_embedder(),
            self.get_index(),
            collection,
            scorer=self.get_scorer() if fine else None,
            fusion_weight=s.fusion_weight,
            limits=s.image_limits,
        )

    def keep_image(self, data: bytes) -> str:
        """Store image bytes (an upload, an attachment, a fetched URL) by content; returns the file path.

        State, checkpoints and tool artifacts then carry this reference instead of the bytes."""
        return keep_bytes(self.settings.blob_dir, data)

    def close(self) -> None:
        """Release what this object built or was given (models, the index)."""
        for obj in (self.scorer, self.index):
            if obj is not None:
                obj.close()

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir


_default: Deps | None = None
_default_lock = threading.Lock()


def default_deps() -> Deps:
    """One process-wide :class:`Deps` from the environment (``RETLLM_*``), built lazily: models load on first use
    and are shared by every run that brings no dependencies of its own."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Deps(Settings())
        return _default
