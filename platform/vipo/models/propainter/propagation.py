"""Flow warping, the forward-backward consistency check and ProPainter's parameter-free image propagation.

Conventions: flows are (N,2,H,W) in pixels, channel 0 = dx, channel 1 = dy. Warping is backward: the warped image at
pixel p is the source sampled at p + flow(p) (``align_corners=True`` pixel grid, zeros outside the frame). A forward
flow (t -> t+1) therefore pulls frame t+1 into frame t's geometry, and a backward flow (t+1 -> t) pulls frame t into
frame t+1's. Hole masks are 1 = hole, 0 = known.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["flow_consistency", "flow_warp", "propagate_images", "sweep"]

Direction = Literal["backward", "forward"]


def flow_warp(source: Tensor, flow: Tensor, mode: Literal["bilinear", "nearest"] = "bilinear") -> Tensor:
    """Sample ``source`` (N,C,H,W) at p + flow(p) for every pixel p; flow (N,2,H,W). Zeros outside the frame."""
    n, _, h, w = source.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing="ij")
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    # align_corners=True maps -1/+1 to the centres of the first/last pixel, so integer flows sample pixels exactly.
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    return F.grid_sample(source, grid.to(source.dtype), mode=mode, padding_mode="zeros", align_corners=True)


def flow_consistency(flow: Tensor, flow_back: Tensor, alpha1: float = 0.01, alpha2: float = 0.5) -> Tensor:
    """Forward-backward check: 1 where ``flow`` (N,2,H,W) is trusted, 0 where occluded or inconsistent.

    With b' = flow_back warped by flow, a pixel is valid if |flow + b'|^2 < alpha1 (|flow|^2 + |b'|^2) + alpha2.
    Returns (N,1,H,W) in the dtype of ``flow``.
    """
    back_warped = flow_warp(flow_back, flow)
    round_trip = (flow + back_warped).square().sum(1, keepdim=True)
    magnitude = flow.square().sum(1, keepdim=True) + back_warped.square().sum(1, keepdim=True)
    return (round_trip < alpha1 * magnitude + alpha2).to(flow.dtype)


def sweep(num_frames: int, direction: Direction) -> list[tuple[int, int | None]]:
    """Visiting order of a one-way propagation: ``(frame index, flow index)`` pairs, flow index None for the first.

    A backward sweep visits T-1 .. 0 and pulls from frame t+1 with ``flows_forward[t]``; a forward sweep visits
    0 .. T-1 and pulls from frame t-1 with ``flows_backward[t-1]``.
    """
    if direction == "backward":
        return [(t, None if t == num_frames - 1 else t) for t in range(num_frames - 1, -1, -1)]
    return [(t, None if t == 0 else t - 1) for t in range(num_frames)]


def _binarize(mask: Tensor, threshold: float = 0.1) -> Tensor:
    return (mask > threshold).to(mask.dtype)


def _propagate_one_way(frames: Tensor, holes: Tensor, flows_pull: Tensor, flows_check: Tensor,
                       direction: Direction) -> tuple[Tensor, Tensor]:
    out_frames: list[Tensor | None] = [None] * frames.shape[1]
    out_holes: list[Tensor | None] = [None] * frames.shape[1]
    carried_frame = carried_hole = None
    for t, k in sweep(frames.shape[1], direction):
        current_frame, current_hole = frames[:, t], holes[:, t]
        if k is None:
            carried_frame, carried_hole = current_frame, current_hole
        else:
            flow = flows_pull[:, k]
            valid = flow_consistency(flow, flows_check[:, k])
            pulled = flow_warp(carried_frame, flow, mode="nearest")
            source_hole = _binarize(flow_warp(carried_hole, flow))
            # Fill a hole pixel only where the flow is trusted and its source pixel is known (or already filled).
            fill = _binarize(current_hole * valid * (1 - source_hole))
            carried_frame = fill * pulled + (1 - fill) * current_frame
            carried_hole = _binarize(current_hole * (1 - valid * (1 - source_hole)))
        out_frames[t], out_holes[t] = carried_frame, carried_hole
    return torch.stack(out_frames, dim=1), torch.stack(out_holes, dim=1)


def propagate_images(frames: Tensor, flows_forward: Tensor, flows_backward: Tensor,
                     holes: Tensor) -> tuple[Tensor, Tensor]:
    """ProPainter's image propagation: fill holes with pixels carried along (completed) flows from other frames.

    A backward sweep (T-1 -> 0, pulling with forward flows) runs first; a forward sweep (0 -> T-1, pulling with
    backward flows) then runs over its output. Pixels are carried with nearest sampling, so content is copied, not
    blurred; a hole pixel is filled only where :func:`flow_consistency` passes and the source pixel is known.

    Args:
        frames: (B,T,C,H,W), any value range; hole pixels are expected zeroed (they are never copied from).
        flows_forward: (B,T-1,2,H,W), t -> t+1.
        flows_backward: (B,T-1,2,H,W), t+1 -> t.
        holes: (B,T,1,H,W), 1 = hole.

    Returns:
        ``(frames, holes)``: (B,T,C,H,W) with filled pixels copied in (known pixels unchanged) and the remaining
        holes (B,T,1,H,W), a subset of the input holes.
    """
    frames_b, holes_b = _propagate_one_way(frames, holes, flows_forward, flows_backward, "backward")
    return _propagate_one_way(frames_b, holes_b, flows_backward, flows_forward, "forward")
