"""Random moving masks: vipo's vectorised generator vs the upstream-algorithm reference (same process).

The reference is ``tests/upstream_masks.py``: ProPainter's ``create_random_shape_with_random_motion`` re-implemented
with its own rendering path (a matplotlib figure per shape, ``cv2.resize``, crop, a full-frame paste per frame),
which ``tests/test_masks.py`` checks vipo's default against. It is timed twice: with one figure reused across shapes
(as the test runs it) and with a fresh figure per clip (as upstream does). vipo's two shapes are timed as well.

    OMP_NUM_THREADS=1 python benchmarks/bench_masks.py [--seeds 20] [--frames 22] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from vipo.masks import MovingMaskConfig, random_moving_masks

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from upstream_masks import UpstreamShapeRenderer, upstream_moving_masks  # noqa: E402


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
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    shape = (args.frames, args.size, args.size)
    shared = UpstreamShapeRenderer()
    fill_box = MovingMaskConfig(shape="fill_box", motion="bounded", speed_noise=0.5)
    generators = {
        "vipo default (upstream shape, vectorised)": lambda seed: random_moving_masks(*shape, seed),
        "vipo fill_box (vectorised)": lambda seed: random_moving_masks(*shape, seed, fill_box),
        "upstream reference, one shared figure": lambda seed: upstream_moving_masks(*shape, seed, shared),
        "upstream reference, a figure per clip": lambda seed: upstream_moving_masks(*shape, seed,
                                                                                   UpstreamShapeRenderer()),
    }
    best, outputs = _time_interleaved(generators, range(args.seeds), args.repeats)
    shared_name, upstream_name = list(generators)[2:]
    print(f"clip {args.frames}x{args.size}x{args.size}, {args.seeds} seeds, best of {args.repeats}; speed-up =")
    print("reference time / this time, against the shared-figure reference and the figure-per-clip one (upstream's)")
    for name in generators:
        area = np.mean([masks[0].mean() for masks in outputs[name]])
        print(
            f"  {name:<40s} {best[name] * 1e3:8.2f} ms/clip  speed-up {best[shared_name] / best[name]:5.2f}x"
            f" / {best[upstream_name] / best[name]:5.2f}x  (mean hole area {area:.1%})"
        )


if __name__ == "__main__":
    main()
