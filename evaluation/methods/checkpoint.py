"""``checkpoint``: any exported DiffuEraser checkpoint (``unet_main/``, optionally ``brushnet/``) on a base layout."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from evaluation.methods.base import register_method
from evaluation.methods.diffueraser import DiffuEraserMethod, export_model_paths
from vipo.config import ExistingPath

__all__ = ["CheckpointMethod"]


@register_method
class CheckpointMethod(DiffuEraserMethod):
    """The export's ``unet_main`` (a 2-D stage-1 UNet gets the layout's motion adapter) and ``brushnet`` (else the
    layout's) replace the released ones; VAE, text encoder and PCM LoRA come from ``weights``."""

    kind: Literal["checkpoint"] = "checkpoint"
    path: ExistingPath
    """An export folder (``vipo export``)."""

    weight_fields = ("weights", "prior", "path")
    checkpoint_field = "path"

    def model_paths(self) -> tuple[Path | None, Path | None]:
        return export_model_paths(self.path)
