"""ProPainter's main network (generator + T-PatchGAN discriminator), after upstream ``core/trainer.py``.

Each step, with RAFT and the flow-completion network frozen: flows between the ``data.num_local_frames`` local
ground-truth frames (precomputed or RAFT on the fly) are completed inside the holes, the masked local frames are
filled by image propagation along them (reference frames stay masked), and the generator inpaints all T frames.
The discriminator is updated first (hinge loss on real vs the detached composited clip, its own Adam and schedule
from ``discriminator.*``), then the generator against the updated discriminator: hole/valid L1, hinge adversarial,
VGG perceptual and style, output warp (census) and the logged flow term, weights in ``loss`` (presets ``seed`` and
``upstream``).

Checkpoints hold ``weights/ProPainter.pth`` and ``weights/discriminator.pth``, both optimisers, both schedules and
both scalers; the export is a complete inference folder (``ProPainter.pth`` + the run's RAFT and flow-completion
files). Launch: ``vipo train jobs/configs/propainter_demo.yaml`` (CPU, random weights) or ``propainter.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vipo.data.propainter import ProPainterDataset
from vipo.losses.propainter import (
    census_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    hole_valid_l1,
    warp_confidence,
)
from vipo.losses.vgg import VGGFeatures, perceptual_style_losses
from vipo.models.propainter import Discriminator, InpaintGenerator, flow_warp, propagate_images
from vipo.pipelines.propainter import WEIGHT_FILES
from vipo.train.adversarial import AdversarialEngine, frozen
from vipo.train.checkpointing import WEIGHTS_DIR
from vipo.train.engine import WorkerContext
from vipo.train.loop import TrainLoop
from vipo.train.propainter import (
    batch_flows,
    export_released,
    frame_metrics,
    frozen_weights_note,
    load_networks,
    log_tags,
    resize_batch,
    save_released,
    to_uint8,
    validation_samples,
)
from vipo.train.recipes.configs import ProPainterLossSettings, ProPainterRecipeConfig

__all__ = ["DISCRIMINATOR_FILE", "ProPainterLossSettings", "ProPainterRecipe", "ProPainterRecipeConfig"]

GENERATOR_FILE = WEIGHT_FILES["generator"]
DISCRIMINATOR_FILE = "discriminator.pth"


class ProPainterRecipe:
    config_class = ProPainterRecipeConfig
    manifest_path = None

    def __init__(self, cfg: ProPainterRecipeConfig, ctx: WorkerContext):
        self.cfg, self.ctx = cfg, ctx
        self.parent_checkpoint = cfg.model.weights_dir

    @classmethod
    def prepare(cls, cfg: ProPainterRecipeConfig) -> None:
        """Nothing to write: random demo weights are built in each worker from ``random_weights_seed``."""

    def setup(self, checkpoint: Path | None) -> None:
        cfg = self.cfg
        self.raft, self.flow_completion, generator = load_networks(cfg.model, self.ctx.device,
                                                                   generator=cfg.model.init == "released")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.model.init == "scratch":
                generator = InpaintGenerator()
            discriminator = Discriminator()
        if checkpoint is not None:
            for network, name in ((generator, GENERATOR_FILE), (discriminator, DISCRIMINATOR_FILE)):
                state = torch.load(checkpoint / WEIGHTS_DIR / name, map_location="cpu", weights_only=True)
                network.load_state_dict(state, strict=True)
        generator.train().requires_grad_(True)
        discriminator.train().requires_grad_(True)
        self.engine = AdversarialEngine(generator, discriminator, cfg, cfg.discriminator.optim, self.ctx)
        loss = cfg.loss
        self.vgg = None
        if loss.perceptual_weight > 0 or loss.style_weight > 0:
            self.vgg = VGGFeatures(loss.vgg, seed=cfg.seed).to(self.ctx.device)
        self.dataset = ProPainterDataset(cfg.data)
        self.validation = validation_samples(self.dataset, cfg.validation) if cfg.validation.every_n_steps else []
        self.loop = TrainLoop(self, cfg, self.ctx, self.engine, self.dataset, checkpoint=checkpoint,
                              loader_workers=cfg.loader_workers)
        log_tags(self, {"vipo.propainter.frozen_weights": frozen_weights_note(cfg.model),
                        "vipo.propainter.vgg": self.vgg.source if self.vgg is not None else "unused"})

    def train(self) -> None:
        self.loop.run()

    @torch.no_grad()
    def _inputs(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Ground truth, holes, RAFT and completed flows, and the generator's inputs after image propagation
        (fp32, autocast off: the frozen stage runs as at inference)."""
        num_local = self.cfg.data.num_local_frames
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        batch = resize_batch(batch, self.cfg.progressive.size_at(step, self.cfg.data.size))
        frames, holes = batch["frames"], batch["holes"]
        truth = batch_flows(batch, self.raft, num_local)
        with torch.autocast(frames.device.type, enabled=False):
            completed = self.flow_completion.complete_flows(*truth, holes[:, :num_local])
            masked = frames * (1 - holes)
            propagated, remaining = propagate_images(masked[:, :num_local], *completed, holes[:, :num_local])
        return {"frames": frames, "holes": holes, "truth": truth, "completed": completed,
                "inputs": torch.cat([propagated, masked[:, num_local:]], dim=1),
                "holes_updated": torch.cat([remaining, holes[:, num_local:]], dim=1)}

    def _generate(self, network: torch.nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return network(x["inputs"], *x["completed"], x["holes"], x["holes_updated"],
                       num_local_frames=self.cfg.data.num_local_frames)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, loss = self.cfg, self.cfg.loss
        num_local = cfg.data.num_local_frames
        x = self._inputs(batch, self.loop.progress.step)
        frames, holes = x["frames"], x["holes"]
        predicted = self._generate(self.engine.module, x)
        composited = predicted * holes + frames * (1 - holes)
        metrics: dict[str, float] = {}
        terms: dict[str, torch.Tensor] = {}
        terms["hole_l1"], terms["valid_l1"] = hole_valid_l1(predicted, frames, holes)
        if loss.adversarial_weight > 0:
            # D first, on (real, detached fake) in one call; then G against the updated D, whose weights are frozen
            # for that term so it leaves no gradient in D.
            def discriminator_loss() -> torch.Tensor:
                scores = self.engine.discriminator.module(torch.cat([frames, composited.detach()]))
                return hinge_discriminator_loss(*scores.chunk(2))

            metrics["d_loss"] = float(self.engine.discriminator_step(discriminator_loss))
            metrics["d_lr"] = self.engine.discriminator_lr
            with frozen(self.engine.discriminator.model) as discriminator:
                terms["adversarial"] = hinge_generator_loss(discriminator(composited))
        if self.vgg is not None:
            terms["perceptual"], terms["style"] = perceptual_style_losses(
                self.vgg, predicted.flatten(0, 1), frames.flatten(0, 1), loss.vgg.layers)
        if loss.warp_weight > 0:
            forward = x["truth"][0].flatten(0, 1)
            current, following = predicted[:, :num_local - 1].flatten(0, 1), predicted[:, 1:num_local].flatten(0, 1)
            confidence = warp_confidence(frames[:, :num_local - 1].flatten(0, 1), frames[:, 1:num_local].flatten(0, 1),
                                         forward)
            terms["warp"] = census_loss(current, flow_warp(following, forward), confidence,
                                        holes[:, :num_local - 1].flatten(0, 1))
        terms["flow"] = hole_valid_l1(x["completed"][0], x["truth"][0], holes[:, :num_local - 1])[0]
        weights = {"hole_l1": loss.hole_weight, "valid_l1": loss.valid_weight, "adversarial": loss.adversarial_weight,
                   "perceptual": loss.perceptual_weight, "style": loss.style_weight, "warp": loss.warp_weight,
                   "flow": loss.flow_weight}
        total = sum(weights[name] * value for name, value in terms.items())
        metrics.update({name: float(value.detach()) for name, value in terms.items()})
        return total, metrics

    def validate(self, step: int) -> dict[str, np.ndarray]:
        """Inpaint each validation clip's local frames (eval mode, composited): whole-frame and hole PSNR/SSIM to
        MLflow, and strips of masked input / result / ground truth."""
        videos, per_clip = {}, []
        num_local = self.cfg.data.num_local_frames
        for name, sample in self.validation:
            x = self._inputs(sample, self.cfg.optim.max_steps)
            predicted = self._generate(self.engine.model.generator, x)[0]
            frames, holes = x["frames"][0, :num_local], x["holes"][0, :num_local]
            result = to_uint8(predicted * holes + frames * (1 - holes))
            truth, hole = to_uint8(frames), holes[:, 0].bool().cpu().numpy()
            per_clip.append(frame_metrics(result, truth, hole))
            videos[f"val_{name}"] = np.concatenate([to_uint8(frames * (1 - holes)), result, truth], axis=1)
        if per_clip and self.ctx.is_main:
            self.loop.logger.log_metrics(
                {f"val/{key}": float(np.nanmean([m[key] for m in per_clip])) for key in per_clip[0]}, step=step)
        return videos

    def save_checkpoint(self, directory: Path) -> None:
        save_released(self.engine.model.generator.state_dict(), directory, GENERATOR_FILE)
        save_released(self.engine.model.discriminator.state_dict(), directory, DISCRIMINATOR_FILE)

    @classmethod
    def export(cls, cfg: ProPainterRecipeConfig, checkpoint: Path, out_dir: Path) -> None:
        """``ProPainter.pth`` trained, with the run's RAFT and flow-completion files beside it."""
        export_released(cfg, checkpoint, out_dir, [GENERATOR_FILE])

    def cleanup(self) -> None:
        for name in ("engine", "raft", "flow_completion", "vgg", "loop"):
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
