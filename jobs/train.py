"""``vipo train <config.yaml> [key=value ...]``: train one stage on Ray Train (the config's ``recipe:``).

Relaunching the same command resumes from the run's latest checkpoint (``output_dir/<name>``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from vipo.tracking import read_run_id, resolve_tracking_uri
from vipo.train.config import load_train_config


def run(config_path: str | Path, overrides: list[str]) -> None:
    """Validate the config (one-line ``ConfigError`` on any problem), then build the trainer and fit."""
    cfg = load_train_config(config_path, overrides)
    from vipo.train.runner import fit

    print(f"run folder: {cfg.run_dir}  (relaunch the same command to resume)")
    result = fit(cfg)
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
