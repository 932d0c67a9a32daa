"""Scorer settings that must import without torch (the CLI reads them at start-up)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class RetraceConfig(BaseModel):
    """Every constant and variant switch of visual retracing (defaults: the research code's)."""

    enabled: bool = True
    start: int = Field(default=5, description="Probe after layers l with start < l < end.")
    end: int = 16
    threshold: float = Field(default=0.75, description="Normalised top-k entropy that arms the next layer.")
    ratio: float = Field(default=0.12, ge=0.0, le=1.0, description="Weight of the retraced signal in the MLP output.")
    top_k: int = Field(default=10, ge=2)
    v_rows: Literal["all", "image"] = Field(
        default="all", description="V = all input rows (research code) or image-token rows (MemVR)."
    )
    final_norm: bool = Field(
        default=False, description="Apply the final norm before the logit-lens probe (MemVR: True)."
    )

    @model_validator(mode="after")
    def _window(self) -> RetraceConfig:
        if self.end <= self.start + 1:
            raise ValueError(f"retrace window start < l < end is empty (start={self.start}, end={self.end})")
        return self
