"""Random moving training masks, after ProPainter's ``create_random_shape_with_random_motion`` (``core/utils.py``).

Our own implementation of the same distribution (DiffuEraser trains on ProPainter's masks): a closed blob of cubic
Bézier segments whose control points sit on a jittered unit circle, drawn in a random box between 1/3 of the frame
and the full frame, either static or drifting with a random-walk velocity. Two knobs choose the algorithm:

* ``shape: upstream`` (default) sizes the blob as upstream's matplotlib rendering does: the control points'
  overall range, widened by 10 %, spans the default axes (77.5 % × 77 % of the figure) and the figure is resized
  to the drawn box, then cropped to the blob, so holes come out about half the drawn box (≈ 7.5 % of a 512² frame,
  bounding box ≈ 0.37 of the side). ``shape: fill_box`` stretches the blob to fill the drawn box exactly
  (vipo's first shape: holes ≈ 25 % of the frame, box ≈ 0.69 of the side).
* ``motion: upstream`` (default) steps by ``int(speed · (sin θ, cos θ))`` (truncated toward zero), random-walks the
  speed by N(0, ``speed_noise``) unbounded and, when a step leaves the frame, clips it and re-draws the speed as
  ``|N(0, max speed / 2)|``. ``motion: bounded`` rounds each step, clips the walk to the ``speed`` range and
  re-draws a uniform speed (with ``speed_noise: 0.5``: vipo's first motion, 2.0 px/frame on average against
  upstream's 3.0).

Rendering is vectorised: the outline is computed once with numpy, filled once with ``cv2.fillPoly`` into a patch of
the hole's size, and each frame is a copy of that patch at the frame's integer offset.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import AfterValidator, Field

from vipo.config import Config

__all__ = ["MovingMaskConfig", "blob_control_points", "blob_offsets", "blob_patch", "random_moving_masks"]

CURVE_SAMPLES_PER_SEGMENT = 32
"""Points per Bézier segment; 32 keeps the polygon's chords under a pixel for blobs up to ~1000 px."""

UPSTREAM_AXES_FRACTION = np.array([0.9 - 0.125, 0.88 - 0.11])
"""Width and height of matplotlib's default subplot (``figure.subplot.left/right/bottom/top``) as fractions of the
figure, which upstream resizes to the drawn box."""
UPSTREAM_LIMIT_MARGIN = 1.1
"""Upstream sets both axis limits to 1.1 × the control points' overall minimum and maximum."""


def _ordered(pair: tuple) -> tuple:
    if pair[0] > pair[1]:
        raise ValueError(f"range low {pair[0]} is above high {pair[1]}")
    return pair


def _range(kind: type, **bounds) -> type:
    """A ``(low, high)`` pair of ``kind`` values, each within ``bounds``, with ``low <= high``."""
    item = Annotated[kind, Field(**bounds)]
    return Annotated[tuple[item, item], AfterValidator(_ordered)]


class MovingMaskConfig(Config):
    """Knobs of :func:`random_moving_masks`. Pairs are inclusive ``(low, high)`` ranges sampled uniformly."""

    shape: Literal["upstream", "fill_box"] = "upstream"
    """``upstream``: the blob spans upstream's axes inside the drawn box (about half of it); ``fill_box``: the blob
    is stretched so its bounding box is the drawn box (see the module docstring)."""
    motion: Literal["upstream", "bounded"] = "upstream"
    """``upstream``: truncated steps, unbounded speed walk, ``|N(0, max speed / 2)|`` re-draw at the frame edge;
    ``bounded``: rounded steps, walk clipped to ``speed``, uniform re-draw (see the module docstring)."""
    num_segments: _range(int, ge=3, le=64) = (6, 8)
    """Number of cubic Bézier segments of the closed outline."""
    radius_jitter: _range(float, ge=0.0, lt=1.0) = (0.6, 0.8)
    """r: each control point's radius is drawn from U[1 - r, 1 + r]; r itself is drawn from this range."""
    size_fraction: _range(float, gt=0.0, le=1.0) = (1 / 3, 1.0)
    """Drawn box height and width as fractions of the frame's height and width (independently drawn); the hole's
    bounding box is this box with ``shape: fill_box``, about half of it with ``shape: upstream``."""
    static_probability: float = Field(default=0.5, ge=0.0, le=1.0)
    """Probability that the hole does not move at all."""
    speed: _range(float, ge=0.0, le=64.0) = (1.0, 3.0)
    """Initial speed range in px/frame (uniform); with ``motion: bounded`` also the re-draw range and the walk's
    bounds."""
    speed_noise: float = Field(default=1.5, ge=0.0)
    """Standard deviation of the per-frame speed random walk, px/frame."""
    angle_noise: float = Field(default=0.25, ge=0.0)
    """Standard deviation of the per-frame heading random walk, radians."""


def _bernstein_basis(samples: int) -> np.ndarray:
    """Cubic Bernstein polynomials at ``samples`` points of [0, 1) → (samples, 4)."""
    # The end point t = 1 is left out: it is the next segment's start point.
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    return np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)


def blob_control_points(rng: np.random.Generator, config: MovingMaskConfig) -> np.ndarray:
    """``3n`` control points at equally spaced angles on the unit circle, radii scaled by U[1 - r, 1 + r] → (3n, 2)."""
    num_segments = int(rng.integers(config.num_segments[0], config.num_segments[1] + 1))
    jitter = rng.uniform(*config.radius_jitter)
    num_points = 3 * num_segments
    angles = 2 * np.pi * np.arange(num_points) / num_points
    radii = rng.uniform(1 - jitter, 1 + jitter, num_points)
    return radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _bezier_outline(points: np.ndarray) -> np.ndarray:
    """Closed outline through control points ``(3n, 2)``: segment ``i`` is the cubic Bézier curve through points
    ``3i .. 3i + 3`` (the last wraps to the first) → (n · CURVE_SAMPLES_PER_SEGMENT, 2)."""
    closed = np.concatenate([points, points[:1]])
    control = np.stack([closed[0:-1:3], closed[1::3], closed[2::3], closed[3::3]], axis=1)  # (n, 4, 2)
    return np.einsum("sk,nkd->nsd", _bernstein_basis(CURVE_SAMPLES_PER_SEGMENT), control).reshape(-1, 2)


def _unit_box(outline: np.ndarray) -> np.ndarray:
    low, high = outline.min(axis=0), outline.max(axis=0)
    return (outline - low) / (high - low)


def _rasterise(outline: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill a unit-box outline scaled to a (height, width) patch → bool (height, width), bbox = whole patch."""
    vertices = np.rint(outline * [width - 1, height - 1]).astype(np.int32)
    patch = np.zeros((height, width), np.uint8)
    cv2.fillPoly(patch, [vertices], 1)
    return patch.astype(bool)


def blob_patch(points: np.ndarray, shape: str, box_height: int, box_width: int) -> np.ndarray:
    """The blob of control ``points`` (:func:`blob_control_points`) drawn in a ``box_height × box_width`` box,
    cropped to its bounding box → bool (h, w).

    ``fill_box``: ``(h, w)`` is the box. ``upstream``: the box is upstream's figure, whose axes (77.5 % × 77 % of it)
    span 1.1 × the control points' overall range on both axes, so the blob covers its own extent's share of that.
    """
    outline = _bezier_outline(points)
    height, width = box_height, box_width
    if shape == "upstream":
        span = UPSTREAM_LIMIT_MARGIN * (points.max() - points.min())
        extent = np.ptp(outline, axis=0) / span * UPSTREAM_AXES_FRACTION * [box_width, box_height]
        # Upstream's crop box is exclusive at the bottom and right, dropping the hole's last row and column.
        width, height = (int(length) for length in np.maximum(1, np.rint(extent) - 1))
    return _rasterise(_unit_box(outline), height, width)


def _draw_velocity(rng: np.random.Generator, config: MovingMaskConfig) -> tuple[float, float]:
    return rng.uniform(*config.speed), rng.uniform(0.0, 2 * np.pi)


def blob_offsets(
    rng: np.random.Generator, num_frames: int, max_offset: tuple[int, int], static: bool, config: MovingMaskConfig
) -> np.ndarray:
    """Per-frame top-left ``(y, x)`` of the hole's box → int64 (num_frames, 2), within ``[0, max_offset]``.

    Moving: speed ``s`` and heading ``θ`` start uniform; each frame steps by ``s·(sin θ, cos θ)`` (truncated toward
    zero with ``motion: upstream``, rounded with ``bounded``), then ``s`` and ``θ`` random-walk. A step that leaves
    the frame is clipped to it and the velocity is re-drawn (``|N(0, max speed / 2)|`` with ``upstream``, uniform in
    ``speed`` with ``bounded``, whose walk also stays in ``speed``).
    """
    position = np.array([rng.integers(0, max_offset[0] + 1), rng.integers(0, max_offset[1] + 1)])
    if static:
        return np.tile(position, (num_frames, 1))
    upstream = config.motion == "upstream"
    to_pixels = np.trunc if upstream else np.rint
    upper = np.asarray(max_offset)
    speed, angle = _draw_velocity(rng, config)
    offsets = [position]
    for _ in range(num_frames - 1):
        position = position + to_pixels(speed * np.array([np.sin(angle), np.cos(angle)])).astype(np.int64)
        if np.any(position < 0) or np.any(position > upper):
            position = np.clip(position, 0, upper)
            if upstream:
                speed, angle = abs(rng.normal(0.0, config.speed[1] / 2)), rng.uniform(0.0, 2 * np.pi)
            else:
                speed, angle = _draw_velocity(rng, config)
        else:
            speed = speed + rng.normal(0.0, config.speed_noise)
            speed = speed if upstream else float(np.clip(speed, *config.speed))
            angle = angle + rng.normal(0.0, config.angle_noise)
        offsets.append(position)
    return np.stack(offsets)


def _draw_length(rng: np.random.Generator, fraction: tuple[float, float], length: int) -> int:
    """A whole number of pixels in ``[fraction[0]·length, fraction[1]·length]``, at least 1."""
    # Rounding before ceil/floor absorbs float noise such as (1/3)·3k landing a hair above k.
    low = max(1, math.ceil(round(fraction[0] * length, 9)))
    high = max(low, math.floor(round(fraction[1] * length, 9)))
    return int(rng.integers(low, high + 1))


def random_moving_masks(
    num_frames: int, height: int, width: int, seed: int, config: MovingMaskConfig | None = None
) -> np.ndarray:
    """A random moving hole for a clip → bool (num_frames, height, width), ``True = hole``.

    The hole is one Bézier blob (:func:`blob_patch`) drawn in an ``h × w`` box with ``h`` and ``w`` drawn as
    integers from ``config.size_fraction`` of the frame, at a random position; static with probability
    ``config.static_probability``, else drifting (:func:`blob_offsets`) and always entirely inside the frame.
    Deterministic: the same arguments give bit-identical masks (``numpy.random.default_rng(seed)``).
    """
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need num_frames, height, width >= 1, got {num_frames}, {height}, {width}")
    config = config or MovingMaskConfig()
    rng = np.random.default_rng(seed)
    box_h = _draw_length(rng, config.size_fraction, height)
    box_w = _draw_length(rng, config.size_fraction, width)
    patch = blob_patch(blob_control_points(rng, config), config.shape, box_h, box_w)
    hole_h, hole_w = patch.shape
    static = bool(rng.random() < config.static_probability)
    offsets = blob_offsets(rng, num_frames, (height - hole_h, width - hole_w), static, config)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for frame, (y, x) in zip(masks, offsets):
        frame[y : y + hole_h, x : x + hole_w] = patch
    return masks
