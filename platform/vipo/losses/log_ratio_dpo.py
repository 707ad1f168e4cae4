"""The log-ratio DPO variant: the research group's most stable recipe in practice (Exp11, practice.md §3).

Instead of MSE differences it compares log-ratios of region-weighted MSEs, g = log((m + eps)/(m_ref + eps)), which
stopped the loser-gap explosion in their runs; the loser gap is down-weighted and clipped, and the winner is
anchored twice (its MSE, and a hinge on its gap).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vipo.losses.region_terms import RegionTerms, implicit_accuracy, region_vector

__all__ = ["log_ratio_dpo_loss"]


def log_ratio_dpo_loss(
    noise: torch.Tensor,
    policy_win: torch.Tensor,
    policy_lose: torch.Tensor,
    ref_win: torch.Tensor,
    ref_lose: torch.Tensor,
    regions: Sequence[torch.Tensor],
    *,
    region_weights: Sequence[float],
    beta: float,
    lose_weight: float,
    lose_clip: float | None,
    win_anchor_weight: float,
    win_gap_weight: float,
    eps: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-ratio DPO loss over B preference pairs, computed in fp32 (fp64 if any input is fp64).

    Args:
        noise, policy_win, policy_lose, ref_win, ref_lose, regions: as in :func:`region_reg_dpo_loss`.
        region_weights: (hole, boundary, context) weights ≥ 0 of the weight map w = Σ_r weight_r·M_r
            (Exp11: 1.0, 0.75, 0.05).
        beta: β > 0 in the official −½β convention (Exp11: 10), i.e. the logit is ½·β·s.
        lose_weight: α_l ≥ 0 on the loser gap (Exp11: 0.25).
        lose_clip: τ, the loser gap is clipped to at most τ (Exp11: 1.0); None or inf for no clip.
        win_anchor_weight: λ_w ≥ 0 on the winner's weighted MSE m_w (Exp11: 0.05).
        win_gap_weight: λ_g ≥ 0 on ReLU(g_w), which only acts when the policy is worse than the reference on the
            winner (Exp11: 1.0).
        eps: > 0, keeps the log-ratio finite for a perfect prediction.

    Per pair, m = Σw·(ε − a)²/Σw (a sample whose weight map is all zero has m = 0 and contributes ln 2 without
    gradient), g = log((m_θ + eps)/(m_ref + eps)), s = g_w − α_l·min(g_l, τ),
    L = mean over pairs of softplus(½βs) + λ_w·m_w + λ_g·ReLU(g_w)
    (softplus(x) = −logσ(−x)). g is computed as log1p(Δ/(m_ref + eps)) with Δ in the exact difference form.

    Returns:
        ``(loss, stats)``: the scalar loss (with graph) and detached stats. Per pair (B,): ``s``, ``logit`` = ½βs,
        ``dgr`` = ½β·σ(½βs) (= ∂L_DPO/∂s), ``g_win``, ``g_lose``, ``m_win``, ``m_lose``, ``ref_m_win``,
        ``ref_m_lose``, plus :meth:`RegionTerms.region_stats`. Scalars: ``implicit_acc``, ``loser_dominant`` =
        mean(g_w > 0 ∧ g_l > 0 ∧ s < 0), ``lose_clipped`` = mean(g_l > τ), ``win_gap_active`` = mean(g_w > 0),
        ``dpo_loss``, ``win_anchor_loss``, ``win_gap_loss``.
    """
    if not 0 < beta < float("inf"):
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    if not 0 < eps < float("inf"):
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    for name, value in (("lose_weight", lose_weight), ("win_anchor_weight", win_anchor_weight),
                        ("win_gap_weight", win_gap_weight)):
        if not 0 <= value < float("inf"):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    terms = RegionTerms.compute(noise, policy_win, policy_lose, ref_win, ref_lose, regions)
    weights = region_vector(region_weights, "region_weights", terms.gap_win)
    if not weights.sum() > 0:
        raise ValueError(f"region_weights must not all be zero, got {list(region_weights)}")

    # All weighted sums follow from the per-region sums because w is linear in the masks.
    total_weight = (terms.area @ weights).clamp_min(torch.finfo(weights.dtype).tiny)
    m_win = terms.sq_err_win @ weights / total_weight
    ref_m_win = terms.ref_sq_err_win @ weights / total_weight
    ref_m_lose = terms.ref_sq_err_lose @ weights / total_weight
    g_win = torch.log1p(terms.gap_win @ weights / total_weight / (ref_m_win + eps))
    g_lose = torch.log1p(terms.gap_lose @ weights / total_weight / (ref_m_lose + eps))
    clip = float("inf") if lose_clip is None else float(lose_clip)
    margin = g_win - lose_weight * g_lose.clamp(max=clip)
    logit = 0.5 * beta * margin
    dpo_per_pair = F.softplus(logit)
    anchor_per_pair = win_anchor_weight * m_win
    win_gap_per_pair = win_gap_weight * F.relu(g_win)
    loss = (dpo_per_pair + anchor_per_pair + win_gap_per_pair).mean()

    with torch.no_grad():
        margin, logit, g_win, g_lose = margin.detach(), logit.detach(), g_win.detach(), g_lose.detach()
        stats = {
            "s": margin,
            "logit": logit,
            "dgr": 0.5 * beta * torch.sigmoid(logit),
            "implicit_acc": implicit_accuracy(margin),
            "g_win": g_win,
            "reward_chosen": -0.5 * beta * g_win,  # the winner's implicit reward, in the logit's units
            "g_lose": g_lose,
            "m_win": m_win.detach(),
            "m_lose": terms.sq_err_lose @ weights / total_weight,
            "ref_m_win": ref_m_win,
            "ref_m_lose": ref_m_lose,
            "loser_dominant": ((g_win > 0) & (g_lose > 0) & (margin < 0)).float().mean(),
            "lose_clipped": (g_lose > clip).float().mean(),
            "win_gap_active": (g_win > 0).float().mean(),
            "dpo_loss": dpo_per_pair.detach().mean(),
            "win_anchor_loss": anchor_per_pair.detach().mean(),
            "win_gap_loss": win_gap_per_pair.detach().mean(),
        }
        stats.update(terms.region_stats())
    return loss, stats
