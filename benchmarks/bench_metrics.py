"""Throughput of masked PSNR + SSIM + LPIPS: evaluation.metrics (batched) vs skimage + lpips frame by frame.

Both sides score the same frames with the same LPIPS network and the same conventions (MSE over hole pixels;
SSIM map averaged over hole pixels inside skimage's valid border; LPIPS spatial map averaged over hole pixels),
in the same process; the script prints frames/s per metric and for all three, the ratio, and both values.
Throughput does not depend on the LPIPS trunk's weights, so a random trunk is used when no ImageNet file is given.
The prediction is a hard composite, as the scorer scores it: noise inside the hole (a square of ``--hole`` × the
side, centred), the target outside; our LPIPS then runs only on the hole's box plus the trunk's receptive field.

    OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py --frames 16 --size 512 --hole 0.25
"""

from __future__ import annotations

import argparse
import time
import warnings

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


def _timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Mean seconds per call after one warm-up call, and the value returned.

    On CPU this is the process's CPU time: on a shared machine wall time mostly measures the neighbours.
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    for _ in range(repeats):
        value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (clock() - start) / repeats, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--hole", type=float, default=0.25, help="hole side as a fraction of the frame side")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone-weights", default=None, help="torchvision AlexNet .pth (else random trunk)")
    args = parser.parse_args()

    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_lpips("alex", args.backbone_weights, allow_random_backbone=args.backbone_weights is None).to(device)
        net.spatial = True
    target, pred, hole = _inputs(args.frames, args.size, args.hole, device)

    clock = "wall time" if device.type == "cuda" else "process CPU time"
    print(f"device={device} threads={torch.get_num_threads()} frames={args.frames} size={args.size}² "
          f"hole={args.hole:.0%} of the side clock={clock}")
    header = f"{'metric':<7}{'ours frames/s':>15}{'skimage+lpips frames/s':>24}{'speed-up':>10}"
    print(f"{header}   values (ours vs reference)")
    totals = [0.0, 0.0]
    for name, (ours_fn, reference_fn) in METRICS.items():
        ours_s, ours = _timed(lambda: ours_fn(pred, target, hole, net), args.repeats, device)
        reference_s, reference = _timed(lambda: reference_fn(pred, target, hole, net), args.repeats, device)
        totals[0] += ours_s
        totals[1] += reference_s
        print(
            f"{name:<7}{args.frames / ours_s:>15.2f}{args.frames / reference_s:>24.2f}{reference_s / ours_s:>9.2f}x"
            f"   {ours:.6f} vs {reference:.6f}"
        )
    ours_s, reference_s = totals
    print(f"{'all 3':<7}{args.frames / ours_s:>15.2f}{args.frames / reference_s:>24.2f}{reference_s / ours_s:>9.2f}x")


if __name__ == "__main__":
    main()
