"""`vipo tune <config.yaml> [key=value ...]`: the staged Ray Tune search (`python -m jobs.tune` forwards here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vipo.config import load_config
from vipo.tune import TuneConfig, run_staged_search


def run(config_path: Path, overrides: list[str]) -> None:
    cfg = load_config(TuneConfig, config_path, overrides)
    for record in run_staged_search(cfg):
        print(f"round {record['round']}: best {record['metric']} = {record['value']:.6g} "
              f"with {json.dumps(record['settled'])}")
    print(f"rounds and trials under {cfg.output_dir / cfg.name}")


if __name__ == "__main__":
    from jobs.cli import app

    app(["tune", *sys.argv[1:]])
