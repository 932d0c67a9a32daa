"""retllm: training-free multimodal retrieval with MLLM re-ranking.

The core library: types, settings, embedders, index backends, ingest and the retrieval pipeline.
It never imports LangGraph; the agent lives in :mod:`retllm.agent`.
"""

from retllm.errors import RetllmError
from retllm.settings import Settings
from retllm.types import Hit, Item, Query

__version__ = "0.1.0"
__all__ = ["Hit", "Item", "Query", "RetllmError", "Settings", "__version__"]
