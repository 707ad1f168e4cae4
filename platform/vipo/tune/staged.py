"""Run a staged search: one Ray Tune ``Tuner`` per round, each trial a full training run of the base recipe.

Round k+1 starts from round k's best values (recorded in ``<output_dir>/<name>/best_<round>.json``), so a rerun
skips finished rounds and an interrupted round (a trial that crashed, a killed driver) is restored with
``Tuner.restore``, rerunning only its unfinished trials. Trials forward every training report to Tune (through
``TuneReportCallback`` from Ray Train workers; directly in local mode, where the reused trial process trains), so
ASHA judges the validation objective at each checkpoint and the health stopper
(:mod:`vipo.tune.stoppers`) ends trials the DPO monitor flags. The SFT-only control and the multi-seed
confirmation (:mod:`vipo.tune.confirm`) are Tune experiments of their own beside the rounds'. MLflow lineage
(sweep → round → trial runs, names, best-trial tag) is in :mod:`vipo.tune.lineage`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vipo.tracking import RunLogger, init_ray, launch_tracking_uri, tune_verbosity
from vipo.tune.config import RoundConfig, SearchDim, TuneConfig
from vipo.tune.confirm import choose_by_interval, per_clip_values
from vipo.tune.lineage import (
    best_trial_record,
    open_round_run,
    open_sweep_run,
    sweep_dir,
    trial_lineage_overrides,
    trial_run_name,
)
from vipo.tune.summary import summary_table

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from vipo.train.config import ScalingSettings, TrainConfig
    from vipo.train.validation import ClipScorer

__all__ = [
    "SearchResult",
    "best_path",
    "confirmation_path",
    "describe_confirmation",
    "run_staged_search",
    "search_space",
    "train_trial",
    "trial_overrides",
    "trial_resources",
]

SFT_ONLY_ALPHA = [0.0, 0.0, 0.0]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TrialSpec:
    """A trial's function (called with the trial's config) and the Ray resources one trial holds."""

    fn: Callable[[dict], None]
    resources: dict[str, float]


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


def train_trial(trial: dict, scorer_factory: Callable[["TrainConfig"], "ClipScorer"] | None = None) -> None:
    """The Tune trainable: fit the base recipe with the trial's overrides, forwarding its reports to Tune.
    ``scorer_factory`` builds the validation scorer from the trial's config (the jobs layer passes evaluation's).

    With Ray Train workers (``scaling.num_workers`` ≥ 1) ``TuneReportCallback`` forwards their reports; in local
    mode the trial's own process trains and reports straight to Tune, with no actors to start per trial."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from vipo.train.config import load_train_config
    from vipo.train.runner import fit

    cfg = load_train_config(trial["_base_config"], trial["_overrides"])
    scorer = scorer_factory(cfg) if scorer_factory else None
    if cfg.scaling.num_workers:
        fit(cfg, callbacks=[TuneReportCallback()], scorer=scorer)
    else:
        fit(cfg, scorer=scorer, on_report=tune.report)


def trial_resources(scaling: "ScalingSettings") -> dict[str, float]:
    """What one :func:`train_trial` holds (Ray resource names) for the base config's ``scaling``. In local mode
    (``num_workers: 0``) the trial trains itself: one Ray Train worker's resources. Otherwise it only drives its
    TorchTrainer, whose workers hold the CPUs/GPUs: a whole CPU held by each driver would let fewer trials run at
    once than the workers' resources allow (Ray refuses an empty request, hence 0.01 CPU)."""
    if scaling.num_workers:
        return {"CPU": 0.01}
    # Ray Train's defaults for one worker: a CPU, or a GPU (and no CPU) with use_gpu.
    resources = dict(scaling.resources_per_worker or ({"GPU": 1.0} if scaling.use_gpu else {"CPU": 1.0}))
    if scaling.use_gpu:
        resources.setdefault("GPU", 1.0)
    return resources


def best_path(cfg: TuneConfig, round_cfg: RoundConfig) -> Path:
    return sweep_dir(cfg) / f"best_{round_cfg.name}.json"


def confirmation_path(cfg: TuneConfig) -> Path:
    return sweep_dir(cfg) / "confirmation.json"


@dataclass
class SearchResult:
    """Every round's record (best values, trials with health marks, the control), the confirmation record (None
    when ``confirm.top_k`` is 0) and the summary table."""

    rounds: list[dict]
    confirmation: dict | None
    summary: str

    @property
    def settled(self) -> dict[str, Any]:
        """The chosen overrides: the confirmation's winner, else the last round's best."""
        return self.confirmation["settled"] if self.confirmation else self.rounds[-1]["settled"]


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


def _fit(cfg: TuneConfig, experiment: str, space: dict, overrides: Callable[[dict], list[str]], trainable: TrialSpec,
         parent_run: RunLogger, *, num_samples: int = 1, scheduler=None) -> "ResultGrid":
    """One Tune experiment under ``<output_dir>/<name>/<experiment>``, restored when it was interrupted; trials get
    ``overrides(trial)`` plus their lineage (folder, run name, parent ``parent_run``) and are stopped by the health
    stopper. Raises when a trial errored (rerun to resume).

    Only the searched keys go into Tune's stored state: paths (the base config, trial folders) come from this
    launch's closure, so a restored experiment works after the code or output folder moved."""
    from ray import tune

    from vipo.tune.stoppers import HealthStopper

    base_config = str(cfg.base_config)

    def searched(config: dict) -> dict[str, Any]:
        return {key: config[key] for key in space}

    def with_overrides(trial: dict) -> None:
        lineage = trial_lineage_overrides(cfg, experiment, searched(trial), tune.get_context().get_trial_id(),
                                          parent_run.run_id)
        trainable.fn({**trial, "_base_config": base_config, "_overrides": [*overrides(trial), *lineage]})

    # Ray names the trainable's actors after the function: the dashboard then shows the sweep and experiment.
    with_overrides.__name__ = with_overrides.__qualname__ = f"{cfg.name}-{experiment}"
    driver = tune.with_resources(with_overrides, tune.PlacementGroupFactory([trainable.resources]))
    storage = sweep_dir(cfg)
    path = storage / experiment
    if tune.Tuner.can_restore(str(path)):
        log.info("restoring unfinished experiment %s from %s", experiment, path)
        tuner = tune.Tuner.restore(str(path), trainable=driver, resume_errored=True)
    else:
        tuner = tune.Tuner(
            driver,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=cfg.metric,
                mode=cfg.mode,
                num_samples=num_samples,
                max_concurrent_trials=cfg.max_concurrent_trials,
                # A trial's process is reused by the next: its imports (torch, diffusers, peft) are paid once.
                reuse_actors=True,
                scheduler=scheduler,
                trial_name_creator=lambda trial: trial_run_name(cfg.name, experiment, searched(trial.config)),
            ),
            run_config=tune.RunConfig(name=experiment, storage_path=str(storage), stop=HealthStopper(),
                                       verbose=tune_verbosity()),
        )
    grid = tuner.fit()
    errors = [str(e).strip().splitlines()[-1] for e in grid.errors]
    if not any(r.metrics and cfg.metric in r.metrics for r in grid):
        # Name the trials' own errors: Tune's "no best trial" message hides why every trial failed.
        raise RuntimeError(f"{experiment}: no trial reported {cfg.metric!r}: {'; '.join(errors) or 'none reported it'}")
    if errors:
        # A crashed trial is not a judged one: choosing among the survivors would hide it. The rerun resumes it.
        raise RuntimeError(f"{experiment}: {len(errors)} trial(s) failed ({'; '.join(errors)}); rerun the same command "
                           "to resume them (finished trials are kept)")
    return grid


def _trial_record(result, keys, metric: str) -> dict:
    """A finished trial: searched values, objective at the last report, health marks, status, DGR at the end."""
    from vipo.tune.stoppers import health_marks

    metrics = result.metrics or {}
    marks = health_marks(metrics)
    value = metrics.get(metric)
    return {
        "trial": Path(result.path).name,
        "config": {k: result.config.get(k) for k in keys},
        "value": None if value is None else float(value),
        "health": marks,
        "status": f"failed: {','.join(marks)}" if marks else "ok",
        "dgr": metrics.get("dpo/dgr"),
    }


def _ranked(trials: list[dict], mode: str) -> list[dict]:
    """Healthy trials with a finite objective, best first."""
    judged = [t for t in trials if not t["health"] and t["value"] is not None and math.isfinite(t["value"])]
    return sorted(judged, key=lambda t: t["value"], reverse=mode == "max")


def _run_round(cfg: TuneConfig, round_cfg: RoundConfig, settled: dict[str, Any], trainable: TrialSpec,
               round_run: RunLogger) -> dict:
    from ray.tune.schedulers import ASHAScheduler

    fixed = {**settled, **round_cfg.fixed}
    base = trial_overrides(cfg.base_overrides, fixed, {})
    scheduler = None
    if round_cfg.scheduler.kind == "asha":
        scheduler = ASHAScheduler(
            max_t=round_cfg.scheduler.max_t,
            grace_period=round_cfg.scheduler.grace_period,
            reduction_factor=round_cfg.scheduler.reduction_factor,
        )
    # Trial configs carry the resolved overrides as constants (searchers ignore constants), so each trial's
    # config in Tune's results says exactly what it trained with.
    grid = _fit(cfg, round_cfg.name, search_space(round_cfg),
                lambda trial: [*base, *trial_overrides([], {}, {k: trial[k] for k in round_cfg.space})],
                trainable, round_run, num_samples=round_cfg.num_samples, scheduler=scheduler)
    trials = [_trial_record(r, round_cfg.space, cfg.metric) for r in grid]
    ranked = _ranked(trials, cfg.mode)
    if not ranked:
        marks = "; ".join(f"{t['trial']} {t['status']}" for t in trials)
        raise RuntimeError(f"round {round_cfg.name}: every trial failed its health checks ({marks}); see the "
                           "summary and the DPO health warnings in the trials' logs")
    best = ranked[0]
    best_result = next(r for r in grid if Path(r.path).name == best["trial"])
    return {
        "round": round_cfg.name,
        "settled": {**fixed, **best["config"]},
        "metric": cfg.metric,
        "value": best["value"],
        "trial_path": best_result.path,
        **best_trial_record(cfg, round_cfg, best["config"], best_result.metrics["trial_id"], round_run,
                            best_result.checkpoint.path if best_result.checkpoint else None),
        "trials": trials,
    }


def _run_control(cfg: TuneConfig, record: dict, trainable: TrialSpec, round_run: RunLogger) -> dict:
    """The SFT-only control (roadmap step 5): the round's best config with α ≡ 0, the same ρ. Adds ``control`` and
    ``control_beats_best`` to ``record``."""
    rho = record["settled"].get("loss.rho")
    if rho is not None and not any(r > 0 for r in rho):
        raise ValueError(f"round {record['round']}: the SFT-only control needs rho > 0, but the round's rho is {rho}; "
                         "move sft_control_round to a round with an SFT anchor")
    settled = {**record["settled"], "loss.alpha": SFT_ONLY_ALPHA}
    overrides = trial_overrides(cfg.base_overrides, settled, {})
    grid = _fit(cfg, f"{record['round']}-sft-control", {}, lambda trial: overrides, trainable, round_run)
    control = _trial_record(grid[0], [], cfg.metric)
    control["config"] = {k: v for k, v in settled.items() if k in ("loss.alpha", "loss.rho")}
    better = (lambda a, b: a < b) if cfg.mode == "min" else (lambda a, b: a > b)
    beats = control["value"] is not None and not control["health"] and better(control["value"], record["value"])
    return {**record, "control": control, "control_beats_best": bool(beats)}


def _run_confirmation(cfg: TuneConfig, last: dict, trainable: TrialSpec, sweep_run: RunLogger) -> dict:
    """Retrain the last round's top-k healthy configs with ``confirm.num_seeds`` fresh seeds; choose by interval."""
    from ray import tune

    ranked = _ranked(last["trials"], cfg.mode)[: cfg.confirm.top_k]
    settled = [{**last["settled"], **trial["config"]} for trial in ranked]
    seeds = [cfg.seed + 1 + i for i in range(cfg.confirm.num_seeds)]  # fresh: not the search's own seed
    grid = _fit(cfg, "confirm", {"_candidate": tune.grid_search(list(range(len(settled)))),
                                 "_seed": tune.grid_search(seeds)},
                lambda trial: trial_overrides(cfg.base_overrides, settled[trial["_candidate"]],
                                              {"seed": trial["_seed"]}),
                trainable, sweep_run)
    candidates = [{"settled": s, "samples": {}, "health": []} for s in settled]
    for result in grid:
        candidate = candidates[result.config["_candidate"]]
        record = _trial_record(result, [], cfg.metric)
        candidate["health"] += record["health"]
        for clip, value in per_clip_values(result.metrics or {}, cfg.metric).items():
            candidate["samples"][f"{result.config['_seed']}/{clip}"] = value
    # A config that fails its health checks under another seed is not a winner, whatever its numbers.
    healthy = [c for c in candidates if not c["health"] and c["samples"]]
    if not healthy:
        raise RuntimeError(f"confirmation: every candidate failed a seed's health checks: {candidates}")
    record = choose_by_interval(healthy, cfg.mode, confidence=cfg.confirm.confidence,
                                samples=cfg.confirm.bootstrap_samples, seed=cfg.seed)
    record.update(metric=cfg.metric, seeds=seeds, unhealthy=[c for c in candidates if c not in healthy])
    return record


def describe_confirmation(record: dict) -> str:
    """The confirmation record in two lines: the winner with its interval, and whether it is separated."""
    winner = record["candidates"][record["winner"]]["vs_reference"]
    lines = [f"confirmation winner {json.dumps(record['settled'])}: {record['metric']} = {winner['mean']:.4g} "
             f"[{winner['ci_low']:.4g}, {winner['ci_high']:.4g}] over {winner['n']} seed x clip pairs; "
             f"{'separated' if record['separated_from_reference'] else 'NOT separated'} from the reference"]
    if "runner_up" in record:
        gap = record["vs_runner_up"]
        lines.append(f"winner - runner-up = {gap['mean']:.4g} [{gap['ci_low']:.4g}, {gap['ci_high']:.4g}]: "
                     f"{'separated' if record['separated_from_runner_up'] else 'NOT separated'} from the runner-up")
    return "\n".join(lines)


def run_staged_search(cfg: TuneConfig, trainable: Callable[[dict], None] = train_trial,
                      resources: dict[str, float] | None = None) -> SearchResult:
    """Run every round in order (skipping rounds whose best file exists), the control and the confirmation.
    ``trainable`` trains one trial (its config: the searched values, ``_base_config`` and ``_overrides``) holding
    ``resources`` (default: :func:`trial_resources` of the base config, what :func:`train_trial` needs)."""
    if resources is None:
        from vipo.train.config import load_train_config

        resources = trial_resources(load_train_config(cfg.base_config, cfg.base_overrides).scaling)
    spec = TrialSpec(trainable, resources)
    init_ray(cfg.ray, launch_tracking_uri(cfg.tracking, cfg.output_dir))
    logger = open_sweep_run(cfg)
    settled: dict[str, Any] = {}
    records = []
    try:
        for index, round_cfg in enumerate(cfg.rounds):
            path = best_path(cfg, round_cfg)
            if path.exists():
                record = json.loads(path.read_text())
                log.info("round %s already done (%s = %s)", round_cfg.name, record["metric"], record["value"])
            else:
                round_run = open_round_run(cfg, round_cfg, logger)
                try:
                    record = _run_round(cfg, round_cfg, settled, spec, round_run)
                    if round_cfg is cfg.control_round:
                        record = _run_control(cfg, record, spec, round_run)
                except BaseException:
                    round_run.close("FAILED")
                    raise
                round_run.log_metrics({f"best_{cfg.metric}": record["value"]}, step=0)
                round_run.close()
                _write_json(path, record)
            settled = record["settled"]
            records.append(record)
            logger.log_metrics({f"best_{cfg.metric}": record["value"]}, step=index)
            logger.log_text(json.dumps(record, indent=2, default=str), f"rounds/best_{round_cfg.name}.json")
        confirmation = None
        if cfg.confirm.top_k:
            path = confirmation_path(cfg)
            if path.exists():
                confirmation = json.loads(path.read_text())
            else:
                confirmation = _run_confirmation(cfg, records[-1], spec, logger)
                _write_json(path, confirmation)
            logger.log_text(json.dumps(confirmation, indent=2, default=str), "confirmation.json")
            log.info("%s", describe_confirmation(confirmation))
        result = SearchResult(records, confirmation, summary_table(records, cfg.metric))
        logger.log_text(result.summary, "summary.md")
        logger.set_tags({"vipo.tune.best_overrides": json.dumps(result.settled)})
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close()
    return result
