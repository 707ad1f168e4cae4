"""The pipelines' inference settings, apart from the pipelines: job configs validate them (and a typo in them
fails) without importing torch's model code, and a GPU actor receives settings already known to be valid."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vipo.config import Config, ExistingPath

__all__ = ["DIFFUERASER_PRIOR", "WEIGHT_FILES", "DiffuEraserLoadConfig", "ProPainterConfig"]

#: ProPainter's released weight files (one folder), by network.
WEIGHT_FILES = {
    "raft": "raft-things.pth",
    "flow_completion": "recurrent_flow_completion.pth",
    "generator": "ProPainter.pth",
}
DIFFUERASER_PRIOR = {"resize_ratio": 0.6, "mask_dilation": 8, "subvideo_length": 50, "fp16": True}
"""How DiffuEraser's ``run_diffueraser.py`` runs its ProPainter prior (``propainter/inference.py`` defaults
``resize_ratio=0.6, fp16=True``; the script passes ``subvideo_length=50`` and its ``mask_dilation_iter``, 8)."""


class ProPainterConfig(Config):
    """Inference knobs; defaults are upstream ``inference_propainter.py``'s, or DiffuEraser's prior settings with
    ``preset: diffueraser_prior`` (fields given explicitly win over the preset)."""

    preset: Literal["standalone", "diffueraser_prior"] = "standalone"
    """``standalone``: ProPainter as its own method; ``diffueraser_prior``: :data:`DIFFUERASER_PRIOR`, for every
    ProPainter run that feeds DiffuEraser (generation, evaluation, validation)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") == "diffueraser_prior":
            return {**DIFFUERASER_PRIOR, **data}
        return data

    subvideo_length: int = Field(default=80, ge=2, description="frames per sub-video (bounds device memory)")
    context_length: int = Field(default=10, ge=0, description="extra frames on each side of a sub-video (vipo's)")
    neighbor_length: int = Field(default=10, ge=2, description="local window; windows step by half of it")
    ref_stride: int = Field(default=10, ge=1, description="every ref_stride-th frame is a reference")
    resize_ratio: float = Field(default=1.0, gt=0, le=4, description="processing size / input size")
    mask_dilation: int = Field(default=4, ge=0, description="3x3-cross dilation iterations of the holes")
    raft_iterations: int = Field(default=20, ge=1)
    fp16: bool = Field(default=False, description="half precision for flow completion + generator (CUDA only)")
    progress: bool = True


class DiffuEraserLoadConfig(Config):
    """How :meth:`vipo.pipelines.diffueraser.DiffuEraserPipeline.from_weights` builds the pipeline (its keyword
    arguments, as a generation config's ``models.diffueraser.options`` gives them)."""

    pcm_steps: int | None = Field(default=2, ge=1)
    """Load the PCM LoRA distilled for this many steps and sample with TCD; ``null``: the plain model with UniPC."""
    unet_path: ExistingPath | None = None
    """A checkpoint replacing the released ``unet_main``."""
    brushnet_path: ExistingPath | None = None
    """A checkpoint replacing the released ``brushnet``."""
