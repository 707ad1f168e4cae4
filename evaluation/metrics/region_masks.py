"""Which pixels a metric scores: the hole, the boundary band around it, a ±k ring, the hole's bounding box.

The boundary band is the Region-Reg-DPO loss boundary, from :func:`vipo.regions.decompose`, with the same
``boundary_px`` meaning: the odd side of the square dilation kernel (7 → a 3 px band outside the hole).

All masks here are ``(B, F, 1, H, W)`` float 0/1 tensors, hole = 1 (the project's float-mask polarity).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vipo.regions import decompose

__all__ = ["Region", "bbox_mask", "boundary_ring", "select_region"]

Region = Literal["hole", "boundary", "frame"]


def boundary_ring(hole: Tensor, radius_px: int) -> Tensor:
    """Pixels within ``radius_px`` (Chebyshev) of the hole's edge on either side: ``dilate(hole) - erode(hole)``.

    Built from two loss-region bands (:func:`vipo.regions.decompose`, kernel side ``2·radius_px + 1``): the band
    outside the hole plus the band the inverse mask grows into it. The frame edge is no hole edge.
    """
    kernel_side = 2 * radius_px + 1
    _, outer, _ = decompose(hole, kernel_side)
    _, inner, _ = decompose(1.0 - hole, kernel_side)
    return outer + inner


def bbox_mask(hole: Tensor) -> Tensor:
    """Each frame's tight bounding box of its hole, filled; an empty frame stays empty. ``(B,F,1,H,W)`` → same."""
    rows = hole.amax(dim=-1, keepdim=True)  # (B, F, 1, H, 1): 1 where the row holds hole pixels
    cols = hole.amax(dim=-2, keepdim=True)  # (B, F, 1, 1, W)
    # A row lies inside the box when some hole row is at or above it and some at or below it (same for columns).
    inside_rows = rows.cummax(dim=-2).values * rows.flip(-2).cummax(dim=-2).values.flip(-2)
    inside_cols = cols.cummax(dim=-1).values * cols.flip(-1).cummax(dim=-1).values.flip(-1)
    return inside_rows * inside_cols


def select_region(hole: Tensor | None, region: Region, boundary_px: int, like: Tensor) -> Tensor:
    """The scoring mask for ``region``: the hole itself, its boundary band (kernel side ``boundary_px``), or all.

    ``hole`` is ``(B, F, 1, H, W)`` 0/1, or None for the whole frame (the boundary band then has nothing to grow
    from and is an error). ``like`` is the ``(B, F, C, H, W)`` video, for the full mask's shape, dtype and device.
    """
    if region == "boundary" and hole is None:
        raise ValueError("region='boundary' needs a hole mask to grow the band from; pass mask=...")
    if region == "frame" or hole is None:
        b, f, _, h, w = like.shape
        return torch.ones(b, f, 1, h, w, dtype=like.dtype, device=like.device)
    if region == "hole":
        return hole
    if region == "boundary":
        _, boundary, _ = decompose(hole, boundary_px)
        return boundary
    raise ValueError(f"region must be 'hole', 'boundary' or 'frame', got {region!r}")
