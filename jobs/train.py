"""``vipo train <config.yaml> [key=value ...]``: train one stage on Ray Train (the config's ``recipe:``).

Relaunching the same command resumes from the run's latest checkpoint (``output_dir/<name>``). On SIGTERM it
checkpoints at the next step boundary and exits 75 (143 when that takes longer than
``failure.preemption_grace_s``); see :mod:`vipo.train.preemption`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vipo.tracking import resolve_tracking_uri
from vipo.train.config import load_train_config


def run(config_path: str | Path, overrides: list[str]) -> None:
    """Validate the config (one-line ``ConfigError`` on any problem), then build the trainer and fit."""
    cfg = load_train_config(config_path, overrides)
    from vipo.train.preemption import EXIT_PREEMPTED, EXIT_PREEMPTION_TIMEOUT, Preempted, PreemptionTimeout
    from vipo.train.runner import fit

    print(f"run folder: {cfg.run_dir}  (relaunch the same command to resume)")
    try:
        result = fit(cfg)
    except Preempted as stopped:
        print(stopped, file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    except PreemptionTimeout as late:
        print(late, file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTION_TIMEOUT) from None
    if cfg.tracking.enabled:
        tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.output_dir)
        print(f"MLflow: {tracking_uri}  experiment {cfg.tracking.experiment!r}, run {cfg.tracking.run_name or cfg.run_name!r}")
    if result.checkpoint is not None:
        print(f"latest checkpoint: {result.checkpoint.path}")
    exports = sorted((cfg.run_dir / "export").glob("step_*")) if cfg.export_on_finish else []
    if exports:
        print(f"exported model: {exports[-1]}")


if __name__ == "__main__":
    from jobs.cli import app

    app(["train", *sys.argv[1:]])
