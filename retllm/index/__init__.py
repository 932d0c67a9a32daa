"""Index backends: the embedded qdrant-edge store and qdrant-client (server, cluster or local mode)."""

from retllm.index.base import Index, Record, SearchResult

__all__ = ["Index", "Record", "SearchResult"]
