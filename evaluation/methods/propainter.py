"""``propainter``: ProPainter from its released weights folder (flow-guided propagation + transformer)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from evaluation.methods.base import Inpaint, MethodConfig, register_method
from vipo.config import ExistingPath
from vipo.pipelines.configs import WEIGHT_FILES, ProPainterConfig

__all__ = ["ProPainterMethod"]


@register_method
class ProPainterMethod(MethodConfig):
    kind: Literal["propainter"] = "propainter"
    weights: ExistingPath
    """Folder holding ``raft-things.pth``, ``recurrent_flow_completion.pth`` and ``ProPainter.pth``."""
    options: ProPainterConfig = ProPainterConfig()
    """Inference knobs (upstream defaults); the progress bar is always off in evaluation actors."""

    weight_fields = ("weights",)

    def weight_paths(self) -> list[Path]:
        return [self.weights / name for name in WEIGHT_FILES.values()]

    def load(self, device: str) -> Inpaint:
        from vipo.pipelines.propainter import ProPainterPipeline  # model code: not needed to validate a config

        knobs = {**self.options.model_dump(), "progress": False}
        pipeline = ProPainterPipeline.from_pretrained(self.weights, device=device, **knobs)

        def inpaint(frames, hole, prior):
            torch.manual_seed(self.seed)  # ProPainter samples nothing; this pins any stray randomness anyway
            return pipeline(frames, hole)

        return inpaint
