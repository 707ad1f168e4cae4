"""``vipo train <config.yaml> [key=value ...]``: train one stage on Ray Train (the config's ``recipe:``).

Relaunching the same command resumes from the run's latest checkpoint (``output_dir/<name>``). On SIGTERM it
checkpoints at the next step boundary and exits 75 (143 when that takes longer than
``failure.preemption_grace_s``); see :mod:`vipo.train.preemption`. The validation gate's scorer is evaluation's
:class:`~evaluation.scorer.Scorer`, built here from ``validation.scoring`` and injected into the run: ``vipo``
sits below ``evaluation`` and cannot import its metrics. Likewise the checkpoint evaluation (``evaluation:``,
:mod:`evaluation.checkpoints`) enters the run as a Ray Train callback built here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vipo.config import validate_config
from vipo.train.config import TrainConfig, load_train_config

if TYPE_CHECKING:
    from evaluation.scorer import Scorer

# evaluation, the recipes and Ray are imported only once the train config is valid: a wrong key is reported in
# seconds, not after the ~30 s diffusers, transformers and peft take to import.


def validation_scorer(cfg: TrainConfig, source: str = "<train config>") -> Scorer | None:
    """evaluation's scorer for ``cfg.validation.scoring`` (None when validation is off or the recipe scores its own
    validation); a bad key or missing LPIPS / RAFT weights is a one-line error here, before any worker starts."""
    from evaluation.scorer import Scorer
    from evaluation.scoring import ScoringConfig
    from vipo.train.recipes import get_recipe

    if cfg.validation.every_n_steps is None or not getattr(get_recipe(cfg.recipe), "uses_validation_gate", False):
        return None
    settings = validate_config(ScoringConfig, cfg.validation.scoring, f"{source} validation.scoring")
    settings.identity()
    return Scorer(settings)


def run(config_path: str | Path, overrides: list[str]) -> None:
    """Validate the config (one-line ``ConfigError`` on any problem), then build the trainer and fit."""
    cfg = load_train_config(config_path, overrides)
    from evaluation.checkpoints import evaluating_checkpoints, plan_checkpoint_evaluation
    from vipo.tracking import read_run_id, resolve_tracking_uri
    from vipo.train.preemption import EXIT_PREEMPTED, EXIT_PREEMPTION_TIMEOUT, Preempted, PreemptionTimeout
    from vipo.train.runner import fit

    scorer = validation_scorer(cfg, str(config_path))
    checkpoint_evaluation = plan_checkpoint_evaluation(cfg, str(config_path))

    print(f"run folder: {cfg.run_dir}  (relaunch the same command to resume)")
    try:
        with evaluating_checkpoints(checkpoint_evaluation) as callbacks:
            result = fit(cfg, callbacks, scorer)
    except Preempted as stopped:
        print(stopped, file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    except PreemptionTimeout as late:
        print(late, file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTION_TIMEOUT) from None
    if cfg.tracking.enabled:
        tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.output_dir)
        print(f"MLflow: {tracking_uri}  experiment {cfg.tracking.experiment!r}, run "
              f"{cfg.tracking.run_name or cfg.run_name!r} (id {read_run_id(cfg.run_dir)})")
    if result.checkpoint is not None:
        print(f"latest checkpoint: {result.checkpoint.path}")
    exports = sorted((cfg.run_dir / "export").glob("step_*")) if cfg.export_on_finish else []
    if exports:
        print(f"exported model: {exports[-1]}")


if __name__ == "__main__":
    from jobs.cli import app

    app(["train", *sys.argv[1:]])
