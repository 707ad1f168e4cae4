"""ProPainter inference cost with randomly initialised weights (the cost does not depend on the weights).

A synthetic clip (moving texture, moving rectangular hole) goes through ``ProPainterPipeline`` twice: once in a single
pass (baseline: ``subvideo_length`` >= frames) and once cut into sub-videos of ``--subvideo`` frames (default a
quarter of the video, with ``--context`` frames each side, default half a sub-video up to 10), each run in a
fresh subprocess so that peak memory is its own. Printed: seconds per frame, RAFT alone over the whole video as a
share of that, and peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS growth over the loaded models, sampled
every 5 ms), with the sub-video run as ratios of the baseline.

    OMP_NUM_THREADS=2 python benchmarks/bench_propainter.py              # CPU, 240x432, 20 frames
    python benchmarks/bench_propainter.py --gpu [--fp16]                 # CUDA, 480x854, 80 frames

Upstream README (fp32/fp16, whole video on the GPU): 720x480 80 frames 13G/8G, 640x480 12G/7G, 320x240 4G/3G.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import psutil
import torch

from vipo.pipelines.propainter import ProPainterPipeline


def synthetic_clip(num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames (F,H,W,3) uint8 of a texture panning 2 px/frame, holes (F,H,W) bool: a box moving the other way."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    frames, holes = [], []
    for t in range(num_frames):
        x = xx + 2 * t
        rgb = [np.sin(x / 9) + np.cos(yy / 13), np.sin((x + yy) / 17), np.cos(x / 23 - yy / 7)]
        frames.append(np.stack([(c * 60 + 128).clip(0, 255) for c in rgb], -1).astype(np.uint8))
        hole = np.zeros((height, width), bool)
        top, left = height // 3, max(0, width // 2 - 3 * t) % (width - width // 4)
        hole[top:top + height // 3, left:left + width // 4] = True
        holes.append(hole)
    return np.stack(frames), np.stack(holes)


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "peak_gib" is set on exit: peak device memory (CUDA) or peak RSS growth (CPU)."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize()
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return
    process = psutil.Process()
    start = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    yield result
    done.set()
    sampler.join()
    result["peak_gib"] = (peak - start) / 2**30


def measure(args: argparse.Namespace, subvideo_length: int) -> dict[str, float]:
    """One pipeline call in this process: seconds per frame, RAFT share, peak GiB."""
    device = torch.device("cuda" if args.gpu else "cpu")
    frames, holes = synthetic_clip(args.frames, args.height, args.width)
    pipe = ProPainterPipeline.from_random(seed=0, device=device, subvideo_length=subvideo_length, progress=False,
                                          context_length=args.context, raft_iterations=args.raft_iterations,
                                          fp16=args.fp16)
    with peak_memory(device) as memory:
        start = time.perf_counter()
        pipe(frames, holes)
        seconds = time.perf_counter() - start
    video = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).unsqueeze(0).float() / 127.5 - 1
    start = time.perf_counter()
    pipe.flow(video)
    if device.type == "cuda":
        torch.cuda.synchronize()
    raft_seconds = time.perf_counter() - start
    return {"s_per_frame": seconds / args.frames, "raft_share": raft_seconds / seconds, "peak_gib": memory["peak_gib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="CUDA at 480x854, 80 frames (default: CPU, 240x432, 20)")
    parser.add_argument("--fp16", action="store_true", help="half precision after RAFT (CUDA only)")
    parser.add_argument("--frames", type=int, help="override the number of frames")
    parser.add_argument("--subvideo", type=int, help="sub-video length of the compared run (default: frames / 4)")
    parser.add_argument("--context", type=int, help="context frames per side (default: subvideo / 2, at most 10)")
    parser.add_argument("--raft-iterations", type=int, default=20)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # internal: one run with this subvideo_length
    args = parser.parse_args()
    args.height, args.width, default_frames = (480, 854, 80) if args.gpu else (240, 432, 20)
    args.frames = args.frames or default_frames
    args.subvideo = args.subvideo or max(2, args.frames // 4)
    args.context = min(10, args.subvideo // 2) if args.context is None else args.context

    if args.measure:
        print(json.dumps(measure(args, args.measure)))
        return

    device = torch.cuda.get_device_name() if args.gpu else f"cpu, {torch.get_num_threads()} threads"
    print(f"{device}: {args.frames} frames {args.height}x{args.width}, RAFT {args.raft_iterations} iterations, "
          f"fp16 {args.fp16}")
    results = {}
    runs = (("one pass", max(2, args.frames)), (f"sub-videos {args.subvideo}+2x{args.context}", args.subvideo))
    for label, length in runs:
        command = [sys.executable, __file__, *sys.argv[1:], "--measure", str(length)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[label] = result = json.loads(output.strip().splitlines()[-1])
        print(f"{label:>20}: {result['s_per_frame']:.3f} s/frame (RAFT alone {result['raft_share']:.0%}), "
              f"peak {result['peak_gib']:.2f} GiB")
    base, sub = results.values()
    print(f"sub-videos / one pass: x{sub['s_per_frame'] / base['s_per_frame']:.2f} time, "
          f"x{sub['peak_gib'] / max(base['peak_gib'], 1e-9):.2f} peak memory")


if __name__ == "__main__":
    main()
