"""Warping error E_warp (Lai et al., ECCV 2018): how much a video flickers against the ground truth's motion.

For each pair (t, t+1): optical flow is computed on the ground truth both ways; frame t+1 of the scored video is
warped back into frame t with the forward flow; pixels that are occluded (forward–backward check), on motion
boundaries, or whose flow leaves the frame are dropped; E_warp is the mean squared difference over the remaining
pixels and channels (values in [0, 1]). The video score is the mean over pairs. The flow method changes the
absolute values (the paper used FlowNet2), so the result always states it. Note: the research group's reports
multiply E_warp by 1000.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

from evaluation.metrics.inputs import VideoLike, mean_over_scored_frames, to_mask_tensor, to_video_tensor

__all__ = [
    "FlowMethod",
    "GroundTruthFlow",
    "WarpingError",
    "backward_warp",
    "estimate_gt_flow",
    "non_occluded",
    "warping_error",
]

FlowMethod = Literal["dis", "raft"]
DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
_RAFT_STRIDE = 8
_RAFT_MIN_SIZE = 128  # its 4-level correlation pyramid needs feature maps of at least 16 px (frames / 8)
_RAFT_PAIRS_PER_CALL = 8


@dataclass(frozen=True)
class GroundTruthFlow:
    """Flows between consecutive ground-truth frames, in pixels, channel 0 = x (right), 1 = y (down).

    forward: ``(B, F-1, 2, H, W)``, frame t → t+1 at frame t's pixels; backward: same shape, t+1 → t at frame
    t+1's pixels; method: how they were computed (e.g. ``"dis-medium"``, ``"raft_large"``).
    """

    forward: Tensor
    backward: Tensor
    method: str


@dataclass(frozen=True)
class WarpingError:
    """E_warp of a batch of videos.

    value: ``(B,)`` mean over frame pairs (NaN when no pair has a valid pixel); per_pair: ``(B, F-1)``, NaN for a
    pair without valid pixels; flow_method: the flow used on the ground truth; region: ``"frame"`` or ``"hole"``.
    """

    value: Tensor
    per_pair: Tensor
    flow_method: str
    region: str


def backward_warp(image: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Sample ``image`` ``(N,C,H,W)`` at ``p + flow(p)`` (bilinear) → warped ``(N,C,H,W)``, inside ``(N,1,H,W)`` bool.

    ``flow`` ``(N,2,H,W)`` in pixels. ``inside`` is false where ``p + flow(p)`` falls outside the frame.
    """
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype, device=flow.device),
        torch.arange(w, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).unsqueeze(1)
    # align_corners=True puts -1 and 1 on the centres of the first and last pixels.
    grid = torch.stack([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], dim=-1)
    warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return warped, inside


def non_occluded(forward: Tensor, backward: Tensor) -> Tensor:
    """Lai et al.'s validity mask at frame t's pixels from flows ``(N,2,H,W)`` → ``(N,1,H,W)`` bool.

    Invalid where the forward–backward check fails, ``|F_fw + F̂_bw|² > 0.01(|F_fw|² + |F̂_bw|²) + 0.5`` with
    ``F̂_bw`` the backward flow warped into frame t; on motion boundaries, ``|∇F_fw|² > 0.01|F_fw|² + 0.002``
    (forward differences); or where the forward flow leaves the frame.
    """
    backward_at_t, inside = backward_warp(backward, forward)
    round_trip = (forward + backward_at_t).square().sum(dim=1, keepdim=True)
    magnitudes = forward.square().sum(dim=1, keepdim=True) + backward_at_t.square().sum(dim=1, keepdim=True)
    occluded = round_trip > 0.01 * magnitudes + 0.5
    d_dx = F.pad(forward[..., :, 1:] - forward[..., :, :-1], (0, 1, 0, 0))
    d_dy = F.pad(forward[..., 1:, :] - forward[..., :-1, :], (0, 0, 0, 1))
    gradient = (d_dx.square() + d_dy.square()).sum(dim=1, keepdim=True)
    motion_boundary = gradient > 0.01 * forward.square().sum(dim=1, keepdim=True) + 0.002
    return inside & ~occluded & ~motion_boundary


def _dis_flow(gt: Tensor) -> tuple[Tensor, Tensor]:
    """OpenCV DIS (MEDIUM preset) on 8-bit grey frames, pair by pair on the CPU."""
    frames = (gt.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    forward, backward = [], []
    for video in frames:
        grey = [
            cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.shape[-1] == 3 else np.ascontiguousarray(frame[..., 0])
            for frame in video
        ]
        forward.append([dis.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])])
        backward.append([dis.calc(b, a, None) for a, b in zip(grey[:-1], grey[1:])])

    def to_tensor(flows: list) -> Tensor:
        return torch.from_numpy(np.asarray(flows)).permute(0, 1, 4, 2, 3).to(gt.device)

    return to_tensor(forward), to_tensor(backward)


@functools.cache
def _raft(weights: Path, device: torch.device) -> torch.nn.Module:
    model = raft_large(weights=None, progress=False)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError) as err:
        raise ValueError(f"{weights}: not a torchvision raft_large state_dict ({type(err).__name__})") from None
    return model.eval().requires_grad_(False).to(device)


def _raft_flow(gt: Tensor, weights: Path) -> tuple[Tensor, Tensor]:
    """torchvision RAFT-large, both directions of every pair in one batch.

    Frames are padded (replicating the edge) to a multiple of 8 and at least 128 px, and the flow cropped back.
    """
    b, f, c, h, w = gt.shape
    if c != 3:
        raise ValueError(f"RAFT needs RGB frames, got {c} channels")
    model = _raft(weights, gt.device)
    pad_h, pad_w = (max(_RAFT_MIN_SIZE, size + -size % _RAFT_STRIDE) - size for size in (h, w))
    frames = F.pad((gt.float() * 2 - 1).reshape(b * f, c, h, w), (0, pad_w, 0, pad_h), mode="replicate")
    frames = frames.reshape(b, f, c, h + pad_h, w + pad_w)
    first = torch.cat([frames[:, :-1], frames[:, 1:]], dim=1).flatten(0, 1)
    second = torch.cat([frames[:, 1:], frames[:, :-1]], dim=1).flatten(0, 1)
    flows = torch.cat(
        [
            model(first[i : i + _RAFT_PAIRS_PER_CALL], second[i : i + _RAFT_PAIRS_PER_CALL])[-1]
            for i in range(0, first.shape[0], _RAFT_PAIRS_PER_CALL)
        ]
    )
    flows = flows[..., :h, :w].reshape(b, 2 * (f - 1), 2, h, w).to(gt.dtype)
    return flows[:, : f - 1], flows[:, f - 1 :]


def _raft_checkpoint(raft_weights: str | Path | None) -> Path:
    if raft_weights is not None:
        path = Path(raft_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"RAFT weights not found: {path} (a torchvision raft_large state_dict .pth)")
        return path
    name = Path(Raft_Large_Weights.DEFAULT.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not cached.is_file():
        raise FileNotFoundError(
            f"flow='raft' needs torchvision raft_large weights offline: pass raft_weights=<path> or put {name} in "
            f"{cached.parent} (it is {Raft_Large_Weights.DEFAULT.url}); or use flow='dis'"
        )
    return cached


@torch.no_grad()
def estimate_gt_flow(
    gt: VideoLike, flow: FlowMethod = "dis", raft_weights: str | Path | None = None
) -> GroundTruthFlow:
    """Forward and backward flow between consecutive frames of ``gt`` ``(B,F,C,H,W)`` in ``[0, 1]`` (or uint8).

    ``flow="dis"``: OpenCV DIS, MEDIUM preset, on the CPU. ``flow="raft"``: torchvision ``raft_large`` (12 updates)
    on the frames' device, weights from ``raft_weights`` or the torch hub cache (never downloaded). Compute it once
    per ground-truth clip and pass it to :func:`warping_error` for every method scored on that clip.
    """
    gt = to_video_tensor(gt)
    if gt.shape[1] < 2:
        raise ValueError(f"warping error needs at least 2 frames, got {gt.shape[1]}")
    if flow == "dis":
        forward, backward = _dis_flow(gt)
        return GroundTruthFlow(forward, backward, method="dis-medium")
    if flow == "raft":
        forward, backward = _raft_flow(gt, _raft_checkpoint(raft_weights))
        return GroundTruthFlow(forward, backward, method="raft_large")
    raise ValueError(f"flow must be 'dis' or 'raft', got {flow!r}")


@torch.no_grad()
def warping_error(
    pred: VideoLike,
    gt: VideoLike,
    mask: VideoLike | None = None,
    flow: FlowMethod = "dis",
    raft_weights: str | Path | None = None,
    *,
    gt_flow: GroundTruthFlow | None = None,
) -> WarpingError:
    """E_warp of ``pred`` with flow from ``gt``; both ``(B,F,C,H,W)`` in ``[0, 1]`` (or uint8 channel-last).

    ``mask`` ``(B,F,1,H,W)`` (1 = hole) restricts each pair to the pixels whose flow touches the hole: in the hole
    at t, or landing in the hole at t+1 (as DEVIL does); None scores the whole frame. ``gt_flow`` reuses flow from
    :func:`estimate_gt_flow`; otherwise it is computed here with ``flow``/``raft_weights``.
    """
    pred = to_video_tensor(pred)
    gt = to_video_tensor(gt, device=pred.device)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if gt_flow is None:
        gt_flow = estimate_gt_flow(gt, flow, raft_weights)
    b, f, c, h, w = pred.shape
    if gt_flow.forward.shape != (b, f - 1, 2, h, w):
        raise ValueError(f"gt_flow.forward {tuple(gt_flow.forward.shape)} does not fit a video of {tuple(pred.shape)}")
    forward = gt_flow.forward.to(device=pred.device, dtype=pred.dtype).flatten(0, 1)
    backward = gt_flow.backward.to(device=pred.device, dtype=pred.dtype).flatten(0, 1)

    next_warped, _ = backward_warp(pred[:, 1:].flatten(0, 1), forward)
    valid = non_occluded(forward, backward)
    if mask is not None:
        hole = to_mask_tensor(mask, like=pred)
        next_hole_warped, _ = backward_warp(hole[:, 1:].flatten(0, 1), forward)
        valid &= (hole[:, :-1].flatten(0, 1) > 0) | (next_hole_warped > 0)
    valid = valid.to(pred.dtype)
    squared_error = ((next_warped - pred[:, :-1].flatten(0, 1)) ** 2 * valid).sum(dim=(1, 2, 3))
    pixels = valid.sum(dim=(1, 2, 3))
    per_pair = (squared_error / (pixels * c)).reshape(b, f - 1)
    value = mean_over_scored_frames(per_pair, (pixels > 0).reshape(b, f - 1))
    return WarpingError(value, per_pair, gt_flow.method, region="frame" if mask is None else "hole")
