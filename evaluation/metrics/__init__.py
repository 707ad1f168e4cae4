"""Video-inpainting metrics: masked PSNR/SSIM/LPIPS, warping error, and the group's region scores.

Conventions (all functions):
- videos ``(B, F, C, H, W)`` float in ``[0, data_range]`` (``[0, 1]`` default), or uint8 channel-last
  ``(F, H, W, C)`` / ``(B, F, H, W, C)`` arrays, converted by :func:`to_video_tensor`;
- masks ``(B, F, 1, H, W)``, 1 = hole (uint8 255 = hole), converted by :func:`to_mask_tensor`;
- each frame is scored over its region, then averaged over the frames whose region is not empty → ``(B,)``
  (per frame → per video; the dataset mean over videos is the caller's). VFID is not implemented.
- pure torch: the work runs on the inputs' device (GPU when they are there), batched over clips and frames.
"""

from evaluation.metrics.inputs import mean_over_scored_frames, to_mask_tensor, to_video_tensor
from evaluation.metrics.lpips_metric import backbone_checkpoint_name, get_lpips, masked_lpips
from evaluation.metrics.pixel import DEFAULT_BOUNDARY_PX, frame_ssim_win65, masked_psnr, masked_ssim
from evaluation.metrics.region_masks import Region, bbox_mask, boundary_ring, select_region
from evaluation.metrics.regions import (
    OutsideChange,
    bbox_psnr,
    boundary_ring_psnr,
    outside_change,
    region_scores,
    strict_mask_psnr,
)
from evaluation.metrics.warping import (
    GroundTruthFlow,
    WarpingError,
    backward_warp,
    estimate_gt_flow,
    non_occluded,
    warping_error,
)

__all__ = [
    "DEFAULT_BOUNDARY_PX",
    "GroundTruthFlow",
    "OutsideChange",
    "Region",
    "WarpingError",
    "backbone_checkpoint_name",
    "backward_warp",
    "bbox_mask",
    "bbox_psnr",
    "boundary_ring",
    "boundary_ring_psnr",
    "estimate_gt_flow",
    "frame_ssim_win65",
    "get_lpips",
    "masked_lpips",
    "masked_psnr",
    "masked_ssim",
    "mean_over_scored_frames",
    "non_occluded",
    "outside_change",
    "region_scores",
    "select_region",
    "strict_mask_psnr",
    "to_mask_tensor",
    "to_video_tensor",
    "warping_error",
]
