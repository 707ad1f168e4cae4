"""The validation gate: fixed held-out clips inpainted by the current weights and judged against the start weights.

Every validation inpaints the same clips with the same holes, seed and initial noise (``ValidationClips``). The
outputs of the weights the run starts from (the stage-3 parent, the stage-1/2 starting weights) are kept as the
reference, scored once at step 0 and stored in every checkpoint, so a resumed run compares against the same
numbers. Each later validation reports, per metric ``m``:

- ``val/<m>``: the policy's mean over clips;
- ``val/delta_<m>``: the mean paired delta policy − reference over clips (the same clips, seed and noise, so the
  delta is comparable across β, ρ and α, unlike the training loss);
- ``val/delta_<m>/<clip>``: the per-clip deltas, for bootstrap intervals downstream (Tune confirmation);

plus one strip per clip (rows: ground truth | holed input | reference | policy, hard-composited).

The metrics live in the ``evaluation`` package, a layer above ``vipo``, so they are injected: a
:class:`ClipScorer` (evaluation's ``Scorer`` is one) is built by the jobs layer and handed to
``vipo.train.runner.fit``; Ray ships it to the workers with the training function. Without a scorer the gate
still logs the strips, and reports no scores.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vipo.generate.candidates import hard_composite
from vipo.train.checkpointing import atomic_save

__all__ = ["REFERENCE_FILE", "ClipScorer", "ValidationGate", "delta_key"]

REFERENCE_FILE = "validation_reference.pt"


class ClipScorer(Protocol):
    """Scores one clip's raw prediction against its ground truth (``evaluation.scorer.Scorer`` is one)."""

    def setup(self, device: str | torch.device) -> "ClipScorer":
        """Build the networks (LPIPS, flow) on ``device``, once per worker."""

    def score(self, frames: np.ndarray, hole: np.ndarray,
              prediction: np.ndarray) -> tuple[dict[str, float], dict[str, list[float]]]:
        """uint8 (F, H, W, 3) ground truth, bool (F, H, W) hole, uint8 (F, H, W, 3) raw prediction → (name → value,
        per-clip feature vectors for set-level metrics such as VFID); only the prediction's hole pixels count: the
        scorer composites."""


def delta_key(metric: str, clip: str | None = None) -> str:
    """The report key of the policy − reference delta of ``metric`` (per clip when ``clip`` is given)."""
    return f"val/delta_{metric}" if clip is None else f"val/delta_{metric}/{clip}"


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


class ValidationGate:
    """Judges inpainted validation clips against the reference outputs.

    ``clips``: name → (uint8 (F, H, W, 3) ground truth, bool (F, H, W) hole). ``scorer`` must already be set up.
    """

    def __init__(self, clips: dict[str, tuple[np.ndarray, np.ndarray]], scorer: ClipScorer | None):
        self.clips, self.scorer = clips, scorer
        self.reference: dict[str, np.ndarray] | None = None  # name → raw reference output
        self.reference_scores: dict[str, dict[str, float]] = {}

    def _scores(self, outputs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        if self.scorer is None:
            return {}
        return {name: self.scorer.score(*self.clips[name], outputs[name])[0] for name in self.clips}

    def set_reference(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Keep the start weights' ``outputs`` (name → raw uint8 frames) as the reference; → ``val/ref_<m>``
        means (empty without a scorer)."""
        self.reference = {name: outputs[name] for name in self.clips}
        self.reference_scores = self._scores(outputs)
        metrics = sorted({m for scores in self.reference_scores.values() for m in scores})
        return {f"val/ref_{m}": _finite_mean([s[m] for s in self.reference_scores.values()]) for m in metrics}

    def judge(self, outputs: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """The policy's ``outputs`` → (report metrics, strips name → uint8 (F, 4H, W, 3)); see the module doc."""
        scores = self._scores(outputs)
        report: dict[str, float] = {}
        for metric in sorted({m for clip in scores.values() for m in clip}):
            report[f"val/{metric}"] = _finite_mean([clip[metric] for clip in scores.values()])
            if not self.reference_scores:
                continue
            deltas = {name: scores[name][metric] - self.reference_scores[name][metric] for name in scores}
            report[delta_key(metric)] = _finite_mean(list(deltas.values()))
            report.update({delta_key(metric, name): delta for name, delta in deltas.items()})
        strips = {}
        for name, (frames, hole) in self.clips.items():
            rows = [frames, frames * ~hole[..., None]]
            if self.reference is not None:
                rows.append(hard_composite(frames, self.reference[name], hole))
            rows.append(hard_composite(frames, outputs[name], hole))
            strips[name] = np.concatenate(rows, axis=1)
        return report, strips

    def save(self, directory: Path) -> None:
        """Store the reference in a checkpoint folder (nothing before it exists)."""
        if self.reference is not None:
            atomic_save({"outputs": self.reference, "scores": self.reference_scores}, Path(directory) / REFERENCE_FILE)

    def load(self, directory: Path) -> bool:
        """Restore the reference from a checkpoint folder; False when it holds none."""
        path = Path(directory) / REFERENCE_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.reference, self.reference_scores = state["outputs"], state["scores"]
        return True
