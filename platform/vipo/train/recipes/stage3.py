"""Stage 3: Region-Reg-DPO (or the log-ratio variant) on preference shards, LoRA on the main UNet by default.

Each step (Diffusion-DPO, Wallace et al. 2023): winner = ground truth, loser = the shard's chosen negative; one t and
one ε per pair; the policy runs once on [winner; loser], the reference (the same UNet with its LoRA disabled, or
a frozen copy) once under ``no_grad``; the loss (``loss.kind``, :mod:`vipo.losses`) runs in fp32 outside autocast.
Every loss statistic goes to MLflow each step as ``dpo/<name>`` (``dpo/dgr`` is β′σ(β′s), the analytic DPO
weight); the shared loop's ``grad_norm`` is the parameter-gradient norm *before* clipping. Health checks
(:class:`vipo.losses.DPOHealthMonitor`) stop the run at step 0 if policy and reference disagree, and flag a
collapsed DGR, a loss stuck at ln 2 or an exploded winner gap in the log, as MLflow tags ``vipo.health.<code>``
and as the metrics ``health/<code>`` (0/1) that Tune's health stopper reads.

Tuning scope, reference and starting weights: :mod:`vipo.train.dpo_models`. The SFT-only control is
``loss.alpha: [0, 0, 0]`` with a non-zero ``loss.rho``.

Noise (``noise``): winner and loser are forward-diffused with one drawn ε (``forward``, the default). The roadmap
asks for DDIM-inversion noise; we keep standard Diffusion-DPO because its loss is a bound on the likelihood ratio
under the forward process q(x_t | x_0) with ε ~ N(0, I): an ε derived from the reference's own predictions leaves
that objective, costs ``inversion_steps`` extra reference passes per step, and puts the pair on the reference's
trajectory, where policy and reference agree most and the preference signal is weakest. ``noise: inversion``
(:func:`vipo.train.dpo_step.inversion_noise`: the winner DDIM-inverted by the reference, ε shared by the pair) is
there as an ablation.

Launch: ``vipo generate jobs/configs/generate_demo.yaml`` then ``vipo train jobs/configs/stage3_dpo_demo.yaml``
(tiny models, CPU), or ``jobs/configs/stage3_dpo.yaml`` / ``stage3_log_ratio.yaml`` (full size).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vipo.data import MANIFEST_NAME, DPODataset
from vipo.losses import (
    HEALTH_CODES,
    DPOHealthMonitor,
    compute_dpo_loss,
    summarize_stats,
)
from vipo.models.diffueraser_weights import DiffuEraserWeights
from vipo.train.checkpointing import WEIGHTS_DIR
from vipo.train.config import ValidationSettings
from vipo.train.diffueraser import DiffuEraserRecipe, ValidationClips, apply_model_settings, frozen_dtype
from vipo.train.dpo_models import (
    build_reference,
    export_policy,
    load_policy,
    save_policy,
)
from vipo.train.dpo_step import inversion_noise, pair_predictions, preference_inputs
from vipo.train.engine import WorkerContext, build_engine
from vipo.train.loop import TrainLoop
from vipo.train.recipes.configs import Stage3Config

__all__ = ["ShardValidationClips", "Stage3Config", "Stage3Recipe"]



class ShardValidationClips(ValidationClips):
    """The shared validation (:class:`ValidationClips`) on the first ``settings.num_videos`` preference clips:
    their ground-truth frames and stored holes, at the stored size. The recipe holds them out of training."""

    def __init__(self, dataset: DPODataset, settings: ValidationSettings):
        self.settings = settings
        self.clips: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for index in range(min(settings.num_videos, len(dataset))):
            raw = dataset.load_raw(index, epoch=0)
            self.clips[raw["clip_id"].replace("/", "_").replace("#", "_")] = (raw["pos"], raw["hole"])


class Stage3Recipe(DiffuEraserRecipe):
    config_class = Stage3Config
    cfg: Stage3Config

    def __init__(self, cfg: Stage3Config, ctx: WorkerContext):
        super().__init__(cfg, ctx)
        self.manifest_path: Path = cfg.data.shards / MANIFEST_NAME
        self._checked_step = -1

    @property
    def parent_checkpoint(self) -> Path:
        return self.cfg.model.parent or DiffuEraserWeights(self.cfg.model.weights_root).unet_main.parent

    def setup(self, checkpoint: Path | None) -> None:
        """Policy (resumed from ``checkpoint`` if given), engine, reference, health monitor, data, loop."""
        cfg, ctx = self.cfg, self.ctx
        weights = checkpoint / WEIGHTS_DIR if checkpoint else None
        self.frozen, policy = load_policy(cfg.model, cfg.tuning, ctx.device, frozen_dtype(cfg, ctx), weights,
                                          seed=cfg.seed)
        trained = [m for m in (policy.unet, policy.brushnet) if any(p.requires_grad for p in m.parameters())]
        apply_model_settings(trained, cfg.model)
        self.engine = build_engine(policy, cfg, ctx)
        self.reference = build_reference(cfg.model, cfg.tuning, cfg.reference, self.engine.model, ctx.device,
                                         self.engine.input_dtype)
        self.health = DPOHealthMonitor(dpo_active=cfg.loss.has_dpo_term, identical_start=cfg.reference.path is None)
        dataset = DPODataset(cfg.data, self.frozen.tokenizer)
        self.validation = None
        if cfg.validation.every_n_steps:
            self.validation = ShardValidationClips(dataset, cfg.validation)
            # Held out: a score on clips the policy trained on would reward memorising them.
            dataset.rows = dataset.rows[len(self.validation.clips):]
        # Last: the loop opens the MLflow run, which should not outlive a failed setup.
        self.loop = TrainLoop(self, cfg, ctx, self.engine, dataset, checkpoint=checkpoint,
                              loader_workers=cfg.loader_workers)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = preference_inputs(batch, self.frozen, self.ctx.device, self.loop.noise)
        if self.cfg.noise == "inversion":
            inputs = dataclasses.replace(inputs, noise=inversion_noise(
                self.reference, inputs, self.frozen.scheduler, self.cfg.inversion_steps, self.engine.input_dtype))
        predictions = pair_predictions(self.engine.module, self.engine.model, self.reference, inputs,
                                       self.frozen.scheduler, self.engine.input_dtype)
        # bf16 keeps ~3 digits; Δ ≈ 1e-4 on an MSE of ≈ 0.1 needs the loss path in fp32 (dpo.md §6.5).
        with torch.autocast(self.ctx.device.type, enabled=False):
            loss, stats = compute_dpo_loss(
                self.cfg.loss, inputs.per_pair(inputs.noise), predictions.policy_win, predictions.policy_lose,
                predictions.ref_win, predictions.ref_lose, inputs.regions, inputs.timesteps,
                self.frozen.scheduler.alphas_cumprod,
            )
        self._check_health(stats)
        # Reported with every checkpoint, so a Tune stopper can end a trial the monitor flagged.
        flags = {f"health/{code}": float(self.health.flagged(code)) for code in HEALTH_CODES}
        return loss, {**summarize_stats(stats, prefix="dpo/"), **flags}

    def _check_health(self, stats: dict[str, torch.Tensor]) -> None:
        """Once per optimiser step (its first micro-batch); raises ``DPOHealthError`` at step 0 on a setup bug."""
        step = self.loop.progress.step
        if step == self._checked_step:
            return
        self._checked_step = step
        for warning in self.health.check(step, stats):
            tqdm.write(f"warning: DPO health [{warning.code}] {warning.message}", file=sys.stderr)
            self.loop.logger.set_tags({f"vipo.health.{warning.code}": warning.message})

    def save_checkpoint(self, directory: Path) -> None:
        save_policy(self.engine.model, self.cfg.model, self.cfg.tuning, directory)

    @classmethod
    def export(cls, cfg: Stage3Config, checkpoint: Path, out_dir: Path) -> None:
        """``unet_main/`` (LoRA merged), ``brushnet/``, and ``lora/`` or ``motion_adapter/`` (see
        :func:`vipo.train.dpo_models.export_policy`)."""
        export_policy(cfg.model, cfg.tuning, checkpoint / WEIGHTS_DIR, out_dir)
