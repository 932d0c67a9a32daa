"""The retllm error hierarchy. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class RetllmError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(RetllmError):
    """A setting or backend id is invalid."""


class MissingDependencyError(RetllmError):
    """An optional dependency is not installed; the message names the pip line."""


class ModelUnavailableError(RetllmError):
    """Model weights are neither cached nor downloadable (offline, hub unreachable)."""


class CollectionNotFoundError(RetllmError):
    """The named collection does not exist in the index."""


class CollectionLockedError(RetllmError):
    """The embedded collection is open in another process."""


class DimensionMismatchError(RetllmError):
    """The collection's vector size differs from the embedder's."""


class EmptyQueryError(RetllmError):
    """A query has neither text nor image."""


class BadItemError(RetllmError):
    """One input item cannot be used (corrupt image, bad encoding, unreachable URL, ...)."""


class ScoringError(RetllmError):
    """The fine stage could not score a pair (or, raised from a search, any pair of the query)."""


class EndpointError(RetllmError):
    """A scoring endpoint refused the request in a way no retry can fix (bad key, unknown model, bad request)."""


class FilterError(ConfigError):
    """A payload filter the index cannot apply (the message says what to change)."""
