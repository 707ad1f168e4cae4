"""Scoring one clip the way the research group learned to.

The hard composite (prediction inside the hole, ground truth outside) is built in memory from the raw prediction
and scored frame by frame — never re-read from an encoded video, which cost them ~3 dB. Every metric of a clip is
computed in the same call, on the device the actor holds (GPU when it has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from evaluation.metrics import (
    bbox_psnr,
    boundary_ring_psnr,
    estimate_gt_flow,
    frame_ssim_win65,
    get_lpips,
    masked_lpips,
    masked_psnr,
    masked_ssim,
    outside_change,
    to_mask_tensor,
    to_video_tensor,
    warping_error,
)
from evaluation.metrics.lpips_metric import _find_backbone_checkpoint
from evaluation.metrics.warping import _raft_checkpoint
from vipo.config import Config, ExistingPath
from vipo.generate.candidates import hard_composite
from vipo.tracking import file_hash

__all__ = ["METRICS", "MetricInfo", "Scorer", "ScoringConfig"]


@dataclass(frozen=True)
class MetricInfo:
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo(True, "whole-frame PSNR (dB), as published tables report it"),
    "ssim": MetricInfo(True, "whole-frame SSIM (Gaussian 11, sigma 1.5)"),
    "ssim_win65": MetricInfo(True, "whole-frame SSIM as ProPainter and the group's table report it (skimage, "
                                   "uniform 65x65 window; NaN on frames under 65 px)"),
    "lpips": MetricInfo(False, "whole-frame LPIPS"),
    "psnr_hole": MetricInfo(True, "PSNR over hole pixels only (the group's strict_mask_pixel_psnr)"),
    "ssim_hole": MetricInfo(True, "SSIM map averaged over hole pixels"),
    "lpips_hole": MetricInfo(False, "LPIPS map averaged over hole pixels"),
    "psnr_bbox": MetricInfo(True, "PSNR over the hole's bounding box (the group's 'mask PSNR')"),
    "psnr_boundary_ring": MetricInfo(True, "PSNR over a ring of ring_px around the hole edge"),
    "ewarp_x1000": MetricInfo(False, "warping error x1000 (Lai et al. 2018; flow on the ground truth)"),
    "ewarp_hole_x1000": MetricInfo(False, "warping error x1000 over pixels whose flow touches the hole"),
    "outside_mean_abs": MetricInfo(False, "mean |composite - GT| outside the hole (0 when compositing is right)"),
    "outside_max_abs": MetricInfo(False, "max |composite - GT| outside the hole"),
}
"""Every metric the scorer can compute: name → direction and meaning. Values are per clip (frame mean)."""

MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]
_LPIPS = {"lpips", "lpips_hole"}
_EWARP = {"ewarp_x1000", "ewarp_hole_x1000"}
_OUTSIDE = {"outside_mean_abs", "outside_max_abs"}


class ScoringConfig(Config):
    """Which metrics and the weights they need. Missing LPIPS/RAFT weights are an error, never a silent switch."""

    metrics: list[MetricName] = Field(default_factory=lambda: list(METRICS), min_length=1)
    lpips_net: Literal["alex", "vgg"] = "alex"
    lpips_backbone_weights: ExistingPath | None = None
    """torchvision ImageNet trunk (.pth); default: the torch hub cache (see ``evaluation.metrics.get_lpips``)."""
    allow_random_lpips_backbone: bool = False
    """Tests and demos only: a random LPIPS trunk when no ImageNet weights exist (the scores are then not LPIPS)."""
    flow: Literal["dis", "raft"] = "dis"
    """Ground-truth flow of the warping error: OpenCV DIS, or torchvision RAFT-large (the group's choice)."""
    raft_weights: ExistingPath | None = None
    ring_px: int = Field(default=3, ge=1)

    def flow_note(self) -> str | None:
        """Which ground-truth flow the warping error used (its absolute values depend on it); None without it."""
        if not _EWARP & set(self.metrics):
            return None
        source = "OpenCV DIS (medium preset)" if self.flow == "dis" else "torchvision RAFT-large"
        return f"warping error: ground-truth flow from {source}"

    def identity(self) -> dict:
        """What determines the scores: the settings plus the content hashes of the LPIPS trunk and RAFT weights
        actually found (config path or torch hub cache; not the paths). Missing weights fail here, before any run."""
        data = self.model_dump(mode="json", exclude={"lpips_backbone_weights", "raft_weights"})
        data["metrics"] = sorted(self.metrics)
        wanted = set(self.metrics)
        if _LPIPS & wanted:
            trunk = _find_backbone_checkpoint(self.lpips_net, self.lpips_backbone_weights)
            if trunk is None and not self.allow_random_lpips_backbone:
                get_lpips(self.lpips_net)  # raises FileNotFoundError naming the file to provide
            data["lpips_trunk"] = file_hash(trunk) if trunk is not None else "random"
        if _EWARP & wanted and self.flow == "raft":
            data["raft"] = file_hash(_raft_checkpoint(self.raft_weights))
        return data


class Scorer:
    """Scores raw predictions of a clip against its ground truth. ``setup`` builds the networks once per actor."""

    def __init__(self, config: ScoringConfig):
        self.config = config
        self.device = torch.device("cpu")
        self._lpips = None

    def setup(self, device: str | torch.device) -> "Scorer":
        self.device = torch.device(device)
        if _LPIPS & set(self.config.metrics):
            self._lpips = get_lpips(self.config.lpips_net, self.config.lpips_backbone_weights,
                                    self.config.allow_random_lpips_backbone).to(self.device)
        return self

    @torch.no_grad()
    def score(self, frames: np.ndarray, hole: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
        """All configured metrics of one clip.

        Args:
            frames: ground truth, uint8 ``(F, H, W, 3)``.
            hole: bool ``(F, H, W)``, True = hole (the benchmark's, undilated).
            prediction: the method's raw output, uint8 ``(F, H, W, 3)``; only its hole pixels are used.

        Returns:
            metric name → value (NaN where a region is empty in every frame).
        """
        if prediction.shape != frames.shape or prediction.dtype != np.uint8:
            raise ValueError(f"prediction must be uint8 {frames.shape}, got {prediction.dtype} {prediction.shape}")
        composite_frames = hard_composite(frames, prediction, hole)
        composite = to_video_tensor(composite_frames, self.device)
        target = to_video_tensor(frames, self.device)
        mask = to_mask_tensor(hole, like=composite)
        wanted = set(self.config.metrics)
        values: dict[str, torch.Tensor] = {}
        for region, suffix in (("frame", ""), ("hole", "_hole")):
            if f"psnr{suffix}" in wanted:
                values[f"psnr{suffix}"] = masked_psnr(composite, target, mask, region=region)
            if f"ssim{suffix}" in wanted:
                values[f"ssim{suffix}"] = masked_ssim(composite, target, mask, region=region)
            if f"lpips{suffix}" in wanted:
                values[f"lpips{suffix}"] = masked_lpips(composite, target, mask, self._lpips, region=region)
        if "ssim_win65" in wanted:
            values["ssim_win65"] = torch.tensor([frame_ssim_win65(composite_frames, frames)])
        if "psnr_bbox" in wanted:
            values["psnr_bbox"] = bbox_psnr(composite, target, mask)
        if "psnr_boundary_ring" in wanted:
            values["psnr_boundary_ring"] = boundary_ring_psnr(composite, target, mask, ring_px=self.config.ring_px)
        if _EWARP & wanted:
            flow = estimate_gt_flow(target, self.config.flow, self.config.raft_weights)
            if "ewarp_x1000" in wanted:
                values["ewarp_x1000"] = warping_error(composite, target, gt_flow=flow).value * 1000
            if "ewarp_hole_x1000" in wanted:
                values["ewarp_hole_x1000"] = warping_error(composite, target, mask, gt_flow=flow).value * 1000
        if _OUTSIDE & wanted:
            change = outside_change(composite, target, mask)
            values["outside_mean_abs"], values["outside_max_abs"] = change.mean, change.max
        return {name: float(values[name][0]) for name in self.config.metrics}
