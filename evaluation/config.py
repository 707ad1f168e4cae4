"""Evaluation job configs: ``vipo evaluate cfg.yaml`` (:class:`EvaluateConfig`) and ``vipo evaluate compare``
(:class:`CompareConfig`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from evaluation.benchmark import BenchmarkConfig
from evaluation.methods import MethodSpec
from evaluation.scoring import ScoringConfig
from vipo.config import Config, JobConfig, TrackingConfig
from vipo.storage import resolve_output_path

__all__ = ["CompareConfig", "EvaluateConfig", "ReportConfig"]


class ReportConfig(Config):
    """What the comparison report shows."""

    bootstrap_samples: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    scatter_metrics: list[str] = Field(default_factory=lambda: ["psnr", "psnr_hole"])
    """Metrics of the per-clip scatter plots (baseline vs each candidate); those not scored are skipped."""
    strip_frames: int = Field(default=4, ge=1)
    """Frames (evenly spaced) in each clip's PNG strip; the GIF shows every frame."""
    max_strip_clips: int | None = Field(default=None, ge=1)
    """Side-by-side strips for at most this many clips (default: all)."""
    gif_max_width: int = Field(default=1280, ge=64)
    """The GIF strips are shrunk to at most this width (px)."""


MethodLabel = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]  # also an MLflow metric-name part


class EvaluateConfig(JobConfig):
    """A benchmark, the methods to score on it (label → method config, so ``methods.<label>.<key>=value``
    overrides work), the metrics and the report.

    ``baseline`` is the label of the method every other one is compared with (default: the first).
    ``reuse_cache: false`` runs every method again even when its results are stored (a noise check).
    """

    benchmark: BenchmarkConfig
    methods: dict[MethodLabel, MethodSpec] = Field(min_length=1)
    baseline: str | None = None
    scoring: ScoringConfig = ScoringConfig()
    report: ReportConfig = ReportConfig()
    reuse_cache: bool = True

    @model_validator(mode="after")
    def _known_baseline(self) -> "EvaluateConfig":
        if self.baseline is not None and self.baseline not in self.methods:
            raise ValueError(f"baseline {self.baseline!r} is not one of the methods {list(self.methods)}")
        return self

    @property
    def baseline_label(self) -> str:
        return self.baseline or next(iter(self.methods))


def _resolve(path: Path | None) -> Path | None:
    return None if path is None else resolve_output_path(path)


class CompareConfig(Config):
    """Render the report of a benchmark from MLflow: ``vipo evaluate compare --benchmark NAME [--output-dir D]``.

    Runs are looked up by benchmark name or hash in ``tracking`` (default: ``MLFLOW_TRACKING_URI``, else the
    sqlite database of ``output_dir``). The report goes to ``<output_dir>/reports/``.
    """

    benchmark: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    output_dir: Annotated[Path | None, AfterValidator(_resolve)] = None
    baseline: str | None = None
    """Label of the baseline method (default: the baseline of the latest evaluation of this benchmark)."""
    seed: int = Field(default=0, ge=0)
    tracking: TrackingConfig = TrackingConfig()
    report: ReportConfig = ReportConfig()
