"""open_clip backend: any open_clip model by built-in name + tag, ``hf-hub:`` repo or ``local-dir:`` folder."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from retllm.device import resolve_device
from retllm.embedders.base import Embedder, Vectors
from retllm.errors import ConfigError, ModelUnavailableError
from retllm.hub import require_hub

log = logging.getLogger(__name__)

_FIX = "download it on a connected machine, or set RETLLM_EMBEDDER=open_clip:local-dir:/path/to/folder"


def _cached_hf_file(repo_id: str, filenames: Sequence[str]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return hit
    return None


def resolve_open_clip_spec(spec: str) -> tuple[str, str | None]:
    """Map a retllm open_clip spec to ``(model_name, pretrained)`` for ``open_clip.create_model``.

    Cached weights are used by local path so that loading never touches the network; weights that
    are not cached need the hub, which is checked in seconds (:func:`retllm.hub.require_hub`).
    """
    import open_clip

    if spec.startswith("local-dir:"):
        folder = Path(spec.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise ConfigError(f"open_clip folder {folder} has no open_clip_config.json (spec {spec!r})")
        return f"local-dir:{folder}", None
    if spec.startswith("hf-hub:"):
        repo = spec.removeprefix("hf-hub:")
        config = _cached_hf_file(repo, ["open_clip_config.json"])
        weights = _cached_hf_file(repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
        if config and weights and Path(config).parent == Path(weights).parent:
            return f"local-dir:{Path(config).parent}", None
        require_hub(f"open_clip:{spec}", _FIX)
        return spec, None
    name, _, tag = spec.partition("@")
    if name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
    if not tag:
        tags = [t for m, t in open_clip.list_pretrained() if m == name]
        raise ConfigError(
            f"open_clip:{name} needs a pretrained tag, e.g. open_clip:{name}@{tags[0] if tags else 'TAG'}"
        )
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = [t for m, t in open_clip.list_pretrained() if m == name]
        raise ConfigError(f"unknown tag {tag!r} for open_clip:{name}; valid: {', '.join(tags)}")
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith(".bin"):
            names.insert(0, filename.removesuffix(".bin") + ".safetensors")
        cached = _cached_hf_file(repo, names)
        if cached:
            return name, cached
    require_hub(f"open_clip:{spec}", _FIX)
    return name, tag


class OpenClipEmbedder(Embedder):
    """An open_clip model in eval mode; fp32 on CPU; all outputs L2-normalised."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[..., torch.Tensor],
        *,
        model_id: str = "open_clip",
        device: torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device or torch.device("cpu")
        self.id = model_id
        self.batch_size = batch_size
        side = getattr(getattr(model, "visual", None), "image_size", None)
        self.input_side = min(side) if isinstance(side, tuple | list) else side if isinstance(side, int) else None
        with torch.inference_mode():
            self.dim = int(self.embed_texts(["dimension probe"]).shape[1])

    @classmethod
    def from_pretrained(cls, spec: str, *, device: str = "auto", batch_size: int = 32) -> OpenClipEmbedder:
        """Load ``spec`` (``NAME@TAG``, ``hf-hub:ORG/NAME`` or ``local-dir:/path``)."""
        import open_clip

        model_name, pretrained = resolve_open_clip_spec(spec)
        dev = resolve_device(device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=dev, precision="fp32" if dev.type == "cpu" else "fp16"
            )
            tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, OSError) as e:
            if "download" in str(e).lower() or "connect" in str(e).lower():
                raise ModelUnavailableError(f"could not fetch open_clip:{spec}: {e}; {_FIX}") from e
            raise ConfigError(f"could not load open_clip:{spec}: {e}") from e
        return cls(model, preprocess, tokenizer, model_id=f"open_clip:{spec}", device=dev, batch_size=batch_size)

    def prepare_image(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess(image)

    def embed_image_inputs(self, inputs: Sequence[Any]) -> Vectors:
        if not inputs:
            return np.zeros((0, self.dim), np.float32)
        batch = torch.stack(list(inputs)).to(self.device)
        with torch.inference_mode():
            feats = self.model.encode_image(batch, normalize=True)  # type: ignore[operator]
        return feats.float().cpu().numpy()

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            with torch.inference_mode():
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())  # type: ignore[operator]
        return np.concatenate(out)
