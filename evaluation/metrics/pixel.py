"""Masked PSNR and SSIM, batched over clips and frames (pure torch: runs on the GPU when the inputs are there).

Both score each frame over its mask and average over the frames whose mask is not empty (per frame → per video;
the dataset mean over videos is the caller's). ``mask=None`` or ``region="frame"`` gives the whole-frame numbers
that published video-inpainting tables report.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

from evaluation.metrics.inputs import (
    VideoLike,
    mean_over_scored_frames,
    to_mask_tensor,
    to_video_tensor,
    true_span,
)
from evaluation.metrics.region_masks import Region, select_region

__all__ = [
    "DEFAULT_BOUNDARY_PX",
    "PROPAINTER_SSIM_WINDOW",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "frame_ssim_win65",
    "masked_psnr",
    "masked_ssim",
    "prepare_inputs",
]

DEFAULT_BOUNDARY_PX = 7  # dilation kernel side as in vipo.regions.decompose: a 3 px band
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
PROPAINTER_SSIM_WINDOW = 65
"""ProPainter's ``core/metrics.py`` (and the research group's table) score SSIM with skimage and ``win_size=65``."""


def prepare_inputs(
    pred: VideoLike, target: VideoLike, mask: VideoLike | None, region: Region, boundary_px: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Convert and check a (pred, target, mask) triple → ``(B,F,C,H,W)``, ``(B,F,C,H,W)``, scoring ``(B,F,1,H,W)``."""
    pred = to_video_tensor(pred)
    target = to_video_tensor(target, device=pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    hole = None if mask is None else to_mask_tensor(mask, like=pred)
    return pred, target, select_region(hole, region, boundary_px, like=pred)


def masked_psnr(
    pred: VideoLike,
    target: VideoLike,
    mask: VideoLike | None = None,
    data_range: float = 1.0,
    *,
    region: Region = "hole",
    boundary_px: int = DEFAULT_BOUNDARY_PX,
) -> Tensor:
    """PSNR over the scored pixels of each frame, averaged over frames with a non-empty mask → ``(B,)`` (dB).

    pred, target: ``(B,F,C,H,W)`` float in ``[0, data_range]`` or uint8 channel-last (see ``to_video_tensor``).
    mask: ``(B,F,1,H,W)`` hole mask, 1 = hole; None = whole frame. ``region`` picks what is scored: the hole, the
    band outside it (``vipo.regions.decompose`` boundary; ``boundary_px`` = odd kernel side, 7 → 3 px), or the
    whole frame. Per frame ``MSE = Σ_M,c (x-y)² / (|M|·C)`` and
    ``PSNR = 10·log10(data_range² / MSE)``; identical frames give ``inf``, a clip with no scored frame NaN.
    """
    pred, target, scored = prepare_inputs(pred, target, mask, region, boundary_px)
    box = scored_box(scored)
    if box is not None:  # only the box holding every frame's scored pixels is read: the others add nothing
        (top, bottom), (left, right) = box
        pred, target, scored = (x[..., top:bottom, left:right] for x in (pred, target, scored))
    channels = pred.shape[2]
    # Masking before squaring (the mask is 0/1) saves a temporary; the sum of squares is one dot product per frame.
    masked_error = (pred - target).mul_(scored).flatten(2)
    squared_error = torch.linalg.vecdot(masked_error, masked_error)
    pixels = scored.sum(dim=(2, 3, 4))
    mse = squared_error / (pixels * channels)
    psnr = 10.0 * torch.log10(data_range**2 / mse)
    return mean_over_scored_frames(psnr, pixels > 0)


def scored_box(scored: Tensor) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(top, bottom), (left, right)`` of the box holding the scored pixels of all ``(..., H, W)`` masks together,
    or None when none is scored. Reduced per frame first: reducing (frames, rows) at once is ~10x slower on CPU."""
    rows = true_span(scored.amax(dim=-1).flatten(0, -2).amax(dim=0) > 0)
    cols = true_span(scored.amax(dim=-2).flatten(0, -2).amax(dim=0) > 0)
    return None if rows is None else (rows, cols)


def _gaussian_taps() -> list[float]:
    """The 1-D Gaussian of skimage/scipy (σ 1.5, truncate 3.5 → radius 5, 11 taps), normalised to sum 1."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    weights = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return (weights / weights.sum()).tolist()


def _gaussian_filter_valid(images: Tensor) -> Tensor:
    """Separable Gaussian over the last two dims, "valid" positions only: ``(..., H, W)`` → ``(..., H-10, W-10)``.

    On CPU, OpenCV's separable filter per plane (SIMD, ~4x the torch loop below); elsewhere a sum of 11 shifted
    slices per axis: plain multiply-adds, ~10x faster than a single-channel ``conv2d`` and never routed through
    TF32 convolutions on GPU (which would cost SSIM its 1e-4 agreement). Both keep the input's dtype.
    """
    taps = _gaussian_taps()
    if images.device.type == "cpu":
        return _gaussian_filter_valid_opencv(images, taps)
    return _gaussian_filter_valid_torch(images, taps)


def _gaussian_filter_valid_torch(images: Tensor, taps: list[float]) -> Tensor:
    """:func:`_gaussian_filter_valid` on any device: 11 shifted slices per axis, multiply-added."""
    for dim in (-1, -2):
        size = images.shape[dim] - SSIM_WINDOW + 1
        filtered = images.narrow(dim, 0, size) * taps[0]
        for offset in range(1, SSIM_WINDOW):
            filtered.add_(images.narrow(dim, offset, size), alpha=taps[offset])
        images = filtered
    return images


def _gaussian_filter_valid_opencv(images: Tensor, taps: list[float]) -> Tensor:
    """:func:`_gaussian_filter_valid` of a CPU tensor with ``cv2.sepFilter2D``, plane by plane, in place of a copy."""
    planes = images.contiguous().numpy().reshape(-1, *images.shape[-2:])
    kernel = np.asarray(taps, dtype=planes.dtype)
    filtered = np.empty_like(planes)
    for plane, out in zip(planes, filtered):
        cv2.sepFilter2D(plane, -1, kernel, kernel, dst=out, borderType=cv2.BORDER_CONSTANT)
    crop = SSIM_WINDOW // 2  # the border rows and columns, where the window does not fit, are dropped
    return torch.from_numpy(filtered).reshape(images.shape)[..., crop:-crop, crop:-crop]


def _ssim_map(pred: Tensor, target: Tensor, data_range: float) -> Tensor:
    """SSIM map of ``(N,C,H,W)`` frames → ``(N, H-10, W-10)``, channel mean, only where the window fits.

    Keeping only the "valid" window positions is skimage's border convention: it crops ``(win_size-1)//2`` px from
    each side before averaging, so the padding mode never matters.
    """
    # One filtering pass over the five local statistics of every channel of every frame.
    stats = torch.empty((5, *pred.shape), dtype=pred.dtype, device=pred.device)
    stats[0], stats[1] = pred, target
    torch.mul(pred, pred, out=stats[2])
    torch.mul(target, target, out=stats[3])
    torch.mul(pred, target, out=stats[4])
    mu_x, mu_y, xx, yy, xy = _gaussian_filter_valid(stats)
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    # skimage's (2·μxμy + C1)(2·σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)), same operation order, in place.
    mu_xy = mu_x * mu_y
    mu_x.square_()
    mu_y.square_()
    covariance_term = xy.sub_(mu_xy).mul_(2).add_(c2)
    luminance_term = mu_xy.mul_(2).add_(c1)
    variance_term = xx.sub_(mu_x).add_(yy.sub_(mu_y)).add_(c2)
    norm_term = mu_x.add_(mu_y).add_(c1)
    return luminance_term.mul_(covariance_term).div_(norm_term.mul_(variance_term)).mean(dim=1)


def masked_ssim(
    pred: VideoLike,
    target: VideoLike,
    mask: VideoLike | None = None,
    data_range: float = 1.0,
    *,
    region: Region = "hole",
    boundary_px: int = DEFAULT_BOUNDARY_PX,
    frame_chunk: int = 16,
) -> Tensor:
    """Mean of the SSIM map over the scored pixels of each frame, averaged over frames → ``(B,)`` in ``[-1, 1]``.

    The map is skimage's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    channel_axis=-1)``: 11-tap Gaussian window, K1 0.01, K2 0.03, channels averaged. Like skimage it exists only
    where the whole window fits, so scored pixels within 5 px of the frame edge are left out; a frame whose scored
    pixels all lie there counts as empty. Inputs and ``region`` as in :func:`masked_psnr`; frames are processed
    ``frame_chunk`` at a time to bound memory, each chunk only over the box its scored pixels need.
    """
    pred, target, scored = prepare_inputs(pred, target, mask, region, boundary_px)
    b, f, c, h, w = pred.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {h}x{w}")
    crop = SSIM_WINDOW // 2
    scored = scored.reshape(b * f, h, w)[:, crop : h - crop, crop : w - crop]
    pred, target = pred.reshape(b * f, c, h, w), target.reshape(b * f, c, h, w)
    sums = []
    for start in range(0, b * f, frame_chunk):
        chunk = slice(start, start + frame_chunk)
        # Only the box spanning the chunk's scored map pixels is filtered (plus the window's reach in the frame).
        box = scored_box(scored[chunk])
        if box is None:
            sums.append(scored.new_zeros(scored[chunk].shape[0]))
            continue
        (top, bottom), (left, right) = box
        window = (chunk, slice(None), slice(top, bottom + 2 * crop), slice(left, right + 2 * crop))
        ssim_map = _ssim_map(pred[window], target[window], data_range)
        sums.append((ssim_map * scored[chunk, top:bottom, left:right]).sum(dim=(1, 2)))
    pixels = scored.sum(dim=(1, 2))
    per_frame = (torch.cat(sums) / pixels).reshape(b, f)
    return mean_over_scored_frames(per_frame, (pixels > 0).reshape(b, f))


def frame_ssim_win65(pred: np.ndarray, target: np.ndarray) -> float:
    """Whole-frame SSIM as ProPainter's ``calc_psnr_and_ssim`` and the research group report it: skimage's
    ``structural_similarity`` with a uniform 65×65 window, ``data_range=255``, over the RGB channels, per frame,
    averaged over frames → a float (NaN when a frame side is under 65 px, where that window does not fit).

    pred, target: uint8 ``(F, H, W, 3)``.
    """
    if min(pred.shape[1:3]) < PROPAINTER_SSIM_WINDOW:
        return float("nan")
    scores = [
        structural_similarity(p.astype(np.float64), t.astype(np.float64), data_range=255, channel_axis=-1,
                              win_size=PROPAINTER_SSIM_WINDOW)
        for p, t in zip(pred, target)
    ]
    return float(np.mean(scores))
