"""A reference implementation of ProPainter's ``create_random_shape_with_random_motion`` (``core/utils.py``).

Written from reading upstream, not copied: the same algorithm, the same random distributions (Python ``random`` for
the box and shape parameters, numpy's legacy global-style generator for radii and motion) and the same rendering
path (a matplotlib figure at default size with a black ``PathPatch``, resized with ``cv2.resize`` to the drawn box,
black pixels = hole, cropped to the hole the way upstream's ``PIL`` crop does). Used by ``tests/test_masks.py`` to
check vipo's default distribution and by ``benchmarks/bench_masks.py`` as the speed baseline.
"""

from __future__ import annotations

import random

import cv2
import numpy as np
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.path import Path


class UpstreamShapeRenderer:
    """Upstream draws each shape into a fresh ``plt.figure()``; one default-size figure whose patch and limits are
    replaced per shape renders the same pixels ~7x faster."""

    def __init__(self) -> None:
        self.figure = Figure()
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot(111)
        self.axes.axis("off")
        self.patch = patches.PathPatch(Path(np.zeros((2, 2))), facecolor="black", lw=2)
        self.axes.add_patch(self.patch)

    def shape(self, edge_num: int, ratio: float, height: int, width: int, np_rng: np.random.RandomState) -> np.ndarray:
        """A random blob drawn in a ``height × width`` box, cropped to itself → bool (h, w)."""
        return self.render(2 * ratio * np_rng.random_sample(3 * edge_num + 1) + 1 - ratio, height, width)

    def render(self, radii: np.ndarray, height: int, width: int) -> np.ndarray:
        """The blob whose ``3n + 1`` control points (the last one replaced by the first) have ``radii``."""
        num_points = len(radii)
        angles = np.linspace(0, 2 * np.pi, num_points)
        codes = np.full(num_points, Path.CURVE4)
        codes[0] = Path.MOVETO
        vertices = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        vertices[-1] = vertices[0]
        self.patch.set_path(Path(vertices, codes))
        limits = (vertices.min() * 1.1, vertices.max() * 1.1)
        self.axes.set_xlim(*limits)
        self.axes.set_ylim(*limits)
        self.figure.canvas.draw()
        red = np.ascontiguousarray(np.asarray(self.figure.canvas.buffer_rgba())[:, :, 0])
        hole = cv2.resize(red, (width, height)) == 0
        rows, cols = np.nonzero(hole)
        # PIL's crop box is exclusive at the bottom/right, so upstream drops the hole's last row and column.
        return hole[rows.min() : rows.max(), cols.min() : cols.max()]


def _gaussian_velocity(max_speed: float, np_rng: np.random.RandomState) -> tuple[float, float]:
    return abs(np_rng.normal(0, max_speed / 2)), np_rng.uniform(0, 2 * np.pi)


def upstream_moving_masks(
    num_frames: int, height: int, width: int, seed: int, renderer: UpstreamShapeRenderer
) -> np.ndarray:
    """One clip of upstream masks → bool (num_frames, height, width); ``seed`` seeds both generators."""
    py_rng, np_rng = random.Random(seed), np.random.RandomState(seed)
    box_h = py_rng.randint(height // 3, height - 1)
    box_w = py_rng.randint(width // 3, width - 1)
    edge_num = py_rng.randint(6, 8)
    ratio = py_rng.randint(6, 8) / 10
    region = renderer.shape(edge_num, ratio, box_h, box_w, np_rng)
    region_h, region_w = region.shape
    row, col = py_rng.randint(0, height - region_h), py_rng.randint(0, width - region_w)
    speed, angle = np_rng.uniform(3), np_rng.uniform(0, 2 * np.pi)  # uniform(3) draws from [1, 3)
    positions = [(row, col)]
    if py_rng.uniform(0, 1) <= 0.5:
        for _ in range(num_frames - 1):
            row += int(speed * np.cos(angle))
            col += int(speed * np.sin(angle))
            speed, angle = speed + np_rng.normal(0, 3 / 2), angle + np_rng.normal(0, 0.5 / 2)
            if row > height - region_h or row < 0 or col > width - region_w or col < 0:
                speed, angle = _gaussian_velocity(3, np_rng)
            row, col = int(np.clip(row, 0, height - region_h)), int(np.clip(col, 0, width - region_w))
            positions.append((row, col))
    else:
        positions *= num_frames
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for frame, (top, left) in zip(masks, positions):
        frame[top : top + region_h, left : left + region_w] = region
    return masks
