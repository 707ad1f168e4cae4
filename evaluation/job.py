"""``vipo evaluate``: score methods on a benchmark and write the comparison report; ``vipo evaluate compare``.

:func:`evaluate`: materialise the benchmark once → for each method, the clips without stored scores run on a Ray
Data actor pool (inference + every metric in the same actor) → one MLflow run per (benchmark, method) → the
report (baseline and candidates from this same pass) as files and as an MLflow run. :func:`compare` rebuilds the
report of a benchmark from the MLflow runs alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tqdm.auto import tqdm

from evaluation.benchmark import Benchmark, materialize
from evaluation.cache import ResultCache
from evaluation.config import CompareConfig, EvaluateConfig
from evaluation.methods import MethodConfig
from evaluation.report import Report, build_report
from evaluation.results import MethodResult
from evaluation.runs import find_benchmark_runs, log_compare_run, log_method_run
from evaluation.scoring import METRICS, ScoringConfig, random_networks
from evaluation.stage import EvaluateStage
from vipo.config import ConfigError
from vipo.storage import SessionDirError, resolve_output_path
from vipo.tracking import init_ray, launch_tracking_uri, resolve_tracking_uri, run_identity
from vipo.train.checkpointing import atomic_write_text

__all__ = ["Evaluation", "compare", "evaluate", "score_methods", "scoring_hash"]

TRACKING_RECORD = "tracking.json"


@dataclass
class Evaluation:
    """What :func:`evaluate` produced: the benchmark, each method's results (baseline first), the report."""

    benchmark: Benchmark
    results: list[MethodResult]
    report: Report


SCORING_IDENTITY = "scoring_identity.json"  # artifact of each method run: which metric networks were random


def scoring_hash(scoring: ScoringConfig, identity: dict | None = None) -> str:
    text = json.dumps(identity or scoring.identity(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stored_identity(tracking_uri: str, results: list[MethodResult]) -> dict:
    """The scoring identity logged with the first method run that has one ({} for runs logged before it was)."""
    client = MlflowClient(tracking_uri)
    for result in results:
        try:
            with tempfile.TemporaryDirectory(prefix="vipo-identity-") as tmp:
                return json.loads(Path(client.download_artifacts(result.run_id, SCORING_IDENTITY, tmp)).read_text())
        except (MlflowException, OSError):
            continue
    return {}


def _evaluate_method(config: EvaluateConfig, label: str, method: MethodConfig, benchmark: Benchmark,
                     cache: ResultCache, scores_key: str) -> MethodResult:
    """Scores of every clip for ``method``: stored ones reused (unless ``reuse_cache`` is off), the rest run."""
    from evaluation.adapter import run_on_ray  # Ray Data only once there is work for it

    method_hash = method.method_hash()
    prior = method.prior_method()
    cache.write_method(benchmark.hash, method_hash, {"label": label, "identity": method.identity()})
    stored = cache.load_scores(benchmark.hash, method_hash, scores_key, benchmark.clip_ids) \
        if config.reuse_cache else {}
    todo = [clip_id for clip_id in benchmark.clip_ids if clip_id not in stored]
    if todo:
        stage = EvaluateStage(label, method, method_hash, prior.method_hash() if prior else None, config.scoring,
                              benchmark.root, cache.root, reuse_predictions=config.reuse_cache)
        for scores in tqdm(run_on_ray(stage, todo), total=len(todo), desc=f"evaluate {label}", unit="clip"):
            cache.save_scores(benchmark.hash, method_hash, scores_key, scores)
            stored[scores.clip_id] = scores
    print(f"{label}: {len(todo)} clips evaluated, {len(benchmark.clip_ids) - len(todo)} from the cache")
    return MethodResult(label, method.kind, method_hash, method.checkpoint_hash(),
                        {clip_id: stored[clip_id] for clip_id in benchmark.clip_ids},
                        cache.method_dir(benchmark.hash, method_hash) / "predictions")


def score_methods(config: EvaluateConfig, scores_key: str) -> tuple[Benchmark, list[MethodResult]]:
    """Materialise the benchmark under ``output_dir`` and score every method of ``config`` on it (stored results
    reused): :func:`evaluate` without MLflow and the report. ``scores_key``: :func:`scoring_hash` of the scoring."""
    benchmark = materialize(config.benchmark, config.output_dir / "benchmarks")
    print(f"benchmark {benchmark.name} {benchmark.hash}: {len(benchmark.clips)} clips, {benchmark.num_frames} "
          f"frames at {benchmark.width}x{benchmark.height} ({benchmark.root})")
    cache = ResultCache(config.output_dir / "results")
    return benchmark, [_evaluate_method(config, label, method, benchmark, cache, scores_key)
                       for label, method in config.methods.items()]


def _print_means(report: Report, metrics: list[str]) -> None:
    metrics = [m for m in metrics if m in next(iter(report.means.values()))]  # zero checks are one report line
    width = max(len(label) for label in report.means) + 2
    columns = [max(len(m) + 2, 10) for m in metrics]
    print("method".ljust(width) + "".join(f"{m:>{c}}" for m, c in zip(metrics, columns)))
    for label, means in report.means.items():
        print(label.ljust(width) + "".join(f"{means[m]:>{c}.4f}" for m, c in zip(metrics, columns)))
    print(f"report: {report.index}")


def evaluate(config: EvaluateConfig) -> Evaluation:
    """Run the evaluation of ``config`` (see the module docstring) → :class:`Evaluation`."""
    identity = config.scoring.identity()  # fails here when LPIPS/RAFT/I3D/CLIP weights are missing
    scores_key = scoring_hash(config.scoring, identity)
    random_nets = random_networks(identity)
    for note in random_nets.values():
        print(f"WARNING: {note}")
    output_dir = config.output_dir
    tracking_uri = launch_tracking_uri(config.tracking, output_dir)
    init_ray(config.ray, tracking_uri)
    benchmark, results = score_methods(config, scores_key)
    metrics = list(config.scoring.metrics)

    experiment, artifact_root = config.tracking.experiment, output_dir / "mlartifacts"
    if tracking_uri:
        # `vipo evaluate compare --output-dir D` finds the runs of this evaluation wherever they were logged.
        atomic_write_text(json.dumps({"tracking_uri": tracking_uri, "experiment": experiment}, indent=2),
                          output_dir / TRACKING_RECORD)
    tags = run_identity(config)
    if tracking_uri:
        for method, result in zip(config.methods.values(), results):
            result.run_id = log_method_run(
                tracking_uri, experiment, artifact_root, benchmark_name=benchmark.name, benchmark_hash=benchmark.hash,
                benchmark_dir=benchmark.root, scoring_hash=scores_key, scoring=config.scoring, method=method,
                result=result, metrics=metrics, tags={**tags, "vipo.parent_checkpoint": str(method.checkpoint_path)},
                reuse=config.reuse_cache)
            MlflowClient(tracking_uri).log_dict(result.run_id, identity, SCORING_IDENTITY)
    report = build_report(output_dir / "reports" / f"{benchmark.name}-{benchmark.hash}", benchmark_name=benchmark.name,
                          benchmark_hash=benchmark.hash, results=results, baseline=config.baseline_label,
                          metrics=metrics, config=config.report, benchmark=benchmark, seed=config.seed,
                          notes=[note for note in [config.scoring.flow_note()] if note is not None]
                          + [note for label, method in config.methods.items() for note in method.notes(label)],
                          random_networks=random_nets)
    if tracking_uri:
        log_compare_run(tracking_uri, experiment, artifact_root, config=config, benchmark_name=benchmark.name,
                        benchmark_hash=benchmark.hash, scoring_hash=scores_key, baseline=report.baseline,
                        report_dir=report.folder, metrics=report.delta_metrics(),
                        method_run_ids={r.label: r.run_id for r in results}, tags=tags)
    _print_means(report, metrics)
    ordered = [r for r in results if r.label == report.baseline] + [r for r in results if r.label != report.baseline]
    return Evaluation(benchmark, ordered, report)


def _recorded_tracking(config: CompareConfig, output_dir: Path) -> tuple[str, str]:
    """The tracking URI and experiment to read: the config's or the environment's when given, else the ones the
    evaluation in ``output_dir`` recorded, else the embedded sqlite default there."""
    record = output_dir / TRACKING_RECORD
    if config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or not record.is_file():
        return resolve_tracking_uri(config.tracking, output_dir), config.tracking.experiment
    recorded = json.loads(record.read_text())
    return recorded["tracking_uri"], recorded["experiment"]


def compare(config: CompareConfig) -> Report:
    """Rebuild the comparison report of ``config.benchmark`` (name or hash) from its MLflow runs."""
    if config.output_dir is None and not (config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ConfigError("compare: pass --output-dir (the evaluation's output_dir, which holds mlflow.db) or set "
                          "MLFLOW_TRACKING_URI / tracking.tracking_uri")
    try:
        output_dir = config.output_dir or resolve_output_path(".")
    except SessionDirError as err:
        raise ConfigError(f"compare: pass --output-dir: {err}") from None
    tracking_uri, experiment = _recorded_tracking(config, output_dir)
    try:
        runs = find_benchmark_runs(tracking_uri, experiment, config.benchmark)
    except LookupError as err:
        raise ConfigError(str(err)) from None
    labels = [r.label for r in runs.results]
    baseline = config.baseline or runs.baseline
    if baseline is None or baseline not in labels:
        if config.baseline is not None:
            raise ConfigError(f"compare: baseline {config.baseline!r} is not among the evaluated methods {labels}")
        baseline = labels[0]
    scored = set().union(*(set(s.metrics) | ({"vfid"} if "i3d_fake" in s.info else set())
                           for r in runs.results for s in r.scores.values()))
    metrics = [m for m in METRICS if m in scored]
    notes = [f"benchmark {runs.benchmark_name} also has runs on other inputs (hashes {runs.other_hashes}); "
             f"this report uses the latest, {runs.benchmark_hash}"] if runs.other_hashes else []
    benchmark = Benchmark.open(runs.benchmark_dir) if runs.benchmark_dir is not None else None
    report = build_report(output_dir / "reports" / f"{runs.benchmark_name}-{runs.benchmark_hash}",
                          benchmark_name=runs.benchmark_name, benchmark_hash=runs.benchmark_hash,
                          results=runs.results, baseline=baseline, metrics=metrics, config=config.report,
                          benchmark=benchmark, seed=config.seed, notes=notes,
                          random_networks=random_networks(_stored_identity(tracking_uri, runs.results)))
    log_compare_run(tracking_uri, experiment, output_dir / "mlartifacts", config=config,
                    benchmark_name=runs.benchmark_name, benchmark_hash=runs.benchmark_hash,
                    scoring_hash=runs.scoring_hash, baseline=baseline, report_dir=report.folder,
                    metrics=report.delta_metrics(), method_run_ids={r.label: r.run_id for r in runs.results},
                    tags=run_identity(config))
    _print_means(report, metrics)
    return report
