"""``propainter_checkpoint``: ProPainter from a ``flowcomp``/``propainter`` training checkpoint (``vipo train``).

The checkpoint is exported (as ``vipo export`` would: the trained ``.pth`` plus the run's frozen networks) into a
temporary folder, which the inference pipeline then loads strictly."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import torch

from evaluation.methods.base import Inpaint, MethodConfig, register_method
from vipo.config import ExistingPath
from vipo.pipelines.configs import ProPainterConfig
from vipo.train.checkpointing import CONFIG_FILE, WEIGHTS_DIR, find_checkpoint

__all__ = ["ProPainterCheckpointMethod"]


@register_method
class ProPainterCheckpointMethod(MethodConfig):
    kind: Literal["propainter_checkpoint"] = "propainter_checkpoint"
    checkpoint: ExistingPath
    """A ``checkpoint-NNNNNNNN/`` folder, or a run folder (its latest checkpoint)."""
    options: ProPainterConfig = ProPainterConfig()

    weight_fields = ("checkpoint",)
    checkpoint_field = "checkpoint"

    def checkpoint_folder(self) -> Path:
        return self.checkpoint if (self.checkpoint / CONFIG_FILE).is_file() else find_checkpoint(self.checkpoint)

    def weight_paths(self) -> list[Path]:
        folder = self.checkpoint_folder()
        return [folder / WEIGHTS_DIR, folder / CONFIG_FILE]

    def load(self, device: str) -> Inpaint:
        from vipo.pipelines.propainter import ProPainterPipeline  # model code: not needed to validate a config
        from vipo.train.export import export_checkpoint

        knobs = {**self.options.model_dump(), "progress": False}
        with tempfile.TemporaryDirectory(prefix="vipo-propainter-ckpt-") as tmp:
            exported = export_checkpoint(self.checkpoint_folder(), Path(tmp) / "weights")
            pipeline = ProPainterPipeline.from_pretrained(exported, device=device, **knobs)

        def inpaint(frames, hole, prior):
            torch.manual_seed(self.seed)
            return pipeline(frames, hole)

        return inpaint
