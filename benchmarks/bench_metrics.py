"""Throughput of masked PSNR + SSIM + LPIPS: evaluation.metrics (batched) vs skimage + lpips frame by frame.

Both sides score the same frames with the same LPIPS network and the same conventions (MSE over hole pixels;
SSIM map averaged over hole pixels inside skimage's valid border; LPIPS spatial map averaged over hole pixels),
in the same process; for each hole size the script prints per metric and for all three the time per frame of
both sides (best of ``--repeats`` after a warm-up), the speed-up, each metric's share of our time, and both values.
Throughput does not depend on the LPIPS trunk's weights, so a random trunk is used when no ImageNet file is given.
The prediction is a hard composite, as the scorer scores it: noise inside the hole (a centred square whose side is
``--hole`` × the frame side, so 0.5 is a quarter of the area), the target outside; our LPIPS then runs only on the
hole's box plus the trunk's receptive field, so its speed-up shrinks as the hole grows (at 0.735, 54 % of the
area, the crop is the whole frame and both sides run the same AlexNet over it).

    OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py --frames 16 --size 512 --hole 0.25 0.5 0.735
"""

from __future__ import annotations

import argparse
import time
import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from evaluation.metrics import get_lpips, masked_lpips, masked_psnr, masked_ssim


def _inputs(frames: int, size: int, hole_side: float,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1,F,3,S,S) target, hard-composite prediction, and (1,F,1,S,S) hole: a centred square of ``hole_side``·S."""
    generator = torch.Generator().manual_seed(0)
    target = F.interpolate(torch.rand(frames, 3, 32, 32, generator=generator), size=(size, size), mode="bilinear")
    hole = torch.zeros(frames, 1, size, size)
    margin = int(size * (1 - hole_side) / 2)
    hole[..., margin:size - margin, margin:size - margin] = 1
    noisy = (target + 0.05 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    pred = torch.where(hole > 0, noisy, target)
    return tuple(x[None].to(device) for x in (target, pred, hole))


def _frame_arrays(pred, target, hole, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``f`` as skimage wants it: (H,W,C) float64 prediction and target, (H,W) bool hole."""
    p = pred[0, f].permute(1, 2, 0).cpu().numpy().astype(np.float64)
    t = target[0, f].permute(1, 2, 0).cpu().numpy().astype(np.float64)
    return p, t, hole[0, f, 0].cpu().numpy() > 0.5


def _psnr_frame_by_frame(pred, target, hole, net) -> float:
    values = []
    for f in range(pred.shape[1]):
        p, t, m = _frame_arrays(pred, target, hole, f)
        values.append(10 * np.log10(1.0 / ((p - t) ** 2)[m].mean()))
    return float(np.mean(values))


def _ssim_frame_by_frame(pred, target, hole, net) -> float:
    values = []
    for f in range(pred.shape[1]):
        p, t, m = _frame_arrays(pred, target, hole, f)
        _, ssim_map = structural_similarity(
            t, p, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
            channel_axis=-1, full=True,
        )
        interior = np.zeros_like(m)
        interior[5:-5, 5:-5] = True  # skimage's Gaussian-window border, left out of its own mean
        values.append(ssim_map.mean(axis=-1)[m & interior].mean())
    return float(np.mean(values))


def _lpips_frame_by_frame(pred, target, hole, net) -> float:
    values = []
    with torch.no_grad():
        for f in range(pred.shape[1]):
            lpips_map = net(pred[0, f : f + 1], target[0, f : f + 1], normalize=True)[0, 0].cpu().numpy()
            values.append(lpips_map[hole[0, f, 0].cpu().numpy() > 0.5].mean())
    return float(np.mean(values))


METRICS = {
    "PSNR": (lambda p, t, m, net: masked_psnr(p, t, m).item(), _psnr_frame_by_frame),
    "SSIM": (lambda p, t, m, net: masked_ssim(p, t, m).item(), _ssim_frame_by_frame),
    "LPIPS": (lambda p, t, m, net: masked_lpips(p, t, m, net=net).item(), _lpips_frame_by_frame),
}


def _best_time(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Best seconds per call of ``repeats`` calls after one warm-up call, and the value returned.

    On CPU this is the process's CPU time (all threads): on a shared machine wall time mostly measures the
    neighbours, and the best of several calls is the least disturbed one.
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    value = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - start)
    return best, value


def _compare(hole_side: float, args: argparse.Namespace, net, device: torch.device) -> None:
    """One table: per metric, ours vs the reference on the same frames, timed alternately in this process."""
    target, pred, hole = _inputs(args.frames, args.size, hole_side, device)
    area = hole[0, 0].mean().item()
    print(f"\nhole side {hole_side:.3f} of the frame side = {area:.1%} of the area")
    print(f"{'metric':<7}{'ours ms/frame':>15}{'skimage+lpips ms/frame':>24}{'speed-up':>10}{'share of ours':>15}"
          "   values (ours vs reference)")
    rows, totals = [], [0.0, 0.0]
    for name, (ours_fn, reference_fn) in METRICS.items():
        ours_s, ours = _best_time(lambda: ours_fn(pred, target, hole, net), args.repeats, device)
        reference_s, reference = _best_time(lambda: reference_fn(pred, target, hole, net), args.repeats, device)
        rows.append((name, ours_s, reference_s, f"   {ours:.6f} vs {reference:.6f}"))
        totals[0] += ours_s
        totals[1] += reference_s
    rows.append(("all 3", *totals, ""))
    for name, ours_s, reference_s, values in rows:
        print(f"{name:<7}{1000 * ours_s / args.frames:>15.2f}{1000 * reference_s / args.frames:>24.2f}"
              f"{reference_s / ours_s:>9.2f}x{ours_s / totals[0]:>15.0%}{values}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--hole", type=float, nargs="+", default=[0.25, 0.5, 0.735],
                        help="hole side(s) as a fraction of the frame side (0.5 = 25%% of the area)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side; the best counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone-weights", default=None, help="torchvision AlexNet .pth (else random trunk)")
    args = parser.parse_args()

    device = torch.device(args.device)
    cv2.setNumThreads(torch.get_num_threads())  # OpenCV (our SSIM filter on CPU) gets the threads torch gets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_lpips("alex", args.backbone_weights, allow_random_backbone=args.backbone_weights is None).to(device)
        net.spatial = True
    clock = "wall time" if device.type == "cuda" else "process CPU time"
    print(f"device={device} threads={torch.get_num_threads()} frames={args.frames} size={args.size}² "
          f"clock={clock}, best of {args.repeats}")
    for hole_side in args.hole:
        _compare(hole_side, args, net, device)


if __name__ == "__main__":
    main()
