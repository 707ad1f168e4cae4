"""The region scores of the research group's DAVIS-50 protocol.

- ``bbox_psnr``: PSNR over each frame's hole bounding box (their "mask PSNR");
- ``strict_mask_psnr``: PSNR over hole pixels only (``strict_mask_pixel_psnr``);
- ``boundary_ring_psnr``: PSNR over a ±k px ring around the hole's edge (``boundary_pixel_psnr``, k = 3);
- ``outside_change``: mean and max absolute difference outside the hole; exactly 0 after hard compositing, so
  a non-zero value flags a pipeline that did not composite (or re-encoded the frames).

All take ``(B,F,C,H,W)`` videos in ``[0, data_range]`` (or uint8, see ``to_video_tensor``) and a ``(B,F,1,H,W)``
hole mask (1 = hole), score frame by frame and average over frames with a non-empty region → ``(B,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from evaluation.metrics.inputs import VideoLike, mean_over_scored_frames, to_mask_tensor, to_video_tensor
from evaluation.metrics.pixel import masked_psnr
from evaluation.metrics.region_masks import bbox_mask, boundary_ring

__all__ = [
    "OutsideChange",
    "bbox_psnr",
    "boundary_ring_psnr",
    "outside_change",
    "region_scores",
    "strict_mask_psnr",
]

DEFAULT_RING_PX = 3


def _video_and_hole(pred: VideoLike, mask: VideoLike) -> tuple[Tensor, Tensor]:
    pred = to_video_tensor(pred)
    return pred, to_mask_tensor(mask, like=pred)


def bbox_psnr(pred: VideoLike, target: VideoLike, mask: VideoLike, data_range: float = 1.0) -> Tensor:
    """PSNR over each frame's tight hole bounding box (no margin) → ``(B,)`` dB."""
    pred, hole = _video_and_hole(pred, mask)
    return masked_psnr(pred, target, bbox_mask(hole), data_range)


def strict_mask_psnr(pred: VideoLike, target: VideoLike, mask: VideoLike, data_range: float = 1.0) -> Tensor:
    """PSNR over hole pixels only → ``(B,)`` dB (``masked_psnr`` with ``region="hole"``)."""
    return masked_psnr(pred, target, mask, data_range)


def boundary_ring_psnr(
    pred: VideoLike, target: VideoLike, mask: VideoLike, data_range: float = 1.0, ring_px: int = DEFAULT_RING_PX
) -> Tensor:
    """PSNR over the pixels within ``ring_px`` of the hole's edge, inside or outside (Chebyshev) → ``(B,)`` dB."""
    if ring_px < 1:
        raise ValueError(f"ring_px must be >= 1, got {ring_px}")
    pred, hole = _video_and_hole(pred, mask)
    return masked_psnr(pred, target, boundary_ring(hole, ring_px), data_range)


@dataclass(frozen=True)
class OutsideChange:
    """Absolute change outside the hole, in the inputs' units: mean ``(B,)`` (per frame, then over frames) and
    max ``(B,)`` (over all frames). NaN where no frame has a pixel outside the hole."""

    mean: Tensor
    max: Tensor


def outside_change(pred: VideoLike, target: VideoLike, mask: VideoLike) -> OutsideChange:
    """Mean and max ``|pred - target|`` over pixels and channels outside the hole (1 - mask)."""
    pred, hole = _video_and_hole(pred, mask)
    target = to_video_tensor(target, device=pred.device)
    outside = 1.0 - hole
    change = (pred - target).abs() * outside
    pixels = outside.sum(dim=(2, 3, 4))
    per_frame = change.sum(dim=(2, 3, 4)) / (pixels * pred.shape[2])
    has_outside = pixels.sum(dim=1) > 0
    largest = change.flatten(1).amax(dim=1)
    return OutsideChange(
        mean=mean_over_scored_frames(per_frame, pixels > 0),
        max=torch.where(has_outside, largest, torch.full_like(largest, float("nan"))),
    )


def region_scores(
    pred: VideoLike, target: VideoLike, mask: VideoLike, data_range: float = 1.0, ring_px: int = DEFAULT_RING_PX
) -> dict[str, Tensor]:
    """All practice.md §1 region scores at once, each ``(B,)``: ``psnr_bbox``, ``psnr_strict``,
    ``psnr_boundary_ring``, ``outside_mean_abs``, ``outside_max_abs``."""
    pred, mask = _video_and_hole(pred, mask)  # convert uint8 inputs once, not once per score
    target = to_video_tensor(target, device=pred.device)
    change = outside_change(pred, target, mask)
    return {
        "psnr_bbox": bbox_psnr(pred, target, mask, data_range),
        "psnr_strict": strict_mask_psnr(pred, target, mask, data_range),
        "psnr_boundary_ring": boundary_ring_psnr(pred, target, mask, data_range, ring_px),
        "outside_mean_abs": change.mean,
        "outside_max_abs": change.max,
    }
