"""ProPainter pieces shared by the ``flowcomp`` and ``propainter`` recipes: config blocks, frozen networks, flows
for a batch, progressive resolution, validation clips and metrics, export to the released ``.pth`` files.

Seed-003 keys and where they live: ``lr`` → ``optim.lr``; ``lr_scheme: MultiStepLR`` → ``optim.lr_scheduler:
multistep``; ``lr_steps``/``lr_gamma`` → ``optim.milestones``/``optim.gamma``; ``total_iter`` → ``optim.max_steps``;
``warmup``/``warmup_lr`` → ``optim.warmup_steps``/``optim.warmup_start_lr``; ``beta1``/``beta2`` → ``optim.betas``;
``weight_decay`` → ``optim.weight_decay`` (0: Adam); ``save_freq`` → ``checkpointing.every_n_steps``; ``val_freq`` →
``validation.every_n_steps``; ``log_freq`` → ``log_every_n_steps``; ``batch_size`` → ``batch_size`` (per worker);
``data_root``/``flow_root``/``mask_root`` → ``data.sources``/``data.flows_root``/``data.mask_root``; ``num_frames``/
``num_local_frames``/``num_ref_frames``/``size``/``random_reverse_clip``/``flip`` → ``data.*`` (``size`` is
(height, width) here); ``fp16`` → ``precision``; ``progressive.*`` → ``progressive.*``; ``loss.*`` → ``loss.*``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vipo.data.propainter import ProPainterDataset
from vipo.models.propainter import BidirectionalRAFT
from vipo.pipelines.propainter import WEIGHT_FILES, ProPainterPipeline, random_models, save_random_propainter_weights
from vipo.train.checkpointing import WEIGHTS_DIR, atomic_save
from vipo.train.config import ValidationSettings
from vipo.train.recipes.configs import ProgressiveSettings, ProPainterModelSettings, ProPainterTrainConfig

__all__ = [
    "ProPainterModelSettings",
    "ProPainterTrainConfig",
    "ProgressiveSettings",
    "batch_flows",
    "export_released",
    "frame_metrics",
    "load_networks",
    "resize_batch",
    "validation_samples",
]

RANDOM_WEIGHTS_NOTE = "RANDOM (demo/test weights, not ProPainter's)"


def load_networks(settings: ProPainterModelSettings, device: torch.device, generator: bool = True):
    """``(BidirectionalRAFT, flow completion, generator or None)`` on ``device``, frozen in eval mode: the released
    files of ``weights_dir`` (the flow completion from ``flow_completion_path`` when given), or random weights."""
    if settings.weights_dir is None:
        raft, flow_completion, released_generator = random_models(settings.random_weights_seed, generator)
    else:
        pipeline = ProPainterPipeline.from_pretrained(settings.weights_dir, progress=False)
        raft, flow_completion, released_generator = pipeline.flow.raft, pipeline.flow_completion, pipeline.generator
    if settings.flow_completion_path is not None:
        state = torch.load(settings.flow_completion_path, map_location="cpu", weights_only=True)
        flow_completion.load_state_dict(state, strict=True)
    flow = BidirectionalRAFT(raft, iterations=settings.raft_iterations).to(device)
    flow_completion = flow_completion.to(device).eval().requires_grad_(False)
    if released_generator is not None:
        released_generator = released_generator.to(device).eval().requires_grad_(False)
    return flow, flow_completion, released_generator if generator else None


def frozen_weights_note(settings: ProPainterModelSettings) -> str:
    return RANDOM_WEIGHTS_NOTE if settings.weights_dir is None else str(settings.weights_dir)


def resize_batch(batch: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Frames (bilinear), holes (nearest) and any flows (bilinear, vectors scaled) of a batch at ``size``."""
    height, width = batch["frames"].shape[-2:]
    if (height, width) == tuple(size):
        return batch

    def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x.flatten(0, 1), size=size, mode=mode, **kwargs).view(*x.shape[:3], *size)

    out = dict(batch, frames=resample(batch["frames"], "bilinear"), holes=resample(batch["holes"], "nearest"))
    scale = torch.tensor([size[1] / width, size[0] / height]).view(1, 1, 2, 1, 1)
    for key in ("flows_forward", "flows_backward"):
        if key in batch:
            out[key] = resample(batch[key], "bilinear") * scale.to(batch[key])
    return out


def batch_flows(batch: dict[str, torch.Tensor], raft: torch.nn.Module,
                num_local: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward flows (B,L-1,2,H,W) between the local frames: the precomputed ones when the batch has them,
    else RAFT (fp32, autocast off) on the ground-truth local frames."""
    if "flows_forward" in batch:
        return batch["flows_forward"], batch["flows_backward"]
    with torch.autocast(batch["frames"].device.type, enabled=False):
        return raft(batch["frames"][:, :num_local].float())


def validation_samples(dataset: ProPainterDataset, settings: ValidationSettings) -> list[tuple[str, dict]]:
    """Fixed validation clips: one per distinct video (the named ``videos``, else the first ``num_videos``),
    drawn from ``settings.seed`` with no augmentation: [(video id, sample with a batch dimension)]."""
    config = dataset.config.model_copy(update={"reverse_prob": 0.0, "flip_prob": 0.0, "seed": settings.seed})
    fixed = ProPainterDataset(config, videos=list(dict.fromkeys(dataset.index)))
    chosen: dict[str, int] = {}
    for index, video in enumerate(fixed.index):
        name = video.video_id
        wanted = (not settings.videos and len(chosen) < settings.num_videos) or name in settings.videos or \
            name.split("/")[-1] in settings.videos
        if wanted and name not in chosen:
            chosen[name] = index
    fixed.set_epoch(0)
    # Names without "/" (video ids are "<source>/<video>"): they become image and GIF file names.
    return [(name.replace("/", "_"), {k: v[None] for k, v in fixed[index].items()}) for name, index in chosen.items()]


def frame_metrics(prediction: np.ndarray, truth: np.ndarray, holes: np.ndarray) -> dict[str, float]:
    """Whole-frame PSNR/SSIM (as the paper reports them) and the same inside the hole, averaged over frames.
    uint8 (F,H,W,3) ×2, bool holes (F,H,W)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr, ssim, hole_psnr, hole_ssim = [], [], [], []
    for pred, gt, hole in zip(prediction, truth, holes):
        psnr.append(peak_signal_noise_ratio(gt, pred, data_range=255))
        score, ssim_map = structural_similarity(gt, pred, channel_axis=-1, data_range=255, full=True)
        ssim.append(score)
        if hole.any():
            mse = np.mean((pred[hole].astype(np.float64) - gt[hole]) ** 2)
            hole_psnr.append(10 * np.log10(255.0**2 / max(mse, 1e-10)))
            hole_ssim.append(float(ssim_map[hole].mean()))
    nan = float("nan")
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)),
            "hole_psnr": float(np.mean(hole_psnr)) if hole_psnr else nan,
            "hole_ssim": float(np.mean(hole_ssim)) if hole_ssim else nan}


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T,3,H,W) in [-1,1] -> (T,H,W,3) uint8."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_released(state_dict: dict[str, torch.Tensor], directory: Path, name: str) -> None:
    """``directory/<released file name>`` (``ProPainter.pth``, ...), written atomically, tensors on the CPU."""
    atomic_save({k: v.detach().cpu() for k, v in state_dict.items()}, Path(directory) / name)


def export_released(cfg: ProPainterTrainConfig, checkpoint: Path, out_dir: Path, trained: list[str]) -> None:
    """A complete inference folder: the checkpoint's ``trained`` files plus the frozen ones the run used
    (copied from ``weights_dir``, or the same random weights regenerated from ``random_weights_seed``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = cfg.model
    if model.weights_dir is None:
        save_random_propainter_weights(out_dir, model.random_weights_seed)
    else:
        for name in WEIGHT_FILES.values():
            shutil.copy2(model.weights_dir / name, out_dir / name)
    if model.flow_completion_path is not None:
        shutil.copy2(model.flow_completion_path, out_dir / WEIGHT_FILES["flow_completion"])
    for name in trained:
        shutil.copy2(Path(checkpoint) / WEIGHTS_DIR / name, out_dir / name)


def log_tags(recipe: Any, tags: dict[str, str]) -> None:
    """Record where frozen weights / the VGG trunk come from (MLflow tags on rank 0, and the console)."""
    if recipe.ctx.is_main:
        recipe.loop.logger.set_tags(tags)
        for key, value in tags.items():
            if "RANDOM" in value:
                print(f"note: {key} = {value}")
