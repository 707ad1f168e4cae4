"""Candidate negatives: hard compositing, cheap scores against the ground truth, the quality gate and the band.

Every candidate is scored on its hard composite (prediction inside the hole, ground truth outside) against the
ground truth over the hole. Scoring is injected (:class:`Scorer`): ``vipo`` does not import ``evaluation``; the
job passes a scorer built on ``evaluation.metrics``. Two rules then decide what becomes a training pair:

* the quality gate flags a candidate whose hole PSNR exceeds ``max_psnr`` as ``too_close_to_gt`` (the roadmap's
  "negatives too good" trap: a loser the model cannot tell from the winner teaches nothing) and, by default,
  keeps it out of the pairs;
* the quality band keeps candidates whose ``score`` lies in ``[low, high]`` and, per kind and hole, selects the
  one closest to ``target`` (the group's v1 data used an LPIPS-like band 0.30-0.65 with target 0.45: hard but
  plausible losers, not the absolute worst). Without a band every unflagged candidate is in band and the first
  seed's is selected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import Field, model_validator

from vipo.config import Config

__all__ = ["TOO_CLOSE", "OUT_OF_BAND", "Candidate", "QualityBand", "QualityGate", "Scorer", "hard_composite", "judge"]

TOO_CLOSE = "too_close_to_gt"
OUT_OF_BAND = "out_of_band"


class Scorer(Protocol):
    """Scores candidates against the ground truth over the hole; must be picklable (it travels to actors).

    ``__call__(preds, target, hole)``: preds uint8 (N,F,H,W,3), target uint8 (F,H,W,3), hole bool (F,H,W) True =
    hole → ``{score name: float array (N,)}``, including ``psnr`` (dB, for the gate) and the band's score.
    ``describe()`` says what the scores are (e.g. the LPIPS backbone), for the manifest and the run's tags.
    """

    def __call__(self, preds: np.ndarray, target: np.ndarray, hole: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, str]: ...


class QualityGate(Config):
    """Flag negatives whose hole PSNR vs the ground truth is above ``max_psnr`` dB (too close to be a loser)."""

    max_psnr: float = 40.0
    exclude_flagged: bool = True
    """Keep flagged candidates out of the training pairs (they stay, scored and flagged, in the manifest)."""


class QualityBand(Config):
    """Keep candidates whose ``score`` lies in ``[low, high]``; select the one closest to ``target``."""

    score: str = "lpips"
    low: float = 0.0
    high: float = Field(default=float("inf"))
    target: float | None = None
    """Default: the middle of a finite band, ``low`` otherwise."""

    @model_validator(mode="after")
    def _ordered(self) -> "QualityBand":
        if self.low > self.high:
            raise ValueError(f"quality band low {self.low} is above high {self.high}")
        if self.target is not None and not self.low <= self.target <= self.high:
            raise ValueError(f"quality band target {self.target} is outside [{self.low}, {self.high}]")
        return self

    def aim(self) -> float:
        if self.target is not None:
            return self.target
        return (self.low + self.high) / 2 if np.isfinite(self.high) else self.low


def hard_composite(frames: np.ndarray, prediction: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Prediction inside the hole, ground truth outside: uint8 (F,H,W,3) from (F,H,W,3) ×2 and bool (F,H,W)."""
    return np.where(hole[..., None], prediction, frames)


@dataclass
class Candidate:
    """One scored negative: its kind name, seed, raw output and composite (uint8 (F,H,W,3)), what it was
    conditioned on, its scores, flags and whether it was selected as a training pair."""

    kind: str
    seed: int
    raw: np.ndarray
    composite: np.ndarray
    prior: str = "none"
    meta: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    selected: bool = False

    def record(self) -> dict[str, Any]:
        """The manifest entry (everything but the frames)."""
        return {"kind": self.kind, "seed": self.seed, "prior": self.prior, "scores": self.scores,
                "flags": self.flags, "selected": self.selected}


def judge(candidates: list[Candidate], band: QualityBand | None, gate: QualityGate) -> None:
    """Set ``flags`` and ``selected`` on scored candidates: at most one selected per kind."""
    by_kind: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        if candidate.scores["psnr"] > gate.max_psnr:
            candidate.flags.append(TOO_CLOSE)
        if band is not None:
            if band.score not in candidate.scores:
                raise KeyError(f"quality band score {band.score!r} not produced by the scorer "
                               f"(it gives {sorted(candidate.scores)})")
            if not band.low <= candidate.scores[band.score] <= band.high:
                candidate.flags.append(OUT_OF_BAND)
        eligible = OUT_OF_BAND not in candidate.flags and not (gate.exclude_flagged and TOO_CLOSE in candidate.flags)
        if eligible:
            by_kind.setdefault(candidate.kind, []).append(candidate)
    for eligible in by_kind.values():
        if band is None:
            eligible[0].selected = True
        else:
            min(eligible, key=lambda c: abs(c.scores[band.score] - band.aim())).selected = True
