"""Staged Ray Tune search: a base training config plus rounds of search spaces over dotted keys.

The roadmap tunes Region-Reg-DPO in strict order (round 1: pure region DPO, ρ = 0; round 2: uniform ρ; round 3:
per-region ρ; round 4: α_b/ρ_b balance). Each round searches its own keys with everything earlier fixed at the
previous round's best, so a round is a config block, not a script.

Trials are ranked on ``metric``, by default the validation gate's paired delta of masked LPIPS against the
reference (``val/delta_lpips_hole``, lower is better; see :mod:`vipo.train.validation`): unlike the training loss it
is comparable across β, ρ and α. Round ``sft_control_round`` also runs the SFT-only control; after the last round,
``confirm`` re-runs the top configs with fresh seeds and picks the winner by its bootstrap interval.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from vipo.config import Config, ExistingPath, JobConfig
from vipo.losses import check_context_alpha

__all__ = [
    "ChoiceDim",
    "ConfirmConfig",
    "GridDim",
    "LogUniformDim",
    "RoundConfig",
    "SchedulerConfig",
    "TuneConfig",
    "UniformDim",
]


class GridDim(Config):
    """Every value is tried (a grid multiplies ``num_samples``)."""

    kind: Literal["grid"] = "grid"
    values: list[Any] = Field(min_length=1)


class ChoiceDim(Config):
    """One value drawn at random per sample."""

    kind: Literal["choice"]
    values: list[Any] = Field(min_length=1)


class UniformDim(Config):
    kind: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> "UniformDim":
        if not self.low < self.high:
            raise ValueError("low must be < high")
        return self


class LogUniformDim(UniformDim):
    kind: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self) -> "LogUniformDim":
        if self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


SearchDim = Annotated[Union[GridDim, ChoiceDim, UniformDim, LogUniformDim], Field(discriminator="kind")]


class SchedulerConfig(Config):
    """``asha`` stops weak trials early on ``metric``, judged at each training report (checkpoint)."""

    kind: Literal["fifo", "asha"] = "fifo"
    max_t: int = Field(default=100, ge=1)
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=4, gt=1)


class RoundConfig(Config):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    space: dict[str, SearchDim] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict, description="Dotted keys set for this round only.")
    num_samples: int = Field(default=1, ge=1)
    scheduler: SchedulerConfig = SchedulerConfig()

    @model_validator(mode="after")
    def _disjoint(self) -> "RoundConfig":
        both = set(self.space) & set(self.fixed)
        if both:
            raise ValueError(f"keys both searched and fixed: {', '.join(sorted(both))}")
        return self

    @model_validator(mode="after")
    def _context_alpha(self) -> "RoundConfig":
        # A trial would refuse the same α at its config load; say it here, before any trial starts.
        dim = self.space.get("loss.alpha")
        candidates = [*getattr(dim, "values", []), *([self.fixed["loss.alpha"]] if "loss.alpha" in self.fixed else [])]
        for alpha in candidates:
            if isinstance(alpha, (list, tuple)) and len(alpha) == 3:
                check_context_alpha(alpha)
        return self


class ConfirmConfig(Config):
    """After the last round: its ``top_k`` healthy configs are re-run with ``num_seeds`` fresh seeds each; the
    winner is the one whose bootstrap interval (over seeds × validation clips of the per-clip objective deltas)
    lies furthest on the good side. ``top_k: 0`` skips confirmation."""

    top_k: int = Field(default=2, ge=0)
    num_seeds: int = Field(default=3, ge=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    bootstrap_samples: int = Field(default=2000, ge=100)


class TuneConfig(JobConfig):
    """``base_config`` is a training YAML (any recipe); trials apply ``base_overrides``, then the earlier rounds'
    best values, then the round's ``fixed`` and sampled keys. ``metric`` is a key the recipe reports (its per-clip
    values ``<metric>/<clip>``, when reported, feed the confirmation's intervals).

    ``sft_control_round`` (1-based; null: none) also trains the SFT-only control after that round's search: the
    round's best config with ``loss.alpha: [0, 0, 0]`` (its ρ must be > 0), so the record says whether the
    preference term beats plain region SFT. Trials the DPO health monitor flags are stopped and never chosen."""

    name: str = Field(default="tune", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base_config: ExistingPath
    base_overrides: list[str] = Field(default_factory=list)
    metric: str = "val/delta_lpips_hole"
    mode: Literal["min", "max"] = "min"
    max_concurrent_trials: int = Field(default=1, ge=1)
    rounds: list[RoundConfig] = Field(min_length=1)
    sft_control_round: int | None = Field(default=2, ge=1)
    confirm: ConfirmConfig = ConfirmConfig()

    @model_validator(mode="after")
    def _unique_rounds(self) -> "TuneConfig":
        names = [r.name for r in self.rounds]
        if len(set(names)) != len(names):
            raise ValueError("round names must be unique")
        if self.metric == "loss" and any("loss.beta" in r.space for r in self.rounds):
            raise ValueError("metric: loss cannot rank a search over loss.beta: softplus(beta*s) shrinks as beta grows "
                             "for the same preference, so the lowest loss is the largest beta, not the best model; "
                             "use a validation delta such as val/delta_lpips_hole")
        rho = self.control_round.fixed.get("loss.rho") if self.control_round else None
        if isinstance(rho, (list, tuple)) and not any(r > 0 for r in rho):
            raise ValueError(f"sft_control_round {self.sft_control_round}: the SFT-only control (alpha = 0) needs "
                             f"rho > 0, but that round fixes loss.rho {list(rho)}; pick a round with an SFT anchor")
        return self

    @property
    def control_round(self) -> RoundConfig | None:
        """The round that also runs the SFT-only control (None when off or when there are fewer rounds)."""
        index = self.sft_control_round
        return self.rounds[index - 1] if index is not None and index <= len(self.rounds) else None
