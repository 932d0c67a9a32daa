"""Backends by explicit id (``provider:model``), resolved in one place with lazy imports."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from retllm.embedders.base import Embedder
from retllm.errors import ConfigError
from retllm.index.base import Index
from retllm.scorers.base import Scorer
from retllm.settings import DEFAULT_EMBEDDER, DEFAULT_SCORER, Settings

T = TypeVar("T")


def _open_clip(model: str, settings: Settings) -> Embedder:
    from retllm.embedders.open_clip import OpenClipEmbedder

    return OpenClipEmbedder.from_pretrained(model, device=settings.device, batch_size=settings.batch_size)


EMBEDDERS: dict[str, Callable[[str, Settings], Embedder]] = {"open_clip": _open_clip}


def register_embedder(provider: str, factory: Callable[[str, Settings], Embedder]) -> None:
    """Add an embedder provider (plugins and tests use this; ids stay ``provider:model``)."""
    EMBEDDERS[provider] = factory


def _resolve(
    role: str, spec: str, table: dict[str, Callable[[str, Settings], T]], example: str
) -> tuple[Callable[[str, Settings], T], str]:
    provider, sep, model = spec.partition(":")
    if not sep or not model:
        raise ConfigError(f"{role} id {spec!r} must look like provider:model, e.g. {example}")
    if provider not in table:
        raise ConfigError(f"unknown {role} provider {provider!r}; valid: {', '.join(sorted(table))}")
    return table[provider], model


def make_embedder(settings: Settings, spec: str | None = None) -> Embedder:
    """Build the embedder named by ``spec`` (default ``settings.embedder``)."""
    factory, model = _resolve("embedder", spec or settings.embedder, EMBEDDERS, DEFAULT_EMBEDDER)
    return factory(model, settings)


def make_index(settings: Settings, location: str | None = None) -> Index:
    """The configured index: qdrant-client for a URL/':memory:'/path, else the embedded store."""
    location = location or settings.qdrant_url
    if location:
        from retllm.index.qdrant import QdrantIndex

        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantIndex(location, api_key=key, fusion=settings.vector_fusion)
    from retllm.index.edge import EdgeIndex

    return EdgeIndex(settings.edge_dir, fusion=settings.vector_fusion)


def _hf(model: str, settings: Settings) -> Scorer:
    from retllm.scorers.hf import HFScorer

    return HFScorer.from_settings(model, settings)


def _openai(model: str, settings: Settings) -> Scorer:
    from retllm.scorers.openai import OpenAIScorer

    return OpenAIScorer.from_settings(model, settings)


SCORERS: dict[str, Callable[[str, Settings], Scorer]] = {"hf": _hf, "openai": _openai}


def register_scorer(provider: str, factory: Callable[[str, Settings], Scorer]) -> None:
    """Add a scorer provider (ids stay ``provider:model``)."""
    SCORERS[provider] = factory


def make_scorer(settings: Settings, spec: str | None = None) -> Scorer:
    """Build the scorer named by ``spec`` (default ``settings.scorer``)."""
    factory, model = _resolve("scorer", spec or settings.scorer, SCORERS, DEFAULT_SCORER)
    return factory(model, settings)
