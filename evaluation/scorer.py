"""Scoring one clip the way the research group learned to.

The hard composite (prediction inside the hole, ground truth outside) is built in memory from the raw prediction
and scored frame by frame — never re-read from an encoded video, which cost them ~3 dB. Every metric of a clip is
computed in the same call, on the device the actor holds (GPU when it has one).
"""

from __future__ import annotations

import numpy as np
import torch

from evaluation.hallucination import build_hallucination_scorer
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
from evaluation.metrics.clip_consistency import clip_temporal_consistency, get_clip_embedder
from evaluation.metrics.vfid import get_i3d, i3d_features
from evaluation.scoring import EWARP_METRICS, HALLUCINATION_METRICS, LPIPS_METRICS, OUTSIDE_METRICS, ScoringConfig
from vipo.generate.candidates import hard_composite

__all__ = ["Scorer"]


class Scorer:
    """Scores raw predictions of a clip against its ground truth. ``setup`` builds the networks once per actor."""

    def __init__(self, config: ScoringConfig):
        self.config = config
        self.device = torch.device("cpu")
        self._lpips = self._i3d = self._clip = self._hallucination = None

    def setup(self, device: str | torch.device) -> "Scorer":
        self.device = torch.device(device)
        config, wanted = self.config, set(self.config.metrics)
        if LPIPS_METRICS & wanted:
            self._lpips = get_lpips(config.lpips_net, config.lpips_backbone_weights,
                                    config.allow_random_lpips_backbone).to(self.device)
        if "vfid" in wanted:
            self._i3d = get_i3d(config.i3d_weights, config.allow_random_i3d).to(self.device)
        if "tc_clip" in wanted:
            self._clip = get_clip_embedder(config.clip_weights, config.allow_random_clip).to(self.device)
        if HALLUCINATION_METRICS & wanted:
            self._hallucination = build_hallucination_scorer(config.hallucination)
            self._hallucination.setup(self.device)
        return self

    @torch.no_grad()
    def score(self, frames: np.ndarray, hole: np.ndarray, prediction: np.ndarray,
              prior: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, list[float]]]:
        """All configured metrics of one clip.

        Args:
            frames: ground truth, uint8 ``(F, H, W, 3)``.
            hole: bool ``(F, H, W)``, True = hole (the benchmark's, undilated).
            prediction: the method's raw output, uint8 ``(F, H, W, 3)``; only its hole pixels are used.
            prior: the method's propagated prior (uint8, same shape) for the hallucination scorer, or None.

        Returns:
            metric name → value (NaN where a region is empty in every frame), and the clip's I3D features of the
            ground truth and the composite (``i3d_real``/``i3d_fake``, 1024 floats each) when VFID is wanted.
        """
        if prediction.shape != frames.shape or prediction.dtype != np.uint8:
            raise ValueError(f"prediction must be uint8 {frames.shape}, got {prediction.dtype} {prediction.shape}")
        composite_frames = hard_composite(frames, prediction, hole)
        composite = to_video_tensor(composite_frames, self.device)
        target = to_video_tensor(frames, self.device)
        mask = to_mask_tensor(hole, like=composite)
        wanted = set(self.config.metrics)
        values: dict[str, torch.Tensor | float] = {}
        features: dict[str, list[float]] = {}
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
        if EWARP_METRICS & wanted:
            flow = estimate_gt_flow(target, self.config.flow, self.config.raft_weights)
            if "ewarp_x1000" in wanted:
                values["ewarp_x1000"] = warping_error(composite, target, gt_flow=flow).value * 1000
            if "ewarp_hole_x1000" in wanted:
                values["ewarp_hole_x1000"] = warping_error(composite, target, mask, gt_flow=flow).value * 1000
        if OUTSIDE_METRICS & wanted:
            change = outside_change(composite, target, mask)
            values["outside_mean_abs"], values["outside_max_abs"] = change.mean, change.max
        if "tc_clip" in wanted:
            values["tc_clip"] = clip_temporal_consistency(composite, self._clip)
        if HALLUCINATION_METRICS & wanted:
            judged = self._hallucination(frames, hole, composite_frames, prior)
            values["hallucination_score"] = judged.score
            values["hallucination"] = float(judged.label) if judged.score == judged.score else float("nan")
        if "vfid" in wanted:
            real, fake = i3d_features(torch.cat([target, composite]), self._i3d, batch_size=self.config.vfid_batch)
            features = {"i3d_real": real.tolist(), "i3d_fake": fake.tolist()}
        metrics = {name: float(value if isinstance(value, float) else value[0]) for name, value in values.items()}
        return {name: metrics[name] for name in self.config.metrics if name in metrics}, features
