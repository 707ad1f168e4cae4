"""Mask polarity: the one place that defines it for all of vipo.

Three representations exist, and each has one meaning:

================================  =========  ==========  ===============================================
representation                    hole       known       where
================================  =========  ==========  ===============================================
PNG / uint8 mask file             255        0           mask folders, DAVIS-derived masks we write
                                                          (reading: any grey value > 127 is hole)
``hole`` array/tensor             1 / True   0 / False   every vipo API: masks, regions, losses, metrics
model conditioning channel        0          1           BrushNet/DiffuEraser mask channel ("hole denoted
                                                          as 0, reserved as 1"); build it only with
                                                          :func:`hole_to_condition`
================================  =========  ==========  ===============================================

Functions take and return ``hole`` masks; the conditioning channel is produced at the model boundary only, so
no other code needs to think about the flip.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["hole_to_condition"]


def hole_to_condition(hole: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The model's mask channel, ``1 = known, 0 = hole``, from a hole mask (``1/True = hole``).

    Accepts a numpy array or torch tensor of any shape, boolean or floating point in [0, 1] (soft, e.g. resized,
    masks keep their softness: ``1 - hole``). Returns float32 for boolean input, otherwise the input's float dtype,
    same shape and device.
    """
    if isinstance(hole, torch.Tensor):
        return (~hole).float() if hole.dtype == torch.bool else 1 - hole
    hole = np.asarray(hole)
    return (~hole).astype(np.float32) if hole.dtype == np.bool_ else 1 - hole
