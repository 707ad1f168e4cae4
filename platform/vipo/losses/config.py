"""Loss variants as config: a validated ``kind:`` picks the variant, and one call computes it.

YAML (a trainer config embeds this under e.g. ``loss:``)::

    loss:
      kind: region_reg_dpo        # or: log_ratio
      beta: 500
      alpha: [1.0, 1.5, 0.05]     # hole, boundary, context
      rho: [0.0, 0.0, 0.0]

The SFT-only control is ``alpha: [0, 0, 0]`` with a non-zero ``rho`` — a config, not a code path.
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence, Union

import torch
from pydantic import Field, model_validator

from vipo.config import Config
from vipo.losses.log_ratio_dpo import log_ratio_dpo_loss
from vipo.losses.region_dpo import region_reg_dpo_loss
from vipo.losses.weighting import min_snr_weight

__all__ = ["DPOLossConfig", "check_context_alpha", "LogRatioDPOLossConfig", "RegionRegDPOLossConfig",
           "compute_dpo_loss"]

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
RegionTriple = tuple[NonNegative, NonNegative, NonNegative]
"""One value per region, in the order (hole, boundary, context)."""

LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]


def check_context_alpha(alpha: Sequence[float]) -> None:
    """Refuse α_c = 0 next to a non-zero α_h or α_b: the context then takes no part in the preference at all (the
    seed roadmap's step-5 pitfall 3), so nothing holds the pixels around the hole to the winner. α ≡ 0 (the SFT-only
    control) has no preference term and is allowed."""
    if alpha[2] == 0 and any(a > 0 for a in alpha[:2]):
        raise ValueError(
            f"alpha {list(alpha)}: alpha_c = 0 leaves the context out of the DPO preference entirely; use "
            "alpha_c in 0.05-0.1, or alpha: [0, 0, 0] (with rho > 0) for the SFT-only control"
        )


class RegionRegDPOLossConfig(Config):
    """Region-Reg-DPO (:func:`region_reg_dpo_loss`). Defaults are the seed's round 1: pure region DPO, ρ = 0.

    The seed's later rounds add SFT anchors (ρ = 100 uniform, then ρ = (100, 200, 0)); α_c should stay > 0
    (0.05–0.1) so the context still takes part in the preference.
    """

    kind: Literal["region_reg_dpo"] = "region_reg_dpo"
    beta: Positive = Field(default=500.0, description="β′, diffusers convention; never multiplied by T")
    alpha: RegionTriple = (1.0, 1.5, 0.05)
    rho: RegionTriple = (0.0, 0.0, 0.0)
    timestep_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: Positive = Field(default=5.0, description="γ of min-SNR-γ; used when timestep_weighting=min_snr")

    @model_validator(mode="after")
    def _context_takes_part(self) -> "RegionRegDPOLossConfig":
        check_context_alpha(self.alpha)
        return self

    @property
    def has_dpo_term(self) -> bool:
        """False for the SFT-only control (α ≡ 0), whose preference margin is identically zero."""
        return any(a > 0 for a in self.alpha)

    def compute(
        self,
        noise: torch.Tensor,
        policy_win: torch.Tensor,
        policy_lose: torch.Tensor,
        ref_win: torch.Tensor,
        ref_lose: torch.Tensor,
        regions: Sequence[torch.Tensor],
        timesteps: torch.Tensor | None = None,
        alphas_cumprod: torch.Tensor | None = None,
    ) -> LossOutput:
        timestep_weight = None
        if self.timestep_weighting == "min_snr":
            if timesteps is None or alphas_cumprod is None:
                raise ValueError(
                    "loss.timestep_weighting=min_snr needs the per-pair timesteps and the scheduler's alphas_cumprod"
                )
            timestep_weight = min_snr_weight(timesteps, alphas_cumprod, self.min_snr_gamma)
        return region_reg_dpo_loss(
            noise, policy_win, policy_lose, ref_win, ref_lose, regions,
            alpha=self.alpha, rho=self.rho, beta=self.beta, timestep_weight=timestep_weight,
        )


class LogRatioDPOLossConfig(Config):
    """Log-ratio DPO (:func:`log_ratio_dpo_loss`). Defaults are the group's Exp11 recipe (practice.md §3)."""

    kind: Literal["log_ratio"] = "log_ratio"
    beta: Positive = Field(default=10.0, description="β in the official −½β convention")
    region_weights: RegionTriple = (1.0, 0.75, 0.05)
    lose_weight: NonNegative = 0.25
    lose_clip: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        default=1.0, description="τ on the loser log-ratio; null for no clip"
    )
    win_anchor_weight: NonNegative = 0.05
    win_gap_weight: NonNegative = 1.0
    eps: Positive = 1e-6

    @model_validator(mode="after")
    def _some_region_counts(self) -> "LogRatioDPOLossConfig":
        if sum(self.region_weights) <= 0:
            raise ValueError("region_weights must not all be zero")
        return self

    @property
    def has_dpo_term(self) -> bool:
        """Always True: the winner's log-ratio is in the logit whatever α_l is."""
        return True

    def compute(
        self,
        noise: torch.Tensor,
        policy_win: torch.Tensor,
        policy_lose: torch.Tensor,
        ref_win: torch.Tensor,
        ref_lose: torch.Tensor,
        regions: Sequence[torch.Tensor],
        timesteps: torch.Tensor | None = None,
        alphas_cumprod: torch.Tensor | None = None,
    ) -> LossOutput:
        # The recipe has no timestep weighting; the arguments are accepted so every variant has one signature.
        return log_ratio_dpo_loss(
            noise, policy_win, policy_lose, ref_win, ref_lose, regions,
            region_weights=self.region_weights, beta=self.beta, lose_weight=self.lose_weight,
            lose_clip=self.lose_clip, win_anchor_weight=self.win_anchor_weight,
            win_gap_weight=self.win_gap_weight, eps=self.eps,
        )


DPOLossConfig = Annotated[Union[RegionRegDPOLossConfig, LogRatioDPOLossConfig], Field(discriminator="kind")]
"""The loss node of a trainer config: a variant chosen by ``kind``."""


def compute_dpo_loss(
    config: RegionRegDPOLossConfig | LogRatioDPOLossConfig,
    noise: torch.Tensor,
    policy_win: torch.Tensor,
    policy_lose: torch.Tensor,
    ref_win: torch.Tensor,
    ref_lose: torch.Tensor,
    regions: Sequence[torch.Tensor],
    timesteps: torch.Tensor | None = None,
    alphas_cumprod: torch.Tensor | None = None,
) -> LossOutput:
    """The configured DPO loss ``(loss, stats)``; arguments as in :func:`region_reg_dpo_loss`.

    ``timesteps`` (B,) and ``alphas_cumprod`` (T,) are needed only for ``timestep_weighting: min_snr``.
    Every variant's stats include ``s``, ``logit``, ``dgr``, ``implicit_acc``, ``loser_dominant``, ``dpo_loss``
    and the per-region diagnostics, so a trainer logs them without knowing the variant.
    """
    return config.compute(noise, policy_win, policy_lose, ref_win, ref_lose, regions, timesteps, alphas_cumprod)
