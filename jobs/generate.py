"""``vipo generate cfg.yaml [key=value ...] [--resume] [--retry-skipped] [--overwrite]``: preference shards on Ray Data.

Scores come from ``evaluation.metrics`` (masked PSNR and masked LPIPS over the hole), which ``vipo`` may not
import; this job builds the scorer and hands it to :func:`vipo.generate.generate`. Which LPIPS backbone scored
the run is written to the shards' ``generation.json``, the summary and the MLflow tags
(``vipo.generate.scorer.lpips``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from vipo.config import Config, ExistingPath, load_config
from vipo.generate import GenerateConfig, generate
from vipo.tracking import build_logger

__all__ = ["GenerateJobConfig", "HoleScorer", "ScoringConfig", "run"]


class ScoringConfig(Config):
    """How candidates are scored against the ground truth over the hole."""

    lpips_net: Literal["alex", "vgg"] = "alex"
    lpips_backbone_weights: ExistingPath | None = None
    """torchvision ImageNet weights of the LPIPS trunk; default: the torch hub cache."""
    allow_random_lpips_backbone: bool = False
    """Demos and tests on machines without the trunk's weights: score with a random trunk (not LPIPS; recorded)."""


LPIPS_MIN_SIZE = 32
"""AlexNet's pooling leaves nothing of frames smaller than this: LPIPS cannot score them."""


class GenerateJobConfig(GenerateConfig):
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    @model_validator(mode="after")
    def _scorable(self) -> "GenerateJobConfig":
        if min(self.sampling.size) < LPIPS_MIN_SIZE:
            raise ValueError(f"sampling.resolution: LPIPS scoring needs frames of at least {LPIPS_MIN_SIZE} px, "
                             f"got {self.sampling.size}")
        return self


@dataclass(frozen=True)
class HoleScorer:
    """Hole PSNR (dB) and hole LPIPS of candidates vs the ground truth; picklable, nets built where it runs."""

    lpips_net: str = "alex"
    lpips_backbone_weights: str | None = None
    allow_random_lpips_backbone: bool = False

    @classmethod
    def from_config(cls, config: ScoringConfig) -> "HoleScorer":
        weights = None if config.lpips_backbone_weights is None else str(config.lpips_backbone_weights)
        return cls(config.lpips_net, weights, config.allow_random_lpips_backbone)

    def __call__(self, preds: np.ndarray, target: np.ndarray, hole: np.ndarray) -> dict[str, np.ndarray]:
        """preds uint8 (N,F,H,W,3), target uint8 (F,H,W,3), hole bool (F,H,W) → {"psnr", "lpips"}: (N,) each."""
        from evaluation.metrics import get_lpips, masked_lpips, masked_psnr, to_video_tensor

        device = "cuda" if torch.cuda.is_available() else "cpu"
        pred = to_video_tensor(preds, device)
        truth = to_video_tensor(np.repeat(target[None], len(preds), axis=0), device)
        mask = torch.from_numpy(np.repeat(hole[None], len(preds), axis=0))
        with torch.random.fork_rng(devices=[]):
            # A random trunk (allowed for demos/tests) must be the same in every actor and every run.
            torch.manual_seed(0)
            net = get_lpips(self.lpips_net, self.lpips_backbone_weights, self.allow_random_lpips_backbone)
        return {
            "psnr": masked_psnr(pred, truth, mask).cpu().numpy(),
            "lpips": masked_lpips(pred, truth, mask, net=net).cpu().numpy(),
        }

    def describe(self) -> dict[str, str]:
        """What the scores are, including where the LPIPS trunk comes from (or that it is random)."""
        from evaluation.metrics import backbone_checkpoint_name

        cached = Path(torch.hub.get_dir()) / "checkpoints" / backbone_checkpoint_name(self.lpips_net)
        if self.lpips_backbone_weights is not None:
            trunk = self.lpips_backbone_weights
        elif cached.is_file():
            trunk = str(cached)
        else:
            trunk = "RANDOM (not the LPIPS metric)" if self.allow_random_lpips_backbone else f"missing {cached}"
        return {"psnr": "masked_psnr over the hole (dB)",
                "lpips": f"masked_lpips over the hole, {self.lpips_net} trunk: {trunk}"}


def run(config_path: str | Path | None, overrides: list[str], resume: bool = False, overwrite: bool = False,
        retry_skipped: bool = False) -> dict:
    """Load the config, build the scorer and the MLflow logger, generate; return the run's summary."""
    config = load_config(GenerateJobConfig, config_path, overrides)
    scorer = HoleScorer.from_config(config.scoring)
    summary = generate(
        config, scorer, resume=resume, overwrite=overwrite, retry_skipped=retry_skipped,
        logger_factory=lambda: build_logger(config.tracking, config.output_dir, f"generate-{config.content_hash()}",
                                            resume=resume or retry_skipped),
    )
    written, skipped = summary["samples_written"], summary["samples_skipped"]
    print(f"generate: {written} samples written, {skipped} skipped {summary['skipped_by_reason']}, "
          f"{summary['clips_per_minute']:.2f} clips/min -> {summary['shards']}")
    return summary


if __name__ == "__main__":
    from jobs.cli import app

    app(["generate", *sys.argv[1:]])
