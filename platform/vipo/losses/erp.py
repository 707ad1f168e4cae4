"""Losses and scores on equirectangular (ERP) panoramas: every spatial term weighted per row by latitude.

An ERP row at latitude φ covers cos φ of the sphere's area that an equator row does, so its pixels count cos φ:
the WS-PSNR weight of Sun, Lu & Yu (IEEE SPL 2017), ``w_j = cos((j + 0.5 − H/2)·π/H)`` for row j of H, here
normalised to mean 1 so a weighted loss keeps the scale of the plain one. Sobel gradients use the 3×3 kernel
divided by 8 (kornia's ``normalized=True``), with the image wrapped around in longitude (circular padding along the
width) and replicated at the poles.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "edge_f1",
    "erp_weighted_mean",
    "kl_divergence",
    "latitude_weights",
    "psnr",
    "sobel_gradients",
    "sobel_magnitude",
    "ws_psnr",
]


def latitude_weights(height: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """(H,) cos(latitude of each row's centre), normalised to mean 1."""
    rows = torch.arange(height, device=device, dtype=torch.float64)
    weights = torch.cos((rows + 0.5 - height / 2) * math.pi / height)
    return (weights / weights.mean()).to(dtype)


def erp_weighted_mean(values: Tensor) -> Tensor:
    """Mean of ``values`` (..., H, W) with each row weighted by :func:`latitude_weights` (a scalar)."""
    weights = latitude_weights(values.shape[-2], values.device, values.dtype)
    return (values * weights[:, None]).mean()


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8


def sobel_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C, H, W) → (gx, gy), each (N, C, H, W); longitude wraps, latitude replicates at the poles."""
    channels = images.shape[1]
    kernel = torch.stack([_SOBEL_X, _SOBEL_X.T]).to(images)[:, None].repeat(channels, 1, 1, 1)
    padded = F.pad(F.pad(images, (1, 1, 0, 0), mode="circular"), (0, 0, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernel, groups=channels)  # channel c → (2c: gx, 2c+1: gy)
    return gradients[:, 0::2], gradients[:, 1::2]


def sobel_magnitude(images: Tensor, eps: float = 1e-6) -> Tensor:
    """√(gx² + gy² + eps): the eps keeps the gradient of the square root finite on flat areas."""
    gx, gy = sobel_gradients(images)
    return torch.sqrt(gx.square() + gy.square() + eps)


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, 1)) summed over the latent's elements, averaged over the batch (the
    latent-diffusion autoencoder convention, which the 1e-6 weight is sized for)."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def psnr(prediction: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    mse = (prediction - target).square().mean()
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def ws_psnr(prediction: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Weighted-to-spherically-uniform PSNR (Sun et al. 2017): the MSE weighted per row by latitude."""
    mse = erp_weighted_mean((prediction - target).square())
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def edge_f1(prediction: Tensor, target: Tensor, threshold: float = 0.1, tolerance_px: int = 1) -> Tensor:
    """F1 of the Sobel edge map of ``prediction`` against the input's, (N, C, H, W) in [0, 1] (channel mean):
    an edge pixel counts as matched when the other map has an edge within ``tolerance_px``. Straight lines that
    come back bent or blurred (a square lamp turned round) lose matches on both sides."""
    def edges(images: Tensor) -> Tensor:
        return (sobel_magnitude(images.mean(1, keepdim=True), eps=0.0) > threshold).float()

    predicted, true = edges(prediction), edges(target)
    size = 2 * tolerance_px + 1
    near_true = F.max_pool2d(true, size, stride=1, padding=tolerance_px)
    near_predicted = F.max_pool2d(predicted, size, stride=1, padding=tolerance_px)
    precision = (predicted * near_true).sum() / predicted.sum().clamp_min(1)
    recall = (true * near_predicted).sum() / true.sum().clamp_min(1)
    return 2 * precision * recall / (precision + recall).clamp_min(1e-12)
