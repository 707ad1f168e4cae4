"""Stage 1: DiffuEraser's image model. The 2-D main UNet and BrushNet are both trained.

``data.clip.nframes`` (10 by default) frames per clip are independent images (N = B·F samples) sharing one
timestep per clip; loss = ε-prediction MSE on the SD1.5 DDPM schedule; AdamW at ``optim.lr`` (5e-6 fine-tune
default, seed 002). Starts from ``model.pretrained_stage1_path`` (``unet_main/`` + ``brushnet/``) when given,
else from SD1.5's UNet and the layout's released BrushNet, as upstream's stage-1 script does.

Launch: ``vipo train jobs/configs/stage1_demo.yaml`` (tiny models, CPU) or ``jobs/configs/stage1.yaml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

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
from vipo.train.loop import TrainLoop
from vipo.train.recipes.configs import Stage1Config

__all__ = ["Stage1Config", "Stage1Recipe"]


class Stage1Recipe(DiffuEraserRecipe):
    config_class = Stage1Config
    cfg: Stage1Config

    def setup(self, checkpoint: Path | None) -> None:
        """Models (resumed weights from ``checkpoint`` if given), engine, data, loop, validation clips."""
        cfg = self.cfg
        start = checkpoint / WEIGHTS_DIR if checkpoint else cfg.model.pretrained_stage1_path
        self.frozen, unet, brushnet = load_models(
            cfg.model.weights_root, stage=1, device=self.ctx.device, frozen_dtype=frozen_dtype(cfg, self.ctx),
            unet_path=start / "unet_main" if start else None, brushnet_path=start / "brushnet" if start else None,
        )
        apply_model_settings([unet, brushnet], cfg.model)
        self.engine = build_engine(BrushNetUNet(unet, brushnet), cfg, self.ctx)
        dataset = FinetuneDataset(cfg.data, self.frozen.tokenizer)
        self.validation = ValidationClips(dataset, cfg.validation) if cfg.validation.every_n_steps else None
        # Last: the loop opens the MLflow run, which should not outlive a failed setup.
        self.loop = TrainLoop(self, cfg, self.ctx, self.engine, dataset, checkpoint=checkpoint,
                              loader_workers=cfg.loader_workers)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = diffusion_inputs(batch, self.frozen, self.ctx.device, self.loop.noise)
        loss = epsilon_loss(self.engine.module, inputs, self.frozen.scheduler, self.engine.input_dtype,
                            temporal=False)
        return loss, {}

    def save_checkpoint(self, directory: Path) -> None:
        self.engine.model.unet.save_pretrained(directory / "unet_main")
        self.engine.model.brushnet.save_pretrained(directory / "brushnet")

    @classmethod
    def export(cls, cfg: Stage1Config, checkpoint: Path, out_dir: Path) -> None:
        """``unet_main/`` (UNet2DConditionModel) and ``brushnet/``: the checkpoint's folders as they are."""
        for name in ("unet_main", "brushnet"):
            shutil.copytree(checkpoint / WEIGHTS_DIR / name, out_dir / name, dirs_exist_ok=True)
