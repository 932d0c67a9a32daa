"""Run-time dependencies of the graphs, passed as the graph's ``context`` (LangGraph ``Runtime``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from retllm.tools.deps import Deps, default_deps


@dataclass(kw_only=True)
class Context:
    """What a run needs besides its state: the embedder, index and scorer (as :class:`Deps`).

    ``Context()`` falls back to the environment, so ``RETLLM_SCORER=hf:...`` or ``openai:...`` swaps the MLLM
    with no code change; pass ``Context(deps=Deps(settings, scorer=...))`` to inject built objects.
    ``cancel``: set when the run's caller has gone (a client that disconnected); the search tools pass it on, so
    the remaining model work is dropped.
    """

    deps: Deps = field(default_factory=default_deps)
    cancel: threading.Event | None = None


def deps_of(context: Any, bound: Deps | None = None) -> Deps:
    """The dependencies for a run: those the graph was built with, else the run's context, else the environment's."""
    if bound is not None:
        return bound
    if isinstance(context, Context):
        return context.deps
    if isinstance(context, Deps):
        return context
    if isinstance(context, dict) and isinstance(context.get("deps"), Deps):
        return context["deps"]
    return default_deps()
