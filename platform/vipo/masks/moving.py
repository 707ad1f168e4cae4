"""Random moving training masks, after DiffuEraser/ProPainter's ``create_random_shape_with_random_motion``.

Our own implementation: a closed blob of cubic Bézier
segments with radial jitter, placed in a random box between 1/3 of the frame and the full frame, either static or
drifting with a random-walk velocity. Differences from upstream, all deliberate:

* The blob is scaled so that its outline spans the drawn box exactly, so the size range applies to the hole's
  bounding box itself (upstream crops a matplotlib rendering to its tight box, which makes holes smaller than the
  drawn size by a random amount).
* The speed random walk stays inside the configured speed range (upstream adds N(0, 1.5) unbounded, so after a
  few frames the speed leaves its 1-3 px/frame range or turns negative), and each step is rounded to whole pixels
  instead of truncated (upstream's ``int()`` turns a 1 px/frame diagonal step into no motion).
* Rendering is vectorised: the outline is computed once with numpy, filled once with ``cv2.fillPoly`` into a
  patch of the box size, and each frame is a copy of that patch at the frame's integer offset.
"""

from __future__ import annotations

import math
from typing import Annotated

import cv2
import numpy as np
from pydantic import AfterValidator, Field

from vipo.config import Config

__all__ = ["MovingMaskConfig", "bezier_blob_outline", "blob_offsets", "random_moving_masks"]

CURVE_SAMPLES_PER_SEGMENT = 32
"""Points per Bézier segment; 32 keeps the polygon's chords under a pixel for blobs up to ~1000 px."""


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

    num_segments: _range(int, ge=3, le=64) = (6, 8)
    """Number of cubic Bézier segments of the closed outline."""
    radius_jitter: _range(float, ge=0.0, lt=1.0) = (0.6, 0.8)
    """r: each control point's radius is drawn from U[1 - r, 1 + r]; r itself is drawn from this range."""
    size_fraction: _range(float, gt=0.0, le=1.0) = (1 / 3, 1.0)
    """Hole bounding-box height and width as fractions of the frame's height and width (independently drawn)."""
    static_probability: float = Field(default=0.5, ge=0.0, le=1.0)
    """Probability that the hole does not move at all."""
    speed: _range(float, ge=0.0, le=64.0) = (1.0, 3.0)
    """Speed range in px/frame: initial and re-drawn speeds are uniform in it, the random walk is clipped to it."""
    speed_noise: float = Field(default=0.5, ge=0.0)
    """Standard deviation of the per-frame speed random walk, px/frame."""
    angle_noise: float = Field(default=0.25, ge=0.0)
    """Standard deviation of the per-frame heading random walk, radians."""


def _bernstein_basis(samples: int) -> np.ndarray:
    """Cubic Bernstein polynomials at ``samples`` points of [0, 1) → (samples, 4)."""
    # The end point t = 1 is left out: it is the next segment's start point.
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[:, None]
    return np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)


def bezier_blob_outline(rng: np.random.Generator, config: MovingMaskConfig) -> np.ndarray:
    """Sample a closed blob outline → (N, 2) float64 ``(x, y)`` points whose bounding box is exactly [0, 1]².

    ``3n`` control points sit at equally spaced angles on the unit circle, each radius scaled by U[1 - r, 1 + r];
    segment ``i`` is the cubic Bézier curve through control points ``3i .. 3i + 3`` (the last wraps to the first).
    """
    num_segments = int(rng.integers(config.num_segments[0], config.num_segments[1] + 1))
    jitter = rng.uniform(*config.radius_jitter)
    num_points = 3 * num_segments
    angles = 2 * np.pi * np.arange(num_points) / num_points
    radii = rng.uniform(1 - jitter, 1 + jitter, num_points)
    points = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    closed = np.concatenate([points, points[:1]])
    control = np.stack([closed[0:-1:3], closed[1::3], closed[2::3], closed[3::3]], axis=1)  # (n, 4, 2)
    outline = np.einsum("sk,nkd->nsd", _bernstein_basis(CURVE_SAMPLES_PER_SEGMENT), control).reshape(-1, 2)
    low, high = outline.min(axis=0), outline.max(axis=0)
    return (outline - low) / (high - low)


def _rasterise(outline: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fill a unit-box outline scaled to a (height, width) patch → bool (height, width), bbox = whole patch."""
    vertices = np.rint(outline * [width - 1, height - 1]).astype(np.int32)
    patch = np.zeros((height, width), np.uint8)
    cv2.fillPoly(patch, [vertices], 1)
    return patch.astype(bool)


def _draw_velocity(rng: np.random.Generator, config: MovingMaskConfig) -> tuple[float, float]:
    return rng.uniform(*config.speed), rng.uniform(0.0, 2 * np.pi)


def blob_offsets(
    rng: np.random.Generator, num_frames: int, max_offset: tuple[int, int], static: bool, config: MovingMaskConfig
) -> np.ndarray:
    """Per-frame top-left ``(y, x)`` of the hole's box → int64 (num_frames, 2), within ``[0, max_offset]``.

    Moving: speed ``s`` and heading ``θ`` start uniform; each frame steps by ``rint(s·(sin θ, cos θ))`` (so the
    larger step component lies in ``[rint(s/√2), rint(s)]``, i.e. 1-3 px for the default speeds), then ``s``
    and ``θ`` random-walk. A step that would leave the frame is clipped to it and the velocity is re-drawn.
    """
    position = np.array([rng.integers(0, max_offset[0] + 1), rng.integers(0, max_offset[1] + 1)])
    if static:
        return np.tile(position, (num_frames, 1))
    upper = np.asarray(max_offset)
    speed, angle = _draw_velocity(rng, config)
    offsets = [position]
    for _ in range(num_frames - 1):
        position = position + np.rint(speed * np.array([np.sin(angle), np.cos(angle)])).astype(np.int64)
        if np.any(position < 0) or np.any(position > upper):
            position = np.clip(position, 0, upper)
            speed, angle = _draw_velocity(rng, config)
        else:
            speed = float(np.clip(speed + rng.normal(0.0, config.speed_noise), *config.speed))
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

    The hole is one Bézier blob (:func:`bezier_blob_outline`) whose bounding box is ``h × w`` with ``h`` and ``w``
    drawn as integers from ``config.size_fraction`` of the frame, at a random position; static with probability
    ``config.static_probability``, else drifting (:func:`blob_offsets`) and always entirely inside the frame.
    Deterministic: the same arguments give bit-identical masks (``numpy.random.default_rng(seed)``).
    """
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"need num_frames, height, width >= 1, got {num_frames}, {height}, {width}")
    config = config or MovingMaskConfig()
    rng = np.random.default_rng(seed)
    box_h = _draw_length(rng, config.size_fraction, height)
    box_w = _draw_length(rng, config.size_fraction, width)
    patch = _rasterise(bezier_blob_outline(rng, config), box_h, box_w)
    static = bool(rng.random() < config.static_probability)
    offsets = blob_offsets(rng, num_frames, (height - box_h, width - box_w), static, config)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for frame, (y, x) in zip(masks, offsets):
        frame[y : y + box_h, x : x + box_w] = patch
    return masks
