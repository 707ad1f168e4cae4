"""A method's results on a benchmark: per-clip scores plus where they came from (cache folder, MLflow run)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.cache import ClipScores
from evaluation.metrics.vfid import vfid

__all__ = ["MethodResult"]


@dataclass
class MethodResult:
    """``scores`` maps clip id → :class:`ClipScores`; ``predictions_dir`` holds ``<clip>.npz`` raw predictions
    (None when not reachable from here, e.g. a remote run)."""

    label: str
    kind: str
    method_hash: str
    checkpoint_hash: str
    scores: dict[str, ClipScores]
    predictions_dir: Path | None = None
    run_id: str | None = None

    def values(self, metric: str, clip_ids: list[str]) -> np.ndarray:
        """``(len(clip_ids),)`` values of ``metric`` (NaN where a clip lacks it)."""
        return np.array([self.scores[c].metrics.get(metric, math.nan) if c in self.scores else math.nan
                         for c in clip_ids], dtype=np.float64)

    def means(self, metrics: list[str], clip_ids: list[str] | None = None) -> dict[str, float]:
        """Mean over ``clip_ids`` (default: all scored clips) of each metric, ignoring NaN and inf (NaN when no
        clip has a finite value). ``vfid`` is the one distance over those clips' stored I3D features."""
        clip_ids = list(self.scores) if clip_ids is None else clip_ids
        means = {}
        for metric in metrics:
            if metric == "vfid":
                means[metric] = self.vfid(clip_ids)
                continue
            values = self.values(metric, clip_ids)
            values = values[np.isfinite(values)]
            means[metric] = float(values.mean()) if len(values) else math.nan
        return means

    def vfid(self, clip_ids: list[str]) -> float:
        """VFID over ``clip_ids`` from the I3D features stored with their scores (NaN with fewer than 2 such clips)."""
        stored = [self.scores[c].info for c in clip_ids if c in self.scores and "i3d_fake" in self.scores[c].info]
        if len(stored) < 2:
            return math.nan
        return vfid(np.array([info["i3d_real"] for info in stored]), np.array([info["i3d_fake"] for info in stored]))

    def timing(self) -> dict[str, float]:
        """Inference seconds per clip and frames per second, over the clips this run inferred (NaN if none)."""
        timed = [s for s in self.scores.values() if math.isfinite(s.seconds) and s.seconds > 0]
        seconds = sum(s.seconds for s in timed)
        frames = sum(int(s.info.get("frames", 0)) for s in timed)
        return {"seconds_per_clip": seconds / len(timed) if timed else math.nan,
                "frames_per_second": frames / seconds if seconds > 0 else math.nan}

    def to_csv(self, metrics: list[str]) -> str:
        """One row per clip: ``clip_id``, each per-clip metric, ``seconds``, ``device``."""
        metrics = [m for m in metrics if m != "vfid"]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["clip_id", *metrics, "seconds", "device"])
        for clip_id, scores in self.scores.items():
            writer.writerow([clip_id, *(scores.metrics.get(m, math.nan) for m in metrics), scores.seconds,
                             scores.device])
        return buffer.getvalue()

    def to_json(self) -> str:
        return json.dumps([json.loads(s.to_json()) for s in self.scores.values()])

    @staticmethod
    def scores_from_json(text: str) -> dict[str, ClipScores]:
        return {row["clip_id"]: ClipScores(**row) for row in json.loads(text)}
