"""MLflow records of evaluations: one run per (benchmark, method) and one per comparison report.

A method run holds the method's config as params, the mean of every metric (and inference throughput) as metrics,
the per-clip table as ``per_clip_metrics.csv``/``.json`` artifacts and identity tags: benchmark name/hash, method
hash, checkpoint (weights content) hash, scoring hash, plus the job's run identity. A FINISHED run with the same
(benchmark, method, scoring) key is reused, not duplicated. ``vipo evaluate compare`` finds the runs again by
benchmark name or hash.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from evaluation.results import MethodResult
from vipo.tracking import MLflowLogger

__all__ = ["BenchmarkRuns", "TAG", "find_benchmark_runs", "log_compare_run", "log_method_run", "log_review",
           "result_key"]

TAG = "vipo.eval."
PER_CLIP_JSON = "per_clip_metrics.json"


def result_key(benchmark_hash: str, method_hash: str, scoring_hash: str) -> str:
    return f"{benchmark_hash}:{method_hash}:{scoring_hash}"


def _experiment_id(client: MlflowClient, experiment: str) -> str | None:
    found = client.get_experiment_by_name(experiment)
    return found.experiment_id if found else None


def _finished_runs(client: MlflowClient, experiment: str, filter_string: str) -> list:
    experiment_id = _experiment_id(client, experiment)
    if experiment_id is None:
        return []
    return client.search_runs([experiment_id], filter_string=f"{filter_string} and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])


def log_method_run(tracking_uri: str, experiment: str, artifact_root: Path, *, benchmark_name: str,
                   benchmark_hash: str, benchmark_dir: Path, scoring_hash: str, scoring: BaseModel, method: BaseModel,
                   result: MethodResult, metrics: list[str], tags: Mapping[str, str], reuse: bool = True) -> str:
    """Record ``result`` as an MLflow run → its run id. With ``reuse``, a finished run with the same (benchmark,
    method, scoring) key is returned instead of logging a duplicate."""
    key = result_key(benchmark_hash, result.method_hash, scoring_hash)
    existing = _finished_runs(MlflowClient(tracking_uri), experiment, f"tags.`{TAG}result_key` = '{key}'") \
        if reuse else []
    if existing:
        return existing[0].info.run_id
    run_tags = {
        **tags,
        f"{TAG}role": "method",
        f"{TAG}benchmark": benchmark_name,
        f"{TAG}benchmark_hash": benchmark_hash,
        f"{TAG}benchmark_dir": str(benchmark_dir),
        f"{TAG}method": result.label,
        f"{TAG}method_kind": result.kind,
        f"{TAG}method_hash": result.method_hash,
        f"{TAG}checkpoint_hash": result.checkpoint_hash,
        f"{TAG}scoring_hash": scoring_hash,
        f"{TAG}result_key": key,
        f"{TAG}predictions_dir": str(result.predictions_dir or ""),
    }
    logger = MLflowLogger(tracking_uri, experiment, f"{benchmark_name}/{result.label}", artifact_root=artifact_root)
    logger.log_config(method, run_tags)
    values = {name: value for name, value in {**result.means(metrics), **result.timing()}.items()
              if math.isfinite(value)}
    logger.log_metrics({**values, "clips": len(result.scores)}, step=0)
    logger.log_text(result.to_csv(metrics), "per_clip_metrics.csv")
    logger.log_text(result.to_json(), PER_CLIP_JSON)
    logger.log_text(yaml.safe_dump(scoring.model_dump(mode="json"), sort_keys=False), "scoring.yaml")
    logger.close()
    return logger.run_id


def log_compare_run(tracking_uri: str, experiment: str, artifact_root: Path, *, config: BaseModel,
                    benchmark_name: str, benchmark_hash: str, scoring_hash: str, baseline: str, report_dir: Path,
                    metrics: Mapping[str, float], method_run_ids: Mapping[str, str | None],
                    tags: Mapping[str, str]) -> str:
    """Record a comparison report (its folder as artifacts, paired deltas as metrics) → the run id.

    Its provenance is that of any run (``config`` as params and ``config.yaml``, the run identity ``tags``) plus
    the run id of each method run it summarises (``vipo.eval.method_run.<label>``)."""
    logger = MLflowLogger(tracking_uri, experiment, f"{benchmark_name}/compare", artifact_root=artifact_root)
    logger.log_config(config, {
        **tags, f"{TAG}role": "compare", f"{TAG}benchmark": benchmark_name, f"{TAG}benchmark_hash": benchmark_hash,
        f"{TAG}scoring_hash": scoring_hash, f"{TAG}baseline": baseline,
        **{f"{TAG}method_run.{label}": run_id or "none" for label, run_id in method_run_ids.items()},
    })
    logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=0)
    logger.log_artifact(report_dir, "report")
    logger.close()
    return logger.run_id


@dataclass
class BenchmarkRuns:
    """The latest finished method runs of one benchmark hash under one scoring, one per method label."""

    benchmark_name: str
    benchmark_hash: str
    benchmark_dir: Path | None
    scoring_hash: str
    results: list[MethodResult]
    baseline: str | None
    other_hashes: list[str]


def find_benchmark_runs(tracking_uri: str, experiment: str, benchmark: str) -> BenchmarkRuns:
    """Method runs of ``benchmark`` (a name or a hash) in ``experiment``.

    When the name has several hashes (the inputs changed), the hash of the most recent run wins and the others
    are listed in ``other_hashes``; likewise the most recent scoring settings. Raises ``LookupError`` when none.
    """
    client = MlflowClient(tracking_uri)
    runs = []
    for field in ("benchmark", "benchmark_hash"):
        runs = _finished_runs(client, experiment,
                              f"tags.`{TAG}role` = 'method' and tags.`{TAG}{field}` = '{benchmark}'")
        if runs:
            break
    if not runs:
        raise LookupError(f"no finished evaluation runs of benchmark {benchmark!r} in experiment {experiment!r} at "
                          f"{tracking_uri}; run `vipo evaluate <config>` first (or pass the right --output-dir)")
    latest = runs[0].data.tags
    benchmark_hash, scoring_hash = latest[f"{TAG}benchmark_hash"], latest[f"{TAG}scoring_hash"]
    other_hashes = sorted({r.data.tags[f"{TAG}benchmark_hash"] for r in runs} - {benchmark_hash})
    results: dict[str, MethodResult] = {}
    with tempfile.TemporaryDirectory(prefix="vipo-compare-") as tmp:
        for run in runs:
            tags = run.data.tags
            label = tags[f"{TAG}method"]
            if (tags[f"{TAG}benchmark_hash"], tags[f"{TAG}scoring_hash"]) != (benchmark_hash, scoring_hash) \
                    or label in results:
                continue
            local = client.download_artifacts(run.info.run_id, PER_CLIP_JSON, tmp)
            predictions = Path(tags[f"{TAG}predictions_dir"]) if tags.get(f"{TAG}predictions_dir") else None
            results[label] = MethodResult(
                label, tags[f"{TAG}method_kind"], tags[f"{TAG}method_hash"], tags[f"{TAG}checkpoint_hash"],
                MethodResult.scores_from_json(Path(local).read_text()),
                predictions if predictions is not None and predictions.is_dir() else None,
                run.info.run_id,
            )
    compares = _finished_runs(client, experiment,
                              f"tags.`{TAG}role` = 'compare' and tags.`{TAG}benchmark_hash` = '{benchmark_hash}'")
    baseline = compares[0].data.tags.get(f"{TAG}baseline") if compares else None
    benchmark_dir = Path(latest[f"{TAG}benchmark_dir"]) if latest.get(f"{TAG}benchmark_dir") else None
    return BenchmarkRuns(latest[f"{TAG}benchmark"], benchmark_hash,
                         benchmark_dir if benchmark_dir is not None and benchmark_dir.is_dir() else None,
                         scoring_hash, sorted(results.values(), key=lambda r: r.label), baseline, other_hashes)


def log_review(tracking_uri: str, experiment: str, benchmark_hash: str, metrics: Mapping[str, float],
               unblinded: str, artifact_file: str) -> str:
    """Log a blind review's preference rates and its unblinded choices to the latest finished compare run of
    ``benchmark_hash`` → that run's id. Raises ``LookupError`` when the benchmark has no compare run."""
    client = MlflowClient(tracking_uri)
    runs = _finished_runs(client, experiment,
                          f"tags.`{TAG}role` = 'compare' and tags.`{TAG}benchmark_hash` = '{benchmark_hash}'")
    if not runs:
        raise LookupError(f"no finished compare run of benchmark hash {benchmark_hash} in experiment {experiment!r}"
                          f" at {tracking_uri}; run `vipo evaluate compare` first")
    run_id = runs[0].info.run_id
    for name, value in metrics.items():
        if math.isfinite(value):
            client.log_metric(run_id, name, value, step=0)
    client.log_text(run_id, unblinded, artifact_file)
    return run_id
