"""Run records against a real ``mlflow server`` (sqlite backend, proxied artifact store) on loopback.

Two launches sharing a name are two runs; a killed and relaunched training is one run with strictly increasing
steps; a tune sweep is a parent → round → trial tree on the server with artifacts in the server's store; the
compare run carries its provenance; two jobs creating one sqlite store at once both succeed.
"""

from __future__ import annotations

import math
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel
from servers import wait_for

from vipo.data import SAMPLE_DATA_ROOT
from vipo.tracking import RUN_FILE, read_run_id
from vipo.train.checkpointing import find_checkpoint
from vipo.train.config import load_train_config
from vipo.train.diffueraser import prepare_weights
from vipo.train.engine import WorkerContext
from vipo.train.loop import InjectedFailure
from vipo.train.recipes import get_recipe

pytestmark = pytest.mark.slow

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    """Tiny random weights, written as the demo config asks for them (``model.tiny_weights_seed``)."""
    root = tmp_path_factory.mktemp("tiny_weights")
    prepare_weights(load_train_config(CONFIGS / "stage1_demo.yaml", [f"output_dir={root}",
                                                                      f"model.weights_root={root}"]).model)
    return root


def _experiment(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"  # a server may outlive one test session


def _runs(client: MlflowClient, experiment: str, filter_string: str = "") -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], filter_string) if found else []


def _under_server_store(server, client: MlflowClient, run) -> bool:
    """The run's artifacts are served by the server and its files sit in the server's artifact root."""
    stored = server.artifacts_root / run.info.experiment_id / run.info.run_id / "artifacts" / "config.yaml"
    return run.info.artifact_uri.startswith("mlflow-artifacts:") and stored.is_file()


def _train_in_process(cfg, checkpoint: Path | None = None) -> None:
    """One rank, no Ray Train: the loop writes checkpoints into the run folder itself."""
    recipe = get_recipe(cfg.recipe)(cfg, WorkerContext())
    recipe.setup(checkpoint)
    try:
        recipe.train()
    finally:
        recipe.cleanup()


def _stage1(output_dir: Path, weights_root: Path, server, experiment: str, *overrides: str):
    return load_train_config(CONFIGS / "stage1_demo.yaml", [
        f"output_dir={output_dir}", f"model.weights_root={weights_root}", "model.tiny_weights_seed=null",
        "validation.every_n_steps=null", "data.clip.nframes=2", f"data.sources.0.root={SAMPLE_DATA_ROOT}",
        "export_on_finish=false", "scaling.num_workers=1",
        f"tracking.tracking_uri={server.uri}", f"tracking.experiment={experiment}", *overrides,
    ])


def test_two_launches_with_one_name_are_two_runs(mlflow_server, weights_root, tmp_path):
    experiment = _experiment("same-name")
    first = _stage1(tmp_path / "a", weights_root, mlflow_server, experiment, "name=shared", "optim.max_steps=1",
                    "optim.lr=1e-4")
    second = _stage1(tmp_path / "b", weights_root, mlflow_server, experiment, "name=shared", "optim.max_steps=2",
                     "optim.lr=3e-4")
    _train_in_process(first)
    _train_in_process(second)

    client = MlflowClient(mlflow_server.uri)
    runs = {run.info.run_id: run for run in _runs(client, experiment, "attributes.run_name = 'shared'")}
    assert set(runs) == {read_run_id(first.run_dir), read_run_id(second.run_dir)} and len(runs) == 2
    params = sorted((r.data.params["optim.lr"], r.data.params["optim.max_steps"]) for r in runs.values())
    assert params == [("0.0001", "1"), ("0.0003", "2")]
    assert len({r.data.tags["vipo.config_hash"] for r in runs.values()}) == 2
    for run in runs.values():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert steps == list(range(1, int(run.data.params["optim.max_steps"]) + 1))  # each its own history
        assert _under_server_store(mlflow_server, client, run)
        assert run.data.tags["vipo.git_dirty"] in {"true", "false"} and run.data.tags["vipo.accelerator"]
    assert not (tmp_path / "a" / "mlartifacts").exists() and not (tmp_path / "a" / "mlflow.db").exists()


def test_a_killed_run_relaunched_on_its_folder_is_one_run_with_increasing_steps(mlflow_server, weights_root,
                                                                                  tmp_path):
    experiment = _experiment("relaunch")
    cfg = _stage1(tmp_path, weights_root, mlflow_server, experiment, "name=killed", "optim.max_steps=4",
                  "checkpointing.every_n_steps=2", "failure.inject_at_step=3", "tracking.system_metrics_interval_s=0.2")
    with pytest.raises(InjectedFailure):
        _train_in_process(cfg)  # step 3 is logged, the last checkpoint is step 2
    checkpoint = find_checkpoint(cfg.run_dir)
    assert checkpoint.name == "checkpoint-00000002"
    assert read_run_id(checkpoint) == read_run_id(cfg.run_dir)  # the checkpoint names its run

    # The relaunch: a fresh config of the same folder, resumed from the checkpoint.
    _train_in_process(_stage1(tmp_path, weights_root, mlflow_server, experiment, "name=killed", "optim.max_steps=4",
                              "checkpointing.every_n_steps=2", "failure.inject_at_step=3",
                              "tracking.system_metrics_interval_s=0.2"), checkpoint)

    client = MlflowClient(mlflow_server.uri)
    (run,) = _runs(client, experiment)
    assert run.info.run_id == read_run_id(checkpoint) and run.info.status == "FINISHED"
    for key in ("loss", "lr", "grad_norm"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
    system = [key for key in run.data.metrics if key.startswith("system/")]
    assert "system/cpu_utilization_percentage" in system
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")]
    assert steps == sorted(set(steps))  # resumed system metrics continue the step count
    assert {"config.yaml", "environment.txt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.timeout(1800)  # local Ray and two short trainings on a shared machine
def test_tune_demo_is_a_sweep_round_trial_tree_on_the_server(mlflow_server, weights_root, tmp_path, ray_local):
    from vipo.config import load_config
    from vipo.tune import TuneConfig, run_staged_search
    from vipo.tune.lineage import BEST_TAG, sweep_dir

    experiment = _experiment("tune-lineage")
    cfg = load_config(TuneConfig, CONFIGS / "tune_demo.yaml", [
        f"output_dir={tmp_path}", f"tracking.tracking_uri={mlflow_server.uri}", f"tracking.experiment={experiment}",
        f"base_config={CONFIGS / 'stage1_demo.yaml'}",
        f"base_overrides=[optim.max_steps=2, checkpointing.every_n_steps=2, validation.every_n_steps=null, "
        f"scaling.num_workers=1, export_on_finish=false, data.clip.nframes=2, model.weights_root={weights_root}, "
        f"model.tiny_weights_seed=null, tracking.system_metrics=false, data.sources.0.root={SAMPLE_DATA_ROOT}]",
        "rounds=[{name: r1, space: {optim.lr: {kind: grid, values: [0.0001, 0.0003]}}}]",
        # Stage-1 trials have no validation gate: rank on the loss; one round, no control or confirmation trials.
        "metric=loss", "sft_control_round=null", "confirm.top_k=0",
    ])
    (record,) = run_staged_search(cfg).rounds

    client = MlflowClient(mlflow_server.uri)
    runs = _runs(client, experiment)
    by_parent: dict[str | None, list] = {}
    for run in runs:
        by_parent.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
    (sweep,) = by_parent[None]
    assert sweep.info.run_name == "stage3-demo-sweep" and read_run_id(sweep_dir(cfg)) == sweep.info.run_id
    (round_run,) = by_parent[sweep.info.run_id]
    assert round_run.info.run_name == "stage3-demo-sweep-r1" and round_run.data.tags["vipo.tune.round"] == "r1"
    trials = by_parent[round_run.info.run_id]
    assert sorted(t.info.run_name for t in trials) == ["stage3-demo-sweep-r1-lr_0.0001",
                                                       "stage3-demo-sweep-r1-lr_0.0003"]
    assert len(runs) == 4
    best = [t for t in trials if t.data.tags.get(BEST_TAG) == "true"]
    assert [t.info.run_id for t in best] == [record["trial_run_id"]]
    assert round_run.data.tags["vipo.tune.best_trial_run_id"] == record["trial_run_id"]
    assert best[0].data.metrics["loss"] == pytest.approx(record["value"])
    assert math.isclose(min(t.data.metrics["loss"] for t in trials), record["value"], rel_tol=1e-6)
    for run in (sweep, round_run, *trials):
        assert run.info.status == "FINISHED"
        assert {"vipo.config_hash", "vipo.git_commit"} <= run.data.tags.keys(), run.info.run_name
    for trial in trials:
        assert _under_server_store(mlflow_server, client, trial)

    checkpoint = sweep_dir(cfg) / record["checkpoint"]
    assert not Path(record["checkpoint"]).is_absolute() and (checkpoint / "progress.json").is_file()
    assert read_run_id(checkpoint) == record["trial_run_id"]
    # No trial fell back to a store of its own, and nothing went to a local artifact folder.
    assert not list(tmp_path.rglob("mlflow.db")) and not list(tmp_path.rglob("mlartifacts"))

    # Ray Tune's trial names carry the round and params.
    from ray.tune import ExperimentAnalysis

    names = sorted(str(t) for t in ExperimentAnalysis(str(sweep_dir(cfg) / "r1")).trials)
    assert names == sorted(t.info.run_name for t in trials)

    again = run_staged_search(cfg).rounds  # a rerun: the finished round is skipped, the parent run reopened
    assert again[0]["trial_run_id"] == record["trial_run_id"] and len(_runs(client, experiment)) == 4


class _Method(BaseModel):
    name: str


def test_compare_run_carries_its_provenance(mlflow_server, tmp_path):
    from evaluation.cache import ClipScores
    from evaluation.config import CompareConfig
    from evaluation.job import compare
    from evaluation.results import MethodResult
    from evaluation.runs import TAG, log_method_run
    from evaluation.scoring import ScoringConfig
    from vipo.config import TrackingConfig, config_hash

    experiment = _experiment("compare-provenance")
    scoring = ScoringConfig(metrics=["psnr"])
    run_ids = {}
    for label, psnr in (("baseline", 20.0), ("dpo", 21.5)):
        scores = {clip: ClipScores(clip, {"psnr": psnr + index}) for index, clip in enumerate(("bear", "boat"))}
        result = MethodResult(label, "fake", f"hash-{label}", f"weights-{label}", scores)
        run_ids[label] = log_method_run(
            mlflow_server.uri, experiment, tmp_path / "mlartifacts", benchmark_name="bench",
            benchmark_hash="b" * 16, benchmark_dir=tmp_path / "gone", scoring_hash="s" * 16, scoring=scoring,
            method=_Method(name=label), result=result, metrics=["psnr"], tags={})

    config = CompareConfig(benchmark="bench", output_dir=tmp_path, baseline="baseline",
                           tracking=TrackingConfig(tracking_uri=mlflow_server.uri, experiment=experiment))
    compare(config)

    client = MlflowClient(mlflow_server.uri)
    (run,) = _runs(client, experiment, f"tags.`{TAG}role` = 'compare'")
    tags = run.data.tags
    assert tags["vipo.config_hash"] == config_hash(config) and tags["vipo.git_commit"]
    assert tags[f"{TAG}benchmark_hash"] == "b" * 16
    assert {label: tags[f"{TAG}method_run.{label}"] for label in run_ids} == run_ids
    assert run.data.params["benchmark"] == "bench" and run.data.params["baseline"] == "baseline"
    assert {"config.yaml", "environment.txt", "report"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert _under_server_store(mlflow_server, client, run)


# Each job: import, say it is ready, wait for the start signal, then open the (not yet created) store.
_OPEN_STORE = """
import pathlib, sys, time
from vipo.tracking import MLflowLogger
uri, ready, go, name = sys.argv[1:]
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
MLflowLogger(uri, "vipo", name).close()
"""


@pytest.mark.timeout(1800)
def test_two_jobs_creating_one_sqlite_store_at_once_both_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    jobs = [subprocess.Popen([sys.executable, "-c", _OPEN_STORE, uri, str(tmp_path / f"ready-{i}"), str(go),
                              f"job-{i}"], stderr=subprocess.PIPE, text=True) for i in range(2)]
    wait_for(lambda: all((tmp_path / f"ready-{i}").exists() for i in range(2)), 1200, "both jobs imported")
    go.touch()  # both processes reach the empty store together
    errors = [job.communicate(timeout=600)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], errors
    client = MlflowClient(uri)
    assert sorted(r.info.run_name for r in _runs(client, "vipo")) == ["job-0", "job-1"]
    assert not (tmp_path / RUN_FILE).exists()
