"""Hole masks: random moving training masks, PNG/DAVIS loading, blending dilation.

Polarity (defined once, in :mod:`vipo.masks.polarity`): PNG files 255 = hole; ``hole`` arrays/tensors
``1/True = hole``; the model conditioning channel ``1 = known, 0 = hole`` (:func:`hole_to_condition`).
"""

from vipo.masks.io import load_davis_annotations, load_mask_sequence, mask_dilate, mask_erode, save_mask_sequence
from vipo.masks.moving import MovingMaskConfig, random_moving_masks
from vipo.masks.polarity import hole_to_condition

__all__ = [
    "MovingMaskConfig",
    "hole_to_condition",
    "load_davis_annotations",
    "load_mask_sequence",
    "mask_dilate",
    "mask_erode",
    "random_moving_masks",
    "save_mask_sequence",
]
