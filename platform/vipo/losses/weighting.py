"""Timestep weights ŵ(t) for the DPO logit (dpo.md §4). The default is ŵ ≡ 1; this is the optional ablation."""

from __future__ import annotations

import torch

__all__ = ["min_snr_weight"]


def min_snr_weight(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weight ŵ(t) = [min(SNR_t, γ)/SNR_t] / E_t[min(SNR_t, γ)/SNR_t], SNR_t = ᾱ_t/(1 − ᾱ_t).

    The mean is taken over all T timesteps of the schedule (uniform t, as in training), not over the batch, so
    E_t[ŵ] = 1 and DGR at step 0 stays ≈ β′/2 on average; it down-weights the low-noise steps whose SNR exceeds γ
    (t < 147 for SD1.5 and γ = 5).

    Args:
        timesteps: integer timesteps in [0, T), any shape (normally (B,), one per pair).
        alphas_cumprod: ᾱ of the noise scheduler, (T,), values in [0, 1] (``scheduler.alphas_cumprod``).
        gamma: γ > 0.

    Returns:
        float32 weights ≥ 0, shape and device of ``timesteps``.
    """
    if not 0 < gamma < float("inf"):
        raise ValueError(f"gamma must be finite and > 0, got {gamma}")
    if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() == 0:
        raise ValueError(f"alphas_cumprod must be a 1-D schedule (T,), got shape {tuple(alphas_cumprod.shape)}")
    steps = alphas_cumprod.numel()
    if timesteps.numel() and not (0 <= int(timesteps.min()) and int(timesteps.max()) < steps):
        raise ValueError(f"timesteps must lie in [0, {steps}), got {int(timesteps.min())}..{int(timesteps.max())}")
    alphas_cumprod = alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    # min(SNR, γ)/SNR written as min(1, γ/SNR): 1 at SNR = 0 (zero-terminal-SNR schedules), 0 at SNR = ∞.
    weight = (gamma / snr).clamp(max=1.0)
    return (weight[timesteps.long()] / weight.mean()).float()
