"""The embedder role: two abstract methods, everything else (batching, fusion, queries) here."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from retllm.types import VectorName

Vectors = NDArray[np.float32]


def l2_normalise(x: Vectors) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def fuse(image_vec: Vectors, text_vec: Vectors, weight: float = 0.5) -> Vectors:
    """The fused vector of an image+text item or query: ``normalise(w*img + (1-w)*txt)``.

    Both inputs are unit vectors, so with ``w = 0.5`` this is the normalised sum.
    """
    return l2_normalise(weight * image_vec + (1.0 - weight) * text_vec)


class Embedder(ABC):
    """Embeds images and texts into one shared space.

    Subclasses implement :meth:`embed_image_inputs` and :meth:`embed_texts`; :meth:`prepare_image`
    (run in decode threads at ingest) turns a decoded image into the model's input.
    """

    id: str = "embedder"
    dim: int = 0
    batch_size: int = 32
    input_side: int | None = None
    """The shorter side (px) the model's preprocessing resizes images to; images are decoded reduced towards it
    (None: at full size)."""

    def prepare_image(self, image: Image.Image) -> Any:
        """Model input for one RGB image (e.g. a preprocessed tensor). Thread-safe."""
        return image

    @abstractmethod
    def embed_image_inputs(self, inputs: Sequence[Any]) -> Vectors:
        """Unit vectors for prepared images (outputs of :meth:`prepare_image`), one batch."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors for texts, one batch."""

    def embed_images(self, images: Sequence[Image.Image]) -> Vectors:
        """Unit vectors for RGB images, batched by ``batch_size``."""
        out = [
            self.embed_image_inputs([self.prepare_image(im) for im in images[i : i + self.batch_size]])
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def embed_query(
        self, text: str | None, image: Image.Image | None, fusion_weight: float = 0.5
    ) -> dict[VectorName, Vectors]:
        """Query vectors by kind: ``text``, ``image`` and, when both are given, ``fused``."""
        out: dict[VectorName, Vectors] = {}
        if text:
            out["text"] = self.embed_texts([text])[0]
        if image is not None:
            out["image"] = self.embed_image_inputs([self.prepare_image(image)])[0]
        if "text" in out and "image" in out:
            out["fused"] = fuse(out["image"], out["text"], fusion_weight)
        return out
