"""Where DiffuEraser's weights live on disk, and the one loader every job uses.

The layout is upstream's ``weights/`` folder (design doc seed 002, section 2.2)::

    <root>/stable-diffusion-v1-5/{unet,vae,text_encoder,tokenizer,scheduler}
    <root>/sd-vae-ft-mse/                       the VAE DiffuEraser actually uses
    <root>/diffuEraser/{brushnet,unet_main}     released BrushNet and stage-2 UNetMotionModel
    <root>/animatediff-motion-adapter-v1-5-2/   motion adapter for building a stage-2 UNet from a 2-D one
    <root>/PCM_Weights/sd15/pcm_sd15_smallcfg_<n>step_converted.safetensors

``vipo.models.tiny.write_tiny_weights`` writes the same layout with tiny random models, so tests, the demo and
full-size runs share this code path. Everything loads from local files only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer

from vipo.models.brushnet import BrushNetModel

_MODEL_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class DiffuEraserWeights:
    """Paths of the upstream weights layout under ``root``."""

    root: Path

    @property
    def sd15(self) -> Path:
        return self.root / "stable-diffusion-v1-5"

    @property
    def unet_2d(self) -> Path:
        return self.sd15 / "unet"

    @property
    def text_encoder(self) -> Path:
        return self.sd15 / "text_encoder"

    @property
    def tokenizer(self) -> Path:
        return self.sd15 / "tokenizer"

    @property
    def scheduler(self) -> Path:
        return self.sd15 / "scheduler"

    @property
    def vae(self) -> Path:
        return self.root / "sd-vae-ft-mse"

    @property
    def brushnet(self) -> Path:
        return self.root / "diffuEraser" / "brushnet"

    @property
    def unet_main(self) -> Path:
        return self.root / "diffuEraser" / "unet_main"

    @property
    def motion_adapter(self) -> Path:
        return self.root / "animatediff-motion-adapter-v1-5-2"

    def pcm_lora(self, num_steps: int = 2) -> Path:
        """PCM "smallcfg" LoRA distilled for ``num_steps`` sampling steps (2, 4, 8 or 16 upstream)."""
        return self.root / "PCM_Weights" / "sd15" / f"pcm_sd15_smallcfg_{num_steps}step_converted.safetensors"


def require_path(path: Path, what: str) -> Path:
    """Return ``path`` if it exists, else raise a one-line ``FileNotFoundError`` naming it."""
    if not path.exists():
        raise FileNotFoundError(f"missing {what}: {path} (expected the DiffuEraser weights layout, seed 002 §2.2)")
    return path


def require_model_dir(path: Path, what: str) -> Path:
    """Check a diffusers/transformers model folder: ``config.json`` plus a weights file."""
    require_path(path / "config.json", f"{what} config")
    if not any(file.suffix in _MODEL_WEIGHT_SUFFIXES for file in path.iterdir()):
        raise FileNotFoundError(f"missing {what} weights: no *.safetensors or *.bin in {path}")
    return path


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on GPU (as upstream), fp32 on CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def _load_stage2_unet(path: Path, layout: DiffuEraserWeights, dtype: torch.dtype) -> UNetMotionModel:
    """A ``UNetMotionModel`` folder loads as is; a 2-D UNet (a stage-1 result) gets the v1-5-2 motion adapter."""
    class_name = json.loads((path / "config.json").read_text()).get("_class_name")
    if class_name == "UNetMotionModel":
        return UNetMotionModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    adapter_path = require_model_dir(layout.motion_adapter, "AnimateDiff motion adapter")
    unet = UNet2DConditionModel.from_pretrained(path, dtype=dtype, local_files_only=True)
    adapter = MotionAdapter.from_pretrained(adapter_path, dtype=dtype, local_files_only=True)
    return UNetMotionModel.from_unet2d(unet, adapter)


def load_diffueraser_components(
    weights_root: str | Path,
    *,
    stage: Literal[1, 2] = 2,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    unet_path: str | Path | None = None,
    brushnet_path: str | Path | None = None,
) -> dict[str, Any]:
    """Load every DiffuEraser component from the upstream layout.

    Args:
        weights_root: folder holding the layout described in this module's docstring.
        stage: 1 -> main UNet is a 2-D ``UNet2DConditionModel`` (default ``stable-diffusion-v1-5/unet``);
            2 -> a ``UNetMotionModel`` (default ``diffuEraser/unet_main``; a 2-D ``unet_path`` is combined with
            the motion adapter, as stage-2 training starts).
        dtype: defaults to ``default_dtype(device)``.
        unet_path, brushnet_path: override the main UNet / BrushNet folders (e.g. a training checkpoint).

    Returns:
        ``{"vae", "text_encoder", "tokenizer", "unet", "brushnet", "scheduler"}`` -- the keyword arguments of
        ``DiffuEraserPipeline`` -- on ``device``; ``scheduler`` is the SD1.5 training ``DDPMScheduler``.

    Raises:
        FileNotFoundError: one line naming the first missing path.
    """
    layout = DiffuEraserWeights(Path(weights_root).expanduser())
    require_path(layout.root, "DiffuEraser weights root")
    dtype = dtype or default_dtype(device)
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    unet_dir = Path(unet_path) if unet_path is not None else (layout.unet_2d if stage == 1 else layout.unet_main)
    brushnet_dir = Path(brushnet_path) if brushnet_path is not None else layout.brushnet
    for path, what in (
        (layout.vae, "VAE"),
        (layout.text_encoder, "CLIP text encoder"),
        (unet_dir, "main UNet"),
        (brushnet_dir, "BrushNet"),
    ):
        require_model_dir(path, what)
    require_path(layout.tokenizer, "CLIP tokenizer")
    require_path(layout.scheduler / "scheduler_config.json", "SD1.5 scheduler config")

    if stage == 1:
        unet = UNet2DConditionModel.from_pretrained(unet_dir, dtype=dtype, local_files_only=True)
    else:
        unet = _load_stage2_unet(unet_dir, layout, dtype)
    components = {
        "vae": AutoencoderKL.from_pretrained(layout.vae, dtype=dtype, local_files_only=True),
        "text_encoder": CLIPTextModel.from_pretrained(layout.text_encoder, dtype=dtype, local_files_only=True),
        "unet": unet,
        "brushnet": BrushNetModel.from_pretrained(brushnet_dir, dtype=dtype, local_files_only=True),
    }
    for model in components.values():
        model.to(device)
    components["tokenizer"] = CLIPTokenizer.from_pretrained(layout.tokenizer, local_files_only=True)
    components["scheduler"] = DDPMScheduler.from_pretrained(layout.scheduler, local_files_only=True)
    return components
