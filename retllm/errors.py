"""The retllm error hierarchy. Every message says what went wrong and what to do about it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading


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


class CollectionBrokenError(RetllmError):
    """A collection exists but its store cannot be opened or read (the message names the repair)."""


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


class Cancelled(RetllmError):
    """The caller went away; the remaining model work was dropped."""

    def __init__(self, message: str = "the caller went away; the remaining model work was dropped") -> None:
        super().__init__(message)

    @classmethod
    def check(cls, cancel: threading.Event | None) -> None:
        """Raise when ``cancel`` is set (the request's client disconnected)."""
        if cancel is not None and cancel.is_set():
            raise cls()
