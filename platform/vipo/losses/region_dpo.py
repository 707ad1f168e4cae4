"""Region-Reg-DPO: Diffusion-DPO with per-region preference weights α_r and per-region SFT anchors ρ_r.

The maths is Diffusion-DPO's (Wallace et al. 2023, eq. 14) with region weights; β′ is the diffusers-convention β
(T and ω folded in, never multiplied by T = 1000), so with one all-ones region, α = 1 and ρ = 0 this is the
diffusers Diffusion-DPO loss with ``beta_dpo = β′`` (= the official code's loss with ``beta_dpo = 2β′``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vipo.losses.region_terms import REGION_NAMES, RegionTerms, implicit_accuracy, region_vector

__all__ = ["region_reg_dpo_loss"]


def region_reg_dpo_loss(
    noise: torch.Tensor,
    policy_win: torch.Tensor,
    policy_lose: torch.Tensor,
    ref_win: torch.Tensor,
    ref_lose: torch.Tensor,
    regions: Sequence[torch.Tensor],
    alpha: Sequence[float],
    rho: Sequence[float],
    beta: float,
    timestep_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Region-Reg-DPO loss over B preference pairs, computed in fp32 (fp64 if any input is fp64).

    Args:
        noise: ε, (B, ...), shared by winner and loser and by policy and reference.
        policy_win, policy_lose: the trained model's ε-predictions on the noised winner / loser, shape of ``noise``.
        ref_win, ref_lose: the reference model's predictions (treated as constants), shape of ``noise``.
        regions: masks (hole, boundary, context), each broadcastable to ``noise``, values in [0, 1].
        alpha: per-region preference weights α_r ≥ 0 (hole, boundary, context). α = 0 is the SFT-only control.
        rho: per-region SFT weights ρ_r ≥ 0 on the winner.
        beta: β′ > 0, diffusers convention (DGR at step 0 is β′/2).
        timestep_weight: optional ŵ(t) per pair, (B,), ≥ 0 (e.g. :func:`min_snr_weight`); ŵ ≡ 1 if None.

    With N the element count of one sample and m_r(a) = (1/N)·Σ M_r(ε − a)²:
    Δw_r = m_r(ε̂w_θ) − m_r(ε̂w_ref), Δl_r likewise, s = Σ_r α_r(Δw_r − Δl_r) (negative = winner preferred),
    L = mean over pairs of softplus(β′ŵs) + Σ_r ρ_r m_r(ε̂w_θ).

    Returns:
        ``(loss, stats)``: the scalar loss (with graph) and detached stats. Per pair (B,): ``s``, ``logit`` = β′ŵs,
        ``dgr`` = β′ŵσ(β′ŵs) (= ∂L_DPO/∂s, the analytic DPO gradient weight, not a parameter-gradient norm),
        ``delta_win``/``delta_lose`` = Σ_r α_rΔw_r / Σ_r α_rΔl_r, ``reward_chosen``/``reward_rejected`` =
        −β′ŵ·delta_win / −β′ŵ·delta_lose (TRL style), and per region r ∈ (hole, boundary, context):
        ``sft_r`` = ρ_r·m_r(ε̂w_θ) and ``dpo_share_r`` = α_r·DGR/(α_r·DGR + ρ_r) (0 where the region gets no
        gradient at all), plus :meth:`RegionTerms.region_stats`. Scalars: ``implicit_acc``, ``loser_dominant`` =
        mean(delta_win > 0 ∧ delta_lose > 0 ∧ s < 0), ``dpo_loss``, ``sft_loss``.
    """
    if not 0 < beta < float("inf"):
        raise ValueError(f"beta (β′) must be finite and > 0, got {beta}")
    terms = RegionTerms.compute(noise, policy_win, policy_lose, ref_win, ref_lose, regions)
    alpha_r = region_vector(alpha, "alpha", terms.gap_win)
    rho_r = region_vector(rho, "rho", terms.gap_win)
    batch = terms.gap_win.shape[0]
    scale = torch.full((batch,), float(beta), dtype=terms.gap_win.dtype, device=terms.gap_win.device)
    if timestep_weight is not None:
        if timestep_weight.shape != (batch,):
            raise ValueError(
                f"timestep_weight must have shape ({batch},), one per pair, got {tuple(timestep_weight.shape)}"
            )
        scale = scale * timestep_weight.detach().to(scale)

    delta_win = terms.gap_win @ alpha_r / terms.numel
    delta_lose = terms.gap_lose @ alpha_r / terms.numel
    margin = delta_win - delta_lose
    logit = scale * margin
    dpo_per_pair = F.softplus(logit)
    sft_per_region = terms.sq_err_win * rho_r / terms.numel
    loss = (dpo_per_pair + sft_per_region.sum(1)).mean()

    with torch.no_grad():
        margin, logit = margin.detach(), logit.detach()
        dgr = scale * torch.sigmoid(logit)
        stats = {
            "s": margin,
            "logit": logit,
            "dgr": dgr,
            "implicit_acc": implicit_accuracy(margin),
            "delta_win": delta_win.detach(),
            "delta_lose": delta_lose.detach(),
            "reward_chosen": -scale * delta_win.detach(),
            "reward_rejected": -scale * delta_lose.detach(),
            "loser_dominant": ((delta_win > 0) & (delta_lose > 0) & (margin < 0)).float().mean(),
            "dpo_loss": dpo_per_pair.detach().mean(),
            "sft_loss": sft_per_region.detach().sum(1).mean(),
        }
        stats.update(terms.region_stats())
        for index, name in enumerate(REGION_NAMES):
            dpo_weight = alpha_r[index] * dgr
            total_weight = dpo_weight + rho_r[index]
            stats[f"sft_{name}"] = sft_per_region[:, index].detach()
            stats[f"dpo_share_{name}"] = torch.where(
                total_weight > 0, dpo_weight / total_weight.clamp_min(torch.finfo(dgr.dtype).tiny), 0.0
            )
    return loss, stats
