"""Embedders: turn images and texts into L2-normalised vectors for the coarse stage."""

from retllm.embedders.base import Embedder, fuse

__all__ = ["Embedder", "fuse"]
