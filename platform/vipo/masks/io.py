"""Mask sequences on disk (PNG folders, DAVIS annotations) and the blending dilation used by pipelines.

Polarity follows :mod:`vipo.masks.polarity`: files hold 255 = hole, arrays hold ``True = hole``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Literal

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["load_davis_annotations", "load_mask_sequence", "mask_dilate", "mask_erode", "save_mask_sequence"]

MaskSource = str | Path | Iterable[str | Path]
"""A folder of ``*.png`` files (read in natural order: 2.png before 10.png) or an explicit list of PNG paths."""


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _png_paths(source: MaskSource) -> list[Path]:
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: mask folder not found")
        paths = sorted(folder.glob("*.png"), key=_natural_key)
        if not paths:
            raise FileNotFoundError(f"{folder}: no *.png masks in this folder")
        return paths
    paths = [Path(p) for p in source]
    if not paths:
        raise ValueError("empty list of mask paths")
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: mask file not found")
    return paths


def _open_png(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read mask PNG ({err}); re-export it as an 8-bit PNG") from None
    return image


def _stack(paths: list[Path], planes: Iterable[np.ndarray], size: tuple[int, int] | None) -> np.ndarray:
    """Stack bool planes → (F, H, W); resize each to ``size = (height, width)`` (nearest), else require one size."""
    frames = []
    for path, plane in zip(paths, planes):
        if size is not None:
            plane = cv2.resize(plane.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        elif frames and plane.shape != frames[0].shape:
            raise ValueError(
                f"{path}: mask is {plane.shape[1]}x{plane.shape[0]} but {paths[0]} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}; all masks of a sequence need one size (or pass size=)"
            )
        frames.append(plane)
    return np.stack(frames)


def _grey_hole(path: Path) -> np.ndarray:
    image = _open_png(path)
    if image.mode == "P":
        raise ValueError(f"{path}: palette PNG (an object annotation?); load it with load_davis_annotations")
    return np.asarray(image.convert("L")) > 127


def load_mask_sequence(source: MaskSource, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a PNG mask sequence → bool (F, H, W), ``True = hole``.

    A pixel is hole when its grey value (RGB is converted to luma first) is > 127, so white 255 = hole and
    anti-aliased edges split at mid-grey. ``size = (height, width)`` resizes every mask with nearest-neighbour
    (no soft edges, no new hole pixels). Raises ``FileNotFoundError`` for a missing folder/file and ``ValueError``
    naming the file for an unreadable PNG, a palette PNG, or (without ``size``) a size differing from the first.
    """
    paths = _png_paths(source)
    return _stack(paths, (_grey_hole(path) for path in paths), size)


def save_mask_sequence(masks: np.ndarray, folder: str | Path) -> list[Path]:
    """Write bool/0-1 masks (F, H, W), ``True = hole``, as ``00000.png …`` (8-bit grey, 255 = hole) → the paths."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (F, H, W), got shape {masks.shape}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, hole in enumerate(masks):
        path = folder / f"{index:05d}.png"
        Image.fromarray(np.where(hole > 0, 255, 0).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _annotation_ids(path: Path) -> np.ndarray:
    image = _open_png(path)
    if image.mode not in ("P", "L"):
        raise ValueError(f"{path}: {image.mode} PNG is not an indexed (palette) object annotation")
    return np.asarray(image)


def load_davis_annotations(
    source: MaskSource, object_ids: Iterable[int] | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """Read DAVIS/YouTube-VOS object annotations (palette PNGs, index 0 = background) → bool (F, H, W).

    ``True`` (hole) where the palette index is non-zero, or, with ``object_ids``, one of those ids (DAVIS numbers
    objects 1, 2, … per video). ``size`` and errors as :func:`load_mask_sequence`; additionally a ``ValueError``
    when none of ``object_ids`` occurs in any frame (the message lists the ids that do).
    """
    paths = _png_paths(source)
    indices = [_annotation_ids(path) for path in paths]
    if object_ids is None:
        planes = [index > 0 for index in indices]
    else:
        wanted = sorted(set(object_ids))
        planes = [np.isin(index, wanted) for index in indices]
        if not any(plane.any() for plane in planes):
            present = sorted(set(np.unique(np.concatenate([i.ravel() for i in indices])).tolist()) - {0})
            raise ValueError(f"{paths[0].parent}: object ids {wanted} not in any frame; ids present: {present}")
    return _stack(paths, planes, size)


_KERNELS = {"rect": cv2.MORPH_RECT, "cross": cv2.MORPH_CROSS}


def _morph(operation, hole: np.ndarray, iterations: int, kernel: Literal["rect", "cross"]) -> np.ndarray:
    hole = np.asarray(hole)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {sorted(_KERNELS)}, got {kernel!r}")
    if iterations == 0:
        return hole.astype(bool)
    element = cv2.getStructuringElement(_KERNELS[kernel], (3, 3))
    planes = hole.reshape(-1, *hole.shape[-2:]).astype(np.uint8)
    out = np.stack([operation(plane, element, iterations=iterations) for plane in planes])
    return out.reshape(hole.shape) > 0


def mask_dilate(hole: np.ndarray, iterations: int, kernel: Literal["rect", "cross"] = "rect") -> np.ndarray:
    """Grow a hole mask (..., H, W) by ``iterations`` passes of a 3×3 ``rect`` or ``cross`` element → bool.

    This is the inference-time blending dilation (DiffuEraser: 3×3 rect × ``mask_dilation_iter``; its validation
    masks use the cross). It is unrelated to the loss regions of :func:`vipo.regions.decompose`.
    """
    return _morph(cv2.dilate, hole, iterations, kernel)


def mask_erode(hole: np.ndarray, iterations: int, kernel: Literal["rect", "cross"] = "rect") -> np.ndarray:
    """Shrink a hole mask (..., H, W) by ``iterations`` passes of a 3×3 element → bool; frame edges do not erode."""
    return _morph(cv2.erode, hole, iterations, kernel)
