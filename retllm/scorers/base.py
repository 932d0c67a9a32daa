"""The scorer role: ``score(query, candidates) -> list[Score]``, one score per candidate, in order."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from retllm.images import load_image
from retllm.types import ImageSource, Query


@dataclass(frozen=True)
class Candidate:
    """A coarse hit as the fine stage sees it."""

    id: str
    text: str | None = None
    image: ImageSource | None = None
    coarse_score: float = 0.0

    @property
    def modality(self) -> str:
        if self.text and self.image is not None:
            return "text+image"
        return "image" if self.image is not None else "text"


@dataclass
class Score:
    """One pair's fine-stage result and how it was obtained.

    Attributes:
        value: The ranking score: two-way normalised P(True) = sigmoid(logit_True - logit_False).
        p_true: Raw P(True) under the full-vocabulary softmax (None where the backend cannot know it).
        entropy: Shannon entropy (nats) of the answer-position distribution, for tie-breaks.
        method: ``logits``, ``logprobs``, ``verbalized`` or ``coarse`` (fell back to the coarse score).
        retraced: Decoder layer where visual retracing injected, or None if it did not fire.
        revisits: Number of revisit-image tool calls the model made.
        latency_s: Wall time attributed to this pair (a batch's time is shared evenly).
        error: Why the pair fell back, when it did.
    """

    value: float
    p_true: float | None = None
    entropy: float | None = None
    method: str = "logits"
    retraced: int | None = None
    revisits: int = 0
    latency_s: float = 0.0
    error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)


def two_way(logit_true: float, logit_false: float) -> float:
    """P(True) / (P(True) + P(False)) from the two logits, computed stably."""
    d = logit_true - logit_false
    return 1.0 / (1.0 + math.exp(-d)) if d >= 0 else math.exp(d) / (1.0 + math.exp(d))


class Scorer(ABC):
    """Judges (query, candidate) pairs with a multimodal LLM."""

    id: str = "scorer"
    max_image_pixels: int = 64_000_000
    url_timeout: float = 10.0

    @abstractmethod
    def score(self, query: Query, candidates: Sequence[Candidate]) -> list[Score]:
        """One :class:`Score` per candidate, in the candidates' order."""

    def load(self, src: ImageSource) -> Image.Image:
        """Load an image for scoring (RGB)."""
        return load_image(src, max_pixels=self.max_image_pixels, timeout=self.url_timeout)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and models."""
