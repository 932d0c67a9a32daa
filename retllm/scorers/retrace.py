"""Visual retracing (METHOD.md §3) as forward hooks on a stock decoder, computed per sample.

Within one forward pass:

1. V is the language model's input embeddings (all non-padding rows, or only image-token rows).
2. After each decoder layer ``l`` with ``start < l < end``, the last position's hidden state goes
   through the LM head (optionally after the final norm); the softmax over its top-k logits gives an
   entropy normalised by ``ln k``.
3. The first time it exceeds ``threshold``, layer ``l + 1`` is armed (at most once per sample).
4. In the armed layer's MLP, with x its input and out its output:
   ``s = mean|W_gate| / mean|V|; A = SiLU(x (sV)^T) V; A *= mean|out| / mean|A|;
   out = (1 - ratio) out + ratio A``.

Everything is per sample with padding masked out, so a batch scores exactly as one-by-one; the hooks
exist only inside :func:`visual_retracing` and leave nothing behind.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from retllm.scorers.config import RetraceConfig
from retllm.scorers.families import mlp_gate_weight


@dataclass
class RetraceState:
    """Per-forward state: which layer each sample armed and where it injected."""

    batch: int
    armed: list[int | None] = field(default_factory=list)
    fired: list[int | None] = field(default_factory=list)
    v_rows: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.armed = [None] * self.batch
        self.fired = [None] * self.batch


def normalised_topk_entropy(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Entropy of the softmax over each row's top-k logits, divided by ln k (fp32)."""
    top = logits.float().topk(k, dim=-1).values
    logp = F.log_softmax(top, dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(k)


def retrace_mlp_output(
    x: torch.Tensor, out: torch.Tensor, v: torch.Tensor, w_gate: torch.Tensor, ratio: float
) -> torch.Tensor:
    """The retraced MLP output for one sample's valid rows (x, out: [T, D]; v: [N, D])."""
    xf, of, vf = x.float(), out.float(), v.float()
    s = w_gate.float().abs().mean() / vf.abs().mean()
    a = F.silu(xf @ (s * vf).T) @ vf
    a = a * (of.abs().mean() / a.abs().mean())
    return ((1.0 - ratio) * of + ratio * a).to(out.dtype)


@contextmanager
def visual_retracing(
    text_model: torch.nn.Module,
    lm_head: torch.nn.Module,
    cfg: RetraceConfig,
    attention_mask: torch.Tensor,
    image_mask: torch.Tensor | None = None,
) -> Iterator[RetraceState]:
    """Install the retracing hooks for one forward pass of a left-padded batch.

    Args:
        text_model: The decoder stack (has ``layers`` and ``norm``).
        lm_head: The output projection.
        cfg: Constants and switches.
        attention_mask: [B, T] 1 for real tokens (left padding: the last position is real in every row).
        image_mask: [B, T] True at image-token positions (needed for ``v_rows="image"``).
    """
    layers: list[torch.nn.Module] = list(text_model.layers)  # type: ignore[arg-type]
    norm: Any = text_model.norm
    state = RetraceState(attention_mask.shape[0])
    valid = attention_mask.bool()
    rows = valid if cfg.v_rows == "all" else (valid & image_mask) if image_mask is not None else None
    if rows is None:
        raise ValueError("v_rows='image' needs the image-token mask")
    handles: list[Any] = []

    def capture_v(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        emb = kwargs.get("inputs_embeds")
        if emb is None:
            raise RuntimeError("visual retracing needs the decoder to be called with inputs_embeds")
        state.v_rows = [emb[b][rows[b]] for b in range(state.batch)]

    def probe(layer_idx: int) -> Any:
        def hook(_mod: Any, _args: Any, output: Any) -> None:
            todo = [b for b in range(state.batch) if state.armed[b] is None]
            if not todo:
                return
            h = (output[0] if isinstance(output, tuple) else output)[todo, -1, :]
            if cfg.final_norm:
                h = norm(h)
            ent = normalised_topk_entropy(lm_head(h), cfg.top_k).tolist()  # one host sync per layer, not per row
            for i, b in enumerate(todo):
                if ent[i] > cfg.threshold:
                    state.armed[b] = layer_idx + 1

        return hook

    def inject(layer_idx: int, w_gate: torch.Tensor) -> Any:
        def hook(_mod: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            hit = [
                b
                for b in range(state.batch)
                if state.armed[b] == layer_idx and state.fired[b] is None and state.v_rows[b].shape[0] > 0
            ]
            if not hit:
                return None
            x = args[0]
            new = output.clone()
            for b in hit:
                m = valid[b]
                new[b, m] = retrace_mlp_output(x[b, m], output[b, m], state.v_rows[b], w_gate, cfg.ratio)
                state.fired[b] = layer_idx
            return new

        return hook

    try:
        handles.append(text_model.register_forward_pre_hook(capture_v, with_kwargs=True))
        for li in range(max(cfg.start + 1, 0), min(cfg.end, len(layers))):
            handles.append(layers[li].register_forward_hook(probe(li)))
            if li + 1 < len(layers):
                mlp: Any = layers[li + 1].mlp
                handles.append(mlp.register_forward_hook(inject(li + 1, mlp_gate_weight(mlp))))
        yield state
    finally:
        for h in handles:
            h.remove()
