"""The three loss regions of Region-Reg-DPO: hole, boundary band and context.

``boundary = dilate(hole, k) − hole`` and ``context = 1 − hole − boundary``, computed in pure torch (CPU or GPU)
on hole masks of shape (F, H, W) or (B, F, 1, H, W). This band is the *loss* boundary; the blending dilation used
at inference (:func:`vipo.masks.mask_dilate`) is a separate, independent setting.

**Kernel and rounding rule.** ``boundary_px = k`` is the side, in pixels, of a centred square structuring element
(as ``cv2.dilate(hole, np.ones((k, k)))``), so ``k`` must be odd and the band is ``r = (k − 1) / 2`` pixels wide
(Chebyshev distance: diagonal neighbours count). At a resolution ``latent_factor`` times coarser the radius is
``r_latent = ceil(r / latent_factor)`` and the kernel side ``2·r_latent + 1``. For SD latents (factor 8) this
gives the roadmap's 7 px → 3 latent px (r = 3 px → 1 latent px). Rounding up is deliberate: every k ≥ 3 keeps at
least a one-cell band in latent space, where floor would make the band vanish for every k ≤ 15 (the roadmap's
whole 5-15 px range) and silently drop the boundary term from the loss.

**Latent regions** come from the latent-resolution hole mask::

    decompose(downsample_hole(hole, 8), boundary_px, latent_factor=8)
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

__all__ = ["BoundaryPx", "boundary_kernel_size", "decompose", "downsample_hole"]


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be odd (the side of a centred k×k dilation kernel), got {value}")
    return value


BoundaryPx = Annotated[int, Field(ge=1), AfterValidator(_odd)]
"""Config field type for ``boundary_px``: an odd kernel side ≥ 1 in pixels (1 = no boundary band)."""


def boundary_kernel_size(boundary_px: int, latent_factor: int = 1) -> int:
    """Kernel side at a resolution ``latent_factor`` times coarser: ``2·ceil(((k − 1) / 2) / latent_factor) + 1``."""
    if boundary_px < 1 or boundary_px % 2 == 0:
        raise ValueError(f"boundary_px must be an odd kernel side >= 1, got {boundary_px}")
    if latent_factor < 1:
        raise ValueError(f"latent_factor must be >= 1, got {latent_factor}")
    return 2 * math.ceil((boundary_px - 1) / 2 / latent_factor) + 1


def _as_planes(hole: torch.Tensor) -> torch.Tensor:
    """Binarise a (F, H, W) or (B, F, 1, H, W) hole mask → bool (N, 1, H, W)."""
    if not isinstance(hole, torch.Tensor):
        raise TypeError(f"hole must be a torch.Tensor, got {type(hole).__name__}")
    if hole.ndim != 3 and not (hole.ndim == 5 and hole.shape[2] == 1):
        raise ValueError(f"hole must be (F, H, W) or (B, F, 1, H, W), got shape {tuple(hole.shape)}")
    binary = hole > 0.5 if hole.is_floating_point() else hole != 0
    return binary.reshape(-1, 1, *hole.shape[-2:])


def decompose(
    hole: torch.Tensor, boundary_px: int, latent_factor: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a frame into ``(hole, boundary, context)``, three exclusive masks that sum to exactly 1 everywhere.

    Args:
        hole: (F, H, W) or (B, F, 1, H, W), bool, integer 0/1 or float (binarised at 0.5); ``1 = hole``. Already
            at the resolution the regions are wanted at (for latents, see :func:`downsample_hole`).
        boundary_px: odd side ``k`` of the square dilation kernel in *pixel* units (see the module docstring).
        latent_factor: how many pixels one cell of ``hole`` spans (1 for pixels, 8 for SD latents).

    Returns:
        hole, boundary, context: each the shape, dtype and device of the input, values 0/1 (False/True).
    """
    planes = _as_planes(hole)
    radius = boundary_kernel_size(boundary_px, latent_factor) // 2
    grown = planes.float()
    if radius > 0:
        # A square element is separable: a row max then a column max is the (2r+1)² max at O(r) cost per pixel.
        grown = F.max_pool2d(grown, (1, 2 * radius + 1), stride=1, padding=(0, radius))
        grown = F.max_pool2d(grown, (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    dilated = grown > 0
    regions = (planes, dilated & ~planes, ~dilated)
    return tuple(region.reshape(hole.shape).to(hole.dtype) for region in regions)


def downsample_hole(hole: torch.Tensor, factor: int, mode: Literal["any", "nearest"] = "any") -> torch.Tensor:
    """The hole mask at ``factor`` times lower resolution (8 for SD latents); H and W must divide by ``factor``.

    ``mode="any"`` (default) max-pools each ``factor × factor`` cell: a latent cell is hole if *any* of its pixels
    is. No hole pixel is lost, so the generated region always covers the true hole, and a thin or small hole
    (< ``factor`` px) still appears in latent space. ``mode="nearest"`` keeps one pixel per cell (the top-left,
    ``F.interpolate(..., mode="nearest")``, which DiffuEraser uses for its mask channel); holes that miss that
    pixel vanish, so use it only to reproduce upstream conditioning.

    Args:
        hole: (F, H, W) or (B, F, 1, H, W), bool, integer 0/1 or float (binarised at 0.5); ``1 = hole``.

    Returns:
        (F, H/factor, W/factor) or (B, F, 1, H/factor, W/factor), the input's dtype and device, values 0/1.
    """
    planes = _as_planes(hole).float()
    height, width = planes.shape[-2:]
    if factor < 1 or height % factor or width % factor:
        raise ValueError(f"hole size {height}x{width} is not a multiple of factor {factor}")
    if mode == "any":
        small = F.max_pool2d(planes, factor)
    elif mode == "nearest":
        small = F.interpolate(planes, size=(height // factor, width // factor), mode="nearest")
    else:
        raise ValueError(f"mode must be 'any' or 'nearest', got {mode!r}")
    return (small > 0).reshape(*hole.shape[:-2], height // factor, width // factor).to(hole.dtype)
