"""Staged Ray Tune search: a base training config plus rounds of search spaces over dotted keys.

The roadmap tunes Region-Reg-DPO in strict order (round 1: pure region DPO, ρ = 0; round 2: uniform ρ; round 3:
per-region ρ; round 4: α_b/ρ_b balance). Each round searches its own keys with everything earlier fixed at the
previous round's best, so a round is a config block, not a script.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from vipo.config import Config, ExistingPath, JobConfig

__all__ = ["ChoiceDim", "GridDim", "LogUniformDim", "RoundConfig", "SchedulerConfig", "TuneConfig", "UniformDim"]


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


class TuneConfig(JobConfig):
    """``base_config`` is a training YAML (any recipe); trials apply ``base_overrides``, then the earlier rounds'
    best values, then the round's ``fixed`` and sampled keys. ``metric`` is a key the recipe reports."""

    name: str = Field(default="tune", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base_config: ExistingPath
    base_overrides: list[str] = Field(default_factory=list)
    metric: str
    mode: Literal["min", "max"] = "min"
    max_concurrent_trials: int = Field(default=1, ge=1)
    rounds: list[RoundConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_rounds(self) -> "TuneConfig":
        names = [r.name for r in self.rounds]
        if len(set(names)) != len(names):
            raise ValueError("round names must be unique")
        return self
