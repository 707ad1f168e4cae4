"""Random moving masks: vectorised generator vs a straightforward per-frame implementation (same process).

The baseline draws the same random numbers in the same order, but re-evaluates the Bézier outline point by point
in Python for every frame, translates it and fills it into a full frame, the way a per-frame port of upstream's
generator would. A middle variant computes the outline once but fills every full frame. All three produce the same
masks (the pixel difference is printed), so the ratios are the cost of rendering alone.

    OMP_NUM_THREADS=1 python benchmarks/bench_masks.py [--seeds 20] [--frames 22] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
import numpy as np

from vipo.masks import MovingMaskConfig, random_moving_masks
from vipo.masks.moving import CURVE_SAMPLES_PER_SEGMENT, bezier_blob_outline, blob_offsets


def _naive_length(rng: np.random.Generator, fraction: tuple[float, float], length: int) -> int:
    low = max(1, math.ceil(round(fraction[0] * length, 9)))
    high = max(low, math.floor(round(fraction[1] * length, 9)))
    return int(rng.integers(low, high + 1))


def _naive_outline(num_segments: int, radii: np.ndarray) -> list[tuple[float, float]]:
    num_points = 3 * num_segments
    points = [
        (radii[j] * math.cos(2 * math.pi * j / num_points), radii[j] * math.sin(2 * math.pi * j / num_points))
        for j in range(num_points)
    ]
    points.append(points[0])
    outline = []
    for segment in range(num_segments):
        p0, p1, p2, p3 = points[3 * segment : 3 * segment + 4]
        for step in range(CURVE_SAMPLES_PER_SEGMENT):
            t = step / CURVE_SAMPLES_PER_SEGMENT
            weights = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3)
            outline.append(tuple(sum(w * p[axis] for w, p in zip(weights, (p0, p1, p2, p3))) for axis in (0, 1)))
    return outline


def naive_moving_masks(num_frames: int, height: int, width: int, seed: int, config: MovingMaskConfig) -> np.ndarray:
    rng = np.random.default_rng(seed)
    box_h = _naive_length(rng, config.size_fraction, height)
    box_w = _naive_length(rng, config.size_fraction, width)
    num_segments = int(rng.integers(config.num_segments[0], config.num_segments[1] + 1))
    jitter = rng.uniform(*config.radius_jitter)
    radii = rng.uniform(1 - jitter, 1 + jitter, 3 * num_segments)
    static = bool(rng.random() < config.static_probability)
    offsets = blob_offsets(rng, num_frames, (height - box_h, width - box_w), static, config)
    masks = np.zeros((num_frames, height, width), dtype=bool)
    for frame, (top, left) in enumerate(offsets):
        outline = _naive_outline(num_segments, radii)
        xs, ys = [p[0] for p in outline], [p[1] for p in outline]
        vertices = [
            (
                left + round((x - min(xs)) / (max(xs) - min(xs)) * (box_w - 1)),
                top + round((y - min(ys)) / (max(ys) - min(ys)) * (box_h - 1)),
            )
            for x, y in outline
        ]
        canvas = np.zeros((height, width), np.uint8)
        cv2.fillPoly(canvas, [np.array(vertices, np.int32)], 1)
        masks[frame] = canvas > 0
    return masks


def fill_per_frame_masks(num_frames: int, height: int, width: int, seed: int, config: MovingMaskConfig) -> np.ndarray:
    """Middle ground: numpy outline once, but ``cv2.fillPoly`` of the translated outline into every full frame."""
    rng = np.random.default_rng(seed)
    box_h = _naive_length(rng, config.size_fraction, height)
    box_w = _naive_length(rng, config.size_fraction, width)
    vertices = np.rint(bezier_blob_outline(rng, config) * [box_w - 1, box_h - 1]).astype(np.int32)
    static = bool(rng.random() < config.static_probability)
    offsets = blob_offsets(rng, num_frames, (height - box_h, width - box_w), static, config)
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    for frame, (top, left) in zip(masks, offsets):
        cv2.fillPoly(frame, [vertices + np.array([left, top], np.int32)], 1)
    return masks.astype(bool)


def _time_interleaved(generators: dict, seeds: range, repeats: int) -> tuple[dict, dict]:
    """Best-of-``repeats`` seconds per clip for each generator, alternating them so load drifts hit all alike."""
    best = dict.fromkeys(generators, math.inf)
    outputs = {}
    for _ in range(repeats):
        for name, generate in generators.items():
            start = time.perf_counter()
            outputs[name] = [generate(seed) for seed in seeds]
            best[name] = min(best[name], (time.perf_counter() - start) / len(seeds))
    return best, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=22)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    config = MovingMaskConfig()
    seeds = range(args.seeds)
    shape = (args.frames, args.size, args.size)
    generators = {
        "vectorised (outline once, fill once, paste)": lambda seed: random_moving_masks(*shape, seed, config),
        "numpy outline once, fillPoly every frame": lambda seed: fill_per_frame_masks(*shape, seed, config),
        "per-frame Python outline + fillPoly": lambda seed: naive_moving_masks(*shape, seed, config),
    }
    best, outputs = _time_interleaved(generators, seeds, args.repeats)
    reference = next(iter(generators))
    total = sum(m.size for m in outputs[reference])
    print(f"clip {args.frames}x{args.size}x{args.size}, {args.seeds} seeds, best of {args.repeats}")
    for name in generators:
        differing = sum(int((a != b).sum()) for a, b in zip(outputs[reference], outputs[name]))
        print(
            f"  {name:<44s} {best[name] * 1e3:8.2f} ms/clip  {best[name] / best[reference]:6.1f}x vectorised"
            f"  (pixels differing: {differing}/{total})"
        )

if __name__ == "__main__":
    main()
