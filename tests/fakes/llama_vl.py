"""A tiny random-weight Qwen2-VL / Qwen2.5-VL served by llama.cpp (llama-cpp-python ``[server]``) with its projector.

The checkpoint is converted twice at test time by the converter :mod:`tests.fakes.llama_server` fetches:
once to the language model's GGUF, once with ``--mmproj`` to the vision encoder + merger ("mmproj") GGUF;
the server loads both with ``--chat_format mtmd --clip_model_path <mmproj>``.

What the tiny model must look like for llama.cpp 0.3.36 to serve it exactly as transformers runs it:

- Vision depth >= 3: the converter maps ``visual.merger.mlp.{0,2}`` through the per-block tensor table,
  which only has as many indices as vision blocks (depth 1 or 2 fails with
  ``ValueError: Can not map tensor 'visual.merger.mlp.2.bias'``).
- ``rms_norm_eps`` ~ 0: llama.cpp's ``qwen2vl`` architecture (Qwen2-VL and Qwen2.5-VL language models)
  never reads ``qwen2vl.attention.layer_norm_rms_epsilon`` from the GGUF, so it normalises with eps 0
  (``print_info: f_norm_rms_eps = 0.0e+00``). Harmless for real checkpoints (hidden RMS >> 1e-3), but a
  random tiny model's embeddings have a mean square of ~4e-4, where eps 1e-5 moves logits by ~0.2.
  1e-12 rather than 0: the padding token's embedding row is zero, and 0/0 would be NaN in HF's padded batches.
- No " True"/" False" merges in the vocabulary (as in :mod:`tests.fakes.tiny_lm`): the served scorer sums
  an answer's spellings from the top logprobs while the local scorer reads the one token, so with extra
  spellings the two would score different things.
- Images sized in whole 28-px cells, 8 to 64 visual tokens: llama.cpp's Qwen-VL preprocessing keeps such
  an image as is (its own bounds: 8 to 4096 tokens), and so does HFScorer with ``image_tokens=(8, 64)``:
  both encoders see the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from retllm.scorers.base import Candidate
from retllm.types import Query
from tests.fakes import tiny_vlm
from tests.fakes.llama_server import convert, llama_server
from tests.fakes.tiny_lm import LM_CORPUS

VISION: dict[str, dict[str, Any]] = {
    "qwen2_vl": dict(depth=3),
    # window attention: 56-px windows (2x2 visual tokens), every 2nd block full attention
    "qwen2_5_vl": dict(depth=4, fullatt_block_indexes=[1, 3]),
}

IMAGE_TOKENS = (8, 64)
"""HFScorer's visual-token bounds for the served-parity runs (the images below lie inside them)."""

IMAGE_SIZES = [(84, 84), (112, 56), (56, 112), (112, 112), (140, 84)]
"""(width, height) of the parity images: whole 28-px cells, 8-16 visual tokens each."""


def build_tiny_qwen_vl(folder: Path, family: str = "qwen2_vl", *, seed: int = 0, sharpen: float = 8.0) -> Path:
    """Save a tiny Qwen2-VL / Qwen2.5-VL checkpoint llama.cpp can serve (see the module notes); returns it."""
    with mock.patch.object(tiny_vlm, "CORPUS", LM_CORPUS):  # no " True"/" False" merges
        model, processor = tiny_vlm.make_qwen(
            family, vision=VISION[family], text=dict(rms_norm_eps=1e-12), sharpen=False, seed=seed
        )
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(sharpen)  # peaked, input-dependent answers
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_vl_ggufs(hf_dir: Path, out: Path, cache: Path) -> tuple[Path, Path]:
    """Convert a Qwen-VL checkpoint to f32 GGUFs: (language model, mmproj)."""
    out.mkdir(parents=True, exist_ok=True)
    family = {"module": "qwenvl", "model": "Qwen2VLModel"}
    lm = convert(hf_dir, out / "model.gguf", cache, **family)
    return lm, convert(hf_dir, out / "mmproj.gguf", cache, **family, extra=("--mmproj",))


@contextmanager
def llama_vl_server(lm: Path, mmproj: Path, *args: str) -> Iterator[str]:
    """Serve the pair with llama-cpp-python's ``mtmd`` chat handler (the GGUF's own chat template).

    Not ``--chat_format qwen2.5-vl``: that handler's built-in template ends in ``<|im_start|>assistant\\n``
    as the template's last characters, which Jinja drops (``keep_trailing_newline`` is off), so the answer
    is read one token early, after ``assistant`` instead of after its newline."""
    with llama_server(lm, "--chat_format", "mtmd", "--clip_model_path", str(mmproj), *args) as url:
        yield url


def parity_images(folder: Path, sizes: list[tuple[int, int]] | None = None) -> list[Path]:
    """Random-noise PNGs at ``sizes`` (default :data:`IMAGE_SIZES`), deterministic."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (w, h) in enumerate(sizes or IMAGE_SIZES):
        arr = np.random.default_rng(7 + i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = folder / f"pair_{i}_{w}x{h}.png"
        Image.fromarray(arr).save(p)
        out.append(p)
    return out


CAPTIONS = ["a red circle", "a blue square on a white background"]


def parity_pairs(images: list[Path]) -> list[tuple[Query, list[Candidate]]]:
    """(query, candidates) runs over the parity images: text->image (one caption, every image),
    image->text (three images, both captions) and image->image (the first image against the next three)."""
    imgs = [Candidate(f"i{k}", image=str(p)) for k, p in enumerate(images)]
    texts = [Candidate(f"t{k}", text=t) for k, t in enumerate(CAPTIONS)]
    runs: list[tuple[Query, list[Candidate]]] = [(Query(text=CAPTIONS[0]), imgs)]
    runs += [(Query(image=str(p)), texts) for p in images[:3]]
    runs += [(Query(image=str(images[0])), imgs[1:4])]
    return runs


def label(x: Query | Candidate) -> str:
    """A query's or candidate's text, or its image's file name."""
    return x.text if x.text else f"image {Path(str(x.image)).name}"
