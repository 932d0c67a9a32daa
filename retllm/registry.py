"""Backends by explicit id (``provider:model``), resolved in one place with lazy imports."""

from __future__ import annotations

from collections.abc import Callable

from retllm.embedders.base import Embedder
from retllm.errors import ConfigError
from retllm.index.base import Index
from retllm.scorers.base import Scorer
from retllm.settings import DEFAULT_SCORER, Settings


def _open_clip(model: str, settings: Settings) -> Embedder:
    from retllm.embedders.open_clip import OpenClipEmbedder

    return OpenClipEmbedder.from_pretrained(model, device=settings.device, batch_size=settings.batch_size)


EMBEDDERS: dict[str, Callable[[str, Settings], Embedder]] = {"open_clip": _open_clip}


def register_embedder(provider: str, factory: Callable[[str, Settings], Embedder]) -> None:
    """Add an embedder provider (plugins and tests use this; ids stay ``provider:model``)."""
    EMBEDDERS[provider] = factory


def make_embedder(settings: Settings, spec: str | None = None) -> Embedder:
    """Build the embedder named by ``spec`` (default ``settings.embedder``)."""
    spec = spec or settings.embedder
    provider, sep, model = spec.partition(":")
    if not sep or not model:
        raise ConfigError(
            f"embedder id {spec!r} must look like provider:model, e.g. open_clip:ViT-B-32@laion2b_s34b_b79k"
        )
    if provider not in EMBEDDERS:
        raise ConfigError(f"unknown embedder provider {provider!r}; valid: {', '.join(sorted(EMBEDDERS))}")
    return EMBEDDERS[provider](model, settings)


def make_index(settings: Settings, location: str | None = None) -> Index:
    """The configured index: qdrant-client for a URL/':memory:'/path, else the embedded store."""
    location = location or settings.qdrant_url
    if location:
        from retllm.index.qdrant import QdrantIndex

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantIndex(location, api_key=key)
    from retllm.index.edge import EdgeIndex

    return EdgeIndex(settings.edge_dir)


def _hf(model: str, settings: Settings) -> Scorer:
    from retllm.scorers.hf import HFScorer

    return HFScorer.from_pretrained(
        model,
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.scorer_batch_size,
        retrace=settings.retrace,
        vision_cache_size=settings.vision_cache_size,
    )


def _openai(model: str, settings: Settings) -> Scorer:
    from retllm.scorers.openai import OpenAIScorer

    return OpenAIScorer.from_settings(model, settings)


SCORERS: dict[str, Callable[[str, Settings], Scorer]] = {"hf": _hf, "openai": _openai}


def register_scorer(provider: str, factory: Callable[[str, Settings], Scorer]) -> None:
    """Add a scorer provider (ids stay ``provider:model``)."""
    SCORERS[provider] = factory


def make_scorer(settings: Settings, spec: str | None = None) -> Scorer:
    """Build the scorer named by ``spec`` (default ``settings.scorer``)."""
    spec = spec or settings.scorer
    provider, sep, model = spec.partition(":")
    if not sep or not model:
        raise ConfigError(
            f"scorer id {spec!r} must look like provider:model, e.g. hf:{DEFAULT_SCORER.split(':', 1)[1]}"
        )
    if provider not in SCORERS:
        raise ConfigError(f"unknown scorer provider {provider!r}; valid: {', '.join(sorted(SCORERS))}")
    return SCORERS[provider](model, settings)
