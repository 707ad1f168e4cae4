"""Evaluation results on disk, keyed by what determines them, so a re-run skips what exists.

Layout under ``root`` (``<output_dir>/results``)::

    <benchmark hash>/<method hash>/method.json                    who the method is (label, kind, identity)
    <benchmark hash>/<method hash>/predictions/<clip>.npz         raw prediction, uint8 (F,H,W,3), lossless
    <benchmark hash>/<method hash>/scores-<scoring hash>/<clip>.json   that clip's metrics

The method hash covers the weights' content and every knob that changes the output (seed included); the scoring
hash covers the metric settings. Predictions do not depend on scoring, so a new metric set re-scores the stored
predictions without running the model again; they also serve as another method's prior (ProPainter's output is
DiffuEraser's prior). Every file is written under a temporary name and renamed, so a killed run leaves no partial
file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ClipScores", "ResultCache"]


@dataclass
class ClipScores:
    """One clip's metrics (name → value; NaN allowed) and what it cost: inference seconds and the device used."""

    clip_id: str
    metrics: dict[str, float]
    seconds: float = 0.0
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))  # NaN/inf are written as JSON's NaN/Infinity tokens and read back

    @classmethod
    def from_json(cls, text: str) -> "ClipScores":
        return cls(**json.loads(text))


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ResultCache:
    """Reads and writes evaluation results under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def method_dir(self, benchmark_hash: str, method_hash: str) -> Path:
        return self.root / benchmark_hash / method_hash

    def write_method(self, benchmark_hash: str, method_hash: str, description: dict[str, Any]) -> None:
        """Record who produced the results (label, kind, identity) next to them."""
        text = json.dumps(description, indent=1, sort_keys=True, default=str)
        _atomic_write(self.method_dir(benchmark_hash, method_hash) / "method.json", lambda p: p.write_text(text))

    # predictions ------------------------------------------------------------------------------------------------

    def prediction_path(self, benchmark_hash: str, method_hash: str, clip_id: str) -> Path:
        return self.method_dir(benchmark_hash, method_hash) / "predictions" / f"{clip_id}.npz"

    def save_prediction(self, benchmark_hash: str, method_hash: str, clip_id: str, frames: np.ndarray) -> None:
        """Store a raw prediction, uint8 ``(F, H, W, 3)``."""
        def write(path: Path) -> None:
            with open(path, "wb") as handle:
                np.savez_compressed(handle, frames=frames)

        _atomic_write(self.prediction_path(benchmark_hash, method_hash, clip_id), write)

    def load_prediction(self, benchmark_hash: str, method_hash: str, clip_id: str) -> np.ndarray | None:
        """The stored raw prediction uint8 ``(F, H, W, 3)``, or None."""
        path = self.prediction_path(benchmark_hash, method_hash, clip_id)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return data["frames"]

    # scores -----------------------------------------------------------------------------------------------------

    def scores_dir(self, benchmark_hash: str, method_hash: str, scoring_hash: str) -> Path:
        return self.method_dir(benchmark_hash, method_hash) / f"scores-{scoring_hash}"

    def save_scores(self, benchmark_hash: str, method_hash: str, scoring_hash: str, scores: ClipScores) -> None:
        path = self.scores_dir(benchmark_hash, method_hash, scoring_hash) / f"{scores.clip_id}.json"
        text = scores.to_json()
        _atomic_write(path, lambda p: p.write_text(text))

    def load_scores(self, benchmark_hash: str, method_hash: str, scoring_hash: str,
                    clip_ids: list[str]) -> dict[str, ClipScores]:
        """The stored scores of those of ``clip_ids`` that have them (clip id → scores)."""
        folder = self.scores_dir(benchmark_hash, method_hash, scoring_hash)
        found = {}
        for clip_id in clip_ids:
            path = folder / f"{clip_id}.json"
            if path.is_file():
                found[clip_id] = ClipScores.from_json(path.read_text())
        return found
