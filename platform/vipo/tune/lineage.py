"""MLflow lineage of a staged search: one parent run per sweep, a child run per round, a grandchild per trial.

All of them log to the URI the sweep was launched with, passed to every trial explicitly. A trial's training run
lives in ``<output_dir>/<sweep>/trials/<round>/<trial id>/<run name>`` (not in Ray's session temp dir), named
``<sweep>-<round>-<short params>``; that name is also its Tune trial name and its Ray Train run name, so the
dashboard, the folders and MLflow agree. Each run's id is kept in its folder (``mlflow_run.json``), so a rerun of
the sweep reattaches to the same parent and round runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from vipo.tracking import MLflowLogger, RunLogger, build_logger, launch_tracking_uri, read_run_id, run_identity
from vipo.train.checkpointing import list_checkpoints
from vipo.tune.config import RoundConfig, TuneConfig

__all__ = ["BEST_TAG", "best_trial_record", "open_round_run", "open_sweep_run", "short_params", "sweep_dir",
           "trial_lineage_overrides", "trial_output_dir", "trial_run_name"]

BEST_TAG = "vipo.tune.best"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sweep_dir(cfg: TuneConfig) -> Path:
    return cfg.output_dir / cfg.name


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}".replace("+", "")  # 1e+07 → 1e07: run names become folder names
    if isinstance(value, (list, tuple)):
        return "_".join(_short(v) for v in value)
    return _UNSAFE.sub("_", str(value))


def short_params(searched: Mapping[str, Any]) -> str:
    """``{"loss.beta": 500.0, "optim.lr": 1e-4}`` → ``beta_500-lr_0.0001`` (last key part, value; folder-safe)."""
    return "-".join(f"{key.rsplit('.', 1)[-1]}_{_short(value)}" for key, value in sorted(searched.items()))


def trial_run_name(sweep: str, round_name: str, searched: Mapping[str, Any]) -> str:
    return "-".join(part for part in (sweep, round_name, short_params(searched)) if part)


def trial_output_dir(cfg: TuneConfig, round_name: str, trial_id: str) -> Path:
    return sweep_dir(cfg) / "trials" / round_name / trial_id


def trial_lineage_overrides(cfg: TuneConfig, round_name: str, searched: Mapping[str, Any], trial_id: str,
                            parent_run_id: str | None) -> list[str]:
    """The overrides that place a trial's training run: its folder, name, tracking URI and parent round run."""
    overrides = [f"output_dir={trial_output_dir(cfg, round_name, trial_id)}",
                 f"name={trial_run_name(cfg.name, round_name, searched)}", "tracking.run_name=null"]
    tracking_uri = launch_tracking_uri(cfg.tracking, cfg.output_dir)
    if tracking_uri is None:
        return [*overrides, "tracking.enabled=false"]
    overrides += [f"tracking.tracking_uri={tracking_uri}", f"tracking.experiment={cfg.tracking.experiment}"]
    if parent_run_id:
        overrides.append(f"tracking.parent_run_id={parent_run_id}")
    return overrides


def open_sweep_run(cfg: TuneConfig) -> RunLogger:
    """The sweep's parent run (reopened when the sweep folder already records one), config and identity logged."""
    logger = build_logger(cfg.tracking, cfg.output_dir, cfg.name, run_folder=sweep_dir(cfg), resume=True)
    logger.log_config(cfg, run_identity(cfg))
    return logger


def open_round_run(cfg: TuneConfig, round_cfg: RoundConfig, sweep_run: RunLogger) -> RunLogger:
    """The round's run, a child of the sweep run (reopened when the round folder records one), carrying the sweep's
    config and identity like every run, and its own round config."""
    tracking = cfg.tracking.model_copy(update={"run_name": None, "parent_run_id": sweep_run.run_id})
    logger = build_logger(tracking, cfg.output_dir, f"{cfg.name}-{round_cfg.name}",
                          run_folder=sweep_dir(cfg) / round_cfg.name, resume=True,
                          tags={"vipo.tune.round": round_cfg.name})
    logger.log_config(cfg, run_identity(cfg))
    logger.log_text(json.dumps(round_cfg.model_dump(mode="json"), indent=2), "round.json")
    return logger


def best_trial_record(cfg: TuneConfig, round_cfg: RoundConfig, searched: Mapping[str, Any], trial_id: str,
                      round_run: RunLogger, tune_checkpoint: str | None) -> dict[str, str | None]:
    """Name the best trial's latest training checkpoint (relative to the sweep folder, so the record survives a
    move) and its MLflow run, and tag that run as the round's best."""
    run_dir = trial_output_dir(cfg, round_cfg.name, trial_id) / trial_run_name(cfg.name, round_cfg.name, searched)
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        checkpoint: str | None = str(checkpoints[max(checkpoints)].relative_to(sweep_dir(cfg)))
    else:  # a trainable that is not a training run may still hand Tune a checkpoint
        checkpoint = tune_checkpoint
    run_id = read_run_id(run_dir) if run_dir.is_dir() else None
    if run_id is not None and isinstance(round_run, MLflowLogger):
        round_run.client.set_tag(run_id, BEST_TAG, "true")
        round_run.set_tags({"vipo.tune.best_trial_run_id": run_id})
    return {"checkpoint": checkpoint, "trial_run_id": run_id}
