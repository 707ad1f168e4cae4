"""Run a staged search: one Ray Tune ``Tuner`` per round, each trial a full training run of the base recipe.

Round k+1 starts from round k's best values (recorded in ``<output_dir>/<name>/best_<round>.json``), so a rerun
skips finished rounds and an interrupted round is restored with ``Tuner.restore``. Trials forward every training
report to Tune (``TuneReportCallback``), so ASHA can stop weak trials at checkpoints.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from vipo.tracking import build_logger, init_ray, run_identity, tune_verbosity
from vipo.tune.config import RoundConfig, SearchDim, TuneConfig

__all__ = ["best_path", "run_staged_search", "search_space", "train_trial", "trial_overrides"]

log = logging.getLogger(__name__)

Trainable = Callable[[dict], None]


def search_space(round_cfg: RoundConfig) -> dict[str, Any]:
    """The round's dims as Tune samplers over flat dotted keys."""
    from ray import tune

    def sampler(dim: SearchDim):
        if dim.kind == "grid":
            return tune.grid_search(list(dim.values))
        if dim.kind == "choice":
            return tune.choice(list(dim.values))
        if dim.kind == "uniform":
            return tune.uniform(dim.low, dim.high)
        return tune.loguniform(dim.low, dim.high)

    return {key: sampler(dim) for key, dim in round_cfg.space.items()}


def trial_overrides(base_overrides: list[str], settled: dict[str, Any], trial: dict[str, Any]) -> list[str]:
    """``key=value`` overrides for one trial, later ones winning: base, earlier rounds' best, this trial.

    Values are written as JSON, which the config loader parses back as YAML (lists and numbers intact).
    """
    merged = {**settled, **{k: v for k, v in trial.items() if not k.startswith("_")}}
    return [*base_overrides, *(f"{key}={json.dumps(value)}" for key, value in merged.items())]


def train_trial(trial: dict) -> None:
    """The Tune trainable: fit the base recipe with the trial's overrides, forwarding its reports to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from vipo.train.config import load_train_config
    from vipo.train.runner import fit

    context = tune.get_context()
    overrides = [
        *trial["_overrides"],
        f"output_dir={context.get_trial_dir()}",
        "name=train",
        f"tracking.run_name={trial['_run_prefix']}-{context.get_trial_id()}",
    ]
    cfg = load_train_config(trial["_base_config"], overrides)
    fit(cfg, callbacks=[TuneReportCallback()])


def best_path(cfg: TuneConfig, round_cfg: RoundConfig) -> Path:
    return cfg.output_dir / cfg.name / f"best_{round_cfg.name}.json"


def _run_round(cfg: TuneConfig, round_cfg: RoundConfig, settled: dict[str, Any], trainable: Trainable) -> dict:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    fixed = {**settled, **round_cfg.fixed}
    # Trial configs carry the resolved overrides as constants (searchers ignore constants), so each trial's
    # config in Tune's results says exactly what it trained with.
    space = {
        **search_space(round_cfg),
        "_base_config": str(cfg.base_config),
        "_run_prefix": f"{cfg.name}-{round_cfg.name}",
    }
    base = trial_overrides(cfg.base_overrides, fixed, {})

    def with_overrides(trial: dict) -> None:
        searched = {k: trial[k] for k in round_cfg.space}
        trainable({**trial, "_overrides": [*base, *trial_overrides([], {}, searched)]})

    scheduler = None
    if round_cfg.scheduler.kind == "asha":
        scheduler = ASHAScheduler(
            max_t=round_cfg.scheduler.max_t,
            grace_period=round_cfg.scheduler.grace_period,
            reduction_factor=round_cfg.scheduler.reduction_factor,
        )
    storage = cfg.output_dir / cfg.name
    experiment = storage / round_cfg.name
    if tune.Tuner.can_restore(str(experiment)):
        log.info("restoring unfinished round %s from %s", round_cfg.name, experiment)
        tuner = tune.Tuner.restore(str(experiment), trainable=with_overrides, resume_errored=True)
    else:
        tuner = tune.Tuner(
            with_overrides,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=cfg.metric,
                mode=cfg.mode,
                num_samples=round_cfg.num_samples,
                max_concurrent_trials=cfg.max_concurrent_trials,
                scheduler=scheduler,
            ),
            run_config=tune.RunConfig(name=round_cfg.name, storage_path=str(storage), verbose=tune_verbosity()),
        )
    grid = tuner.fit()
    if not any(r.metrics and cfg.metric in r.metrics for r in grid):
        # Name the trials' own errors: Tune's "no best trial" message hides why every trial failed.
        errors = "; ".join(str(e).strip().splitlines()[-1] for e in grid.errors) or "no trial reported it"
        raise RuntimeError(f"round {round_cfg.name}: no trial reported {cfg.metric!r}: {errors}")
    best = grid.get_best_result(metric=cfg.metric, mode=cfg.mode, scope="last")
    chosen = {**fixed, **{k: best.config[k] for k in round_cfg.space}}
    return {
        "round": round_cfg.name,
        "settled": chosen,
        "metric": cfg.metric,
        "value": float(best.metrics[cfg.metric]),
        "trial_path": best.path,
        "checkpoint": best.checkpoint.path if best.checkpoint else None,
        "trials": [
            {"config": {k: r.config.get(k) for k in round_cfg.space}, "value": (r.metrics or {}).get(cfg.metric)}
            for r in grid
        ],
    }


def run_staged_search(cfg: TuneConfig, trainable: Trainable = train_trial) -> list[dict]:
    """Run every round in order (skipping rounds whose best file exists); return each round's best record."""
    init_ray(cfg.ray)
    logger = build_logger(cfg.tracking, cfg.output_dir, cfg.name, resume=True)
    logger.log_config(cfg, run_identity(cfg))
    settled: dict[str, Any] = {}
    records = []
    try:
        for index, round_cfg in enumerate(cfg.rounds):
            path = best_path(cfg, round_cfg)
            if path.exists():
                record = json.loads(path.read_text())
                log.info("round %s already done (%s = %s)", round_cfg.name, record["metric"], record["value"])
            else:
                record = _run_round(cfg, round_cfg, settled, trainable)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(record, indent=2, default=str))
                tmp.replace(path)
            settled = record["settled"]
            records.append(record)
            logger.log_metrics({f"best_{cfg.metric}": record["value"]}, step=index)
            logger.log_text(json.dumps(record, indent=2, default=str), f"rounds/best_{round_cfg.name}.json")
        logger.set_tags({"vipo.tune.best_overrides": json.dumps(settled)})
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    return records

