"""Stage 2: DiffuEraser's temporal model. Only the motion modules of the ``UNetMotionModel`` train.

The main UNet is the stage-1 UNet (``model.pretrained_stage1_path/unet_main``, 2-D) wrapped with the layout's
AnimateDiff v1-5-2 adapter, or the layout's released ``diffuEraser/unet_main`` when no stage-1 path is given;
its spatial layers and BrushNet are frozen. Clips of ``data.clip.nframes`` (22) frames; one timestep per clip,
repeated per frame for both the UNet and BrushNet, so any batch size works (upstream breaks above 1).
Checkpoints hold only the motion modules (MotionAdapter format); export rebuilds the full ``unet_main``.

Launch: ``vipo train jobs/configs/stage2_demo.yaml`` (tiny models, CPU) or ``jobs/configs/stage2.yaml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import MotionAdapter

from vipo.data import FinetuneDataset
from vipo.models.unet_brushnet import BrushNetUNet
from vipo.train.checkpointing import WEIGHTS_DIR
from vipo.train.diffueraser import (
    DiffuEraserRecipe,
    ValidationClips,
    apply_model_settings,
    diffusion_inputs,
    epsilon_loss,
    frozen_dtype,
    load_models,
)
from vipo.train.engine import build_engine
from vipo.train.export import MOTION_ADAPTER_DIR
from vipo.train.loop import TrainLoop
from vipo.train.recipes.configs import Stage2Config

__all__ = ["Stage2Config", "Stage2Recipe"]


def _load(cfg: Stage2Config, device: torch.device, dtype: torch.dtype, motion: Path | None):
    """Frozen encoders, the motion UNet (with ``motion`` adapter weights loaded when given) and BrushNet."""
    start = cfg.model.pretrained_stage1_path
    frozen, unet, brushnet = load_models(
        cfg.model.weights_root, stage=2, device=device, frozen_dtype=dtype,
        unet_path=start / "unet_main" if start else None, brushnet_path=start / "brushnet" if start else None,
    )
    if motion is not None:
        unet.load_motion_modules(MotionAdapter.from_pretrained(motion, local_files_only=True).to(device))
    return frozen, unet, brushnet


class Stage2Recipe(DiffuEraserRecipe):
    config_class = Stage2Config
    cfg: Stage2Config

    def setup(self, checkpoint: Path | None) -> None:
        cfg = self.cfg
        motion = checkpoint / WEIGHTS_DIR / MOTION_ADAPTER_DIR if checkpoint else None
        self.frozen, unet, brushnet = _load(cfg, self.ctx.device, frozen_dtype(cfg, self.ctx), motion)
        max_frames = unet.config.motion_max_seq_length
        if cfg.data.clip.nframes > max_frames:
            raise ValueError(f"data.clip.nframes={cfg.data.clip.nframes} exceeds the motion modules' "
                             f"max_seq_length {max_frames}")
        unet.freeze_unet2d_params()
        brushnet.requires_grad_(False)
        apply_model_settings([unet], cfg.model)  # BrushNet is frozen: nothing of it is kept for backward
        self.engine = build_engine(BrushNetUNet(unet, brushnet), cfg, self.ctx)
        dataset = FinetuneDataset(cfg.data, self.frozen.tokenizer)
        self.validation = ValidationClips(dataset, cfg.validation) if cfg.validation.every_n_steps else None
        # Last: the loop opens the MLflow run, which should not outlive a failed setup.
        self.loop = TrainLoop(self, cfg, self.ctx, self.engine, dataset, checkpoint=checkpoint,
                              loader_workers=cfg.loader_workers)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = diffusion_inputs(batch, self.frozen, self.ctx.device, self.loop.noise)
        loss = epsilon_loss(self.engine.module, inputs, self.frozen.scheduler, self.engine.input_dtype,
                            temporal=True)
        return loss, {}

    def save_checkpoint(self, directory: Path) -> None:
        """Only what trains: the motion modules, as a diffusers ``MotionAdapter`` folder."""
        self.engine.model.unet.save_motion_modules(directory / MOTION_ADAPTER_DIR)

    @classmethod
    def export(cls, cfg: Stage2Config, checkpoint: Path, out_dir: Path) -> None:
        """``unet_main/`` (UNetMotionModel with the trained motion modules), ``brushnet/``, ``motion_adapter/``."""
        motion = checkpoint / WEIGHTS_DIR / MOTION_ADAPTER_DIR
        _, unet, brushnet = _load(cfg, torch.device("cpu"), torch.float32, motion)
        unet.save_pretrained(out_dir / "unet_main")
        brushnet.save_pretrained(out_dir / "brushnet")
        shutil.copytree(motion, out_dir / MOTION_ADAPTER_DIR, dirs_exist_ok=True)
