"""`vipo tune <config.yaml> [key=value ...]`: the staged Ray Tune search (`python -m jobs.tune` forwards here).

Each trial's validation scorer is evaluation's, injected through ``train_trial`` (see ``jobs.train``).
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

from jobs.train import validation_scorer
from vipo.config import load_config
from vipo.train.config import load_train_config
from vipo.tune.config import TuneConfig


def run(config_path: Path, overrides: list[str]) -> None:
    cfg = load_config(TuneConfig, config_path, overrides)
    # The trials' scoring settings fail here, once, rather than in every trial.
    base = load_train_config(cfg.base_config, cfg.base_overrides)
    validation_scorer(base, str(cfg.base_config))
    from vipo.tune.staged import run_staged_search, train_trial, trial_resources  # Ray Tune: after validation

    if base.evaluation.benchmark is not None:
        print("note: trials do not evaluate their checkpoints on evaluation.benchmark (Tune ranks on the validation "
              "gate); `vipo train` does", file=sys.stderr)
    result = run_staged_search(cfg, trainable=partial(train_trial, scorer_factory=validation_scorer),
                               resources=trial_resources(base.scaling))
    for record in result.rounds:
        print(f"round {record['round']}: best {record['metric']} = {record['value']:.6g} "
              f"with {json.dumps(record['settled'])}")
        if "control" in record:
            control = record["control"]
            print(f"  SFT-only control ({json.dumps(control['config'])}): {control['value']} "
                  f"({'beats' if record['control_beats_best'] else 'does not beat'} the best DPO trial)")
    print(result.summary)
    if result.confirmation:
        from vipo.tune.staged import describe_confirmation

        print(describe_confirmation(result.confirmation))
    print(f"chosen overrides: {json.dumps(result.settled)}")
    print(f"rounds and trials under {cfg.output_dir / cfg.name}")


if __name__ == "__main__":
    from jobs.cli import app

    app(["tune", *sys.argv[1:]])
