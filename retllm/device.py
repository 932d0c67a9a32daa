"""Device and dtype resolution, in one place for every model."""

from __future__ import annotations

import torch

from retllm.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; anything else must name an available device."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"invalid device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available; set RETLLM_DEVICE=cpu")
    return dev


def resolve_dtype(device: torch.device, spec: str = "auto", *, bf16_ok: bool | None = None) -> torch.dtype:
    """fp32 on CPU (bf16 is several times slower there), bf16 on CUDA, unless ``spec`` names one.

    CUDA devices without bf16 (T4, V100: compute capability < 8) get fp16. ``bf16_ok`` overrides the probe.
    """
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if spec != "auto":
        if spec not in table:
            raise ConfigError(f"invalid dtype {spec!r}: use auto, {', '.join(sorted(table))}")
        return table[spec]
    if device.type != "cuda":
        return torch.float32
    if bf16_ok is None:
        bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if bf16_ok else torch.float16
