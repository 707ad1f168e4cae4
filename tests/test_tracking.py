"""Run identity and the MLflow logger on a sqlite backend."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from vipo.config import JobConfig, RayConfig, TrackingConfig, config_hash
from vipo.tracking import (
    build_logger,
    code_version,
    environment_freeze,
    flatten,
    git_commit,
    init_ray,
    read_run_id,
    resolve_tracking_uri,
    run_identity,
)
from vipo.tracking.ray_session import TRIAL_DIR_CHDIR, shipped_code_env


def test_identity_records_config_code_data_parent(tmp_path):
    cfg = JobConfig(output_dir=tmp_path, seed=3)
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"shards": []}')
    tags = run_identity(cfg, manifest_path=manifest, parent_checkpoint="/ckpt/stage2")
    assert tags["vipo.config_hash"] == config_hash(cfg)
    assert tags["vipo.manifest_hash"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert tags["vipo.parent_checkpoint"] == "/ckpt/stage2"
    assert tags["vipo.git_commit"] == git_commit()
    assert run_identity(cfg)["vipo.manifest_hash"] == "none"


def test_git_commit_override(monkeypatch):
    monkeypatch.setenv("VIPO_GIT_COMMIT", "abc123")
    assert git_commit() == "abc123"


def _git(root, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True).stdout


def test_code_version_marks_a_dirty_tree_with_a_hash_of_its_diff(tmp_path, monkeypatch):
    monkeypatch.delenv("VIPO_GIT_COMMIT", raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("lr = 1\n")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    sha = _git(tmp_path, "rev-parse", "HEAD").decode().strip()
    assert code_version(tmp_path) == {"vipo.git_commit": sha, "vipo.git_dirty": "false", "vipo.git_diff_hash": "none"}

    (tmp_path / "train.py").write_text("lr = 2\n")
    edited = code_version(tmp_path)
    assert edited["vipo.git_commit"] == f"{sha}-dirty" and edited["vipo.git_dirty"] == "true"
    assert edited["vipo.git_diff_hash"] == hashlib.sha256(_git(tmp_path, "diff", "HEAD", "--binary")).hexdigest()[:16]
    (tmp_path / "train.py").write_text("lr = 3\n")
    assert code_version(tmp_path)["vipo.git_diff_hash"] != edited["vipo.git_diff_hash"]  # another edit, another hash

    (tmp_path / "train.py").write_text("lr = 1\n")
    (tmp_path / "new_module.py").write_text("x = 1\n")  # untracked code counts too
    untracked = code_version(tmp_path)
    assert untracked["vipo.git_dirty"] == "true" and untracked["vipo.git_diff_hash"] != "none"
    assert code_version(tmp_path.parent / "not-a-checkout-")["vipo.git_commit"] == "unknown"


def test_identity_names_the_machine_and_freezes_the_environment(tmp_path):
    import mlflow
    import socket

    tags = run_identity(JobConfig(output_dir=tmp_path))
    assert tags["vipo.host"] == socket.gethostname()
    assert tags["vipo.accelerator"] == "cpu" and tags["vipo.accelerator_count"] == "0"  # the CI machine has no GPU
    freeze = environment_freeze().splitlines()
    assert f"mlflow=={mlflow.__version__}" in freeze and "vipo==0.1.0" in freeze


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == "sqlite:///env.db"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://mlflow:5000"), tmp_path) == "http://mlflow:5000"


@pytest.fixture
def ray_init_calls(monkeypatch) -> list[dict]:
    """Record what init_ray passes to ray.init, without starting Ray (the session's Ray stays untouched)."""
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    environ = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_TRAIN_ENABLE_STATE_TRACKING", TRIAL_DIR_CHDIR)}
    monkeypatch.setattr(os, "environ", environ)  # init_ray sets variables for the trainer: keep them here
    return calls


STATE_TRACKING = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
TRIALS_IN_LAUNCH_DIR = {TRIAL_DIR_CHDIR: "0"}  # Tune trials keep the launch's working directory


_WHERE = ("address", "num_cpus", "num_gpus", "include_dashboard")


def test_init_ray_defaults_to_local_with_the_machine_cpus(ray_init_calls):
    init_ray(RayConfig())
    (call,) = ray_init_calls
    assert {k: call[k] for k in _WHERE if k in call} == {"num_cpus": os.cpu_count(), "num_gpus": None,
                                                         "include_dashboard": False}
    assert call["runtime_env"]["env_vars"]["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    assert os.environ["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"  # where the trainer object lives


def test_init_ray_address_from_config_beats_environment(ray_init_calls, monkeypatch):
    init_ray(RayConfig(num_cpus=3, num_gpus=1))
    os.environ["RAY_ADDRESS"] = "ray://env-head:10001"
    init_ray(RayConfig())
    init_ray(RayConfig(address="ray://config-head:10001"))
    shipped = shipped_code_env()
    shipped["env_vars"] = {**shipped.get("env_vars", {}), **TRIALS_IN_LAUNCH_DIR}
    local, *joined = ray_init_calls
    assert {k: local[k] for k in _WHERE if k in local} == {"num_cpus": 3, "num_gpus": 1, "include_dashboard": False}
    assert local["runtime_env"]["env_vars"][TRIAL_DIR_CHDIR] == "0"
    assert [(call["address"], call["runtime_env"]) for call in joined] == [("ray://env-head:10001", shipped),
                                                                          ("ray://config-head:10001", shipped)]


def test_init_ray_hands_the_tracking_uri_to_every_worker(ray_init_calls):
    init_ray(RayConfig(address="ray://head:10001"), "http://mlflow:5000")
    # A `ray job submit --runtime-env-json` job already carries the variable: Ray refuses the same key twice.
    os.environ["MLFLOW_TRACKING_URI"] = "http://mlflow:5000"
    init_ray(RayConfig(address="ray://head:10001"), "http://mlflow:5000")
    first, second = (call["runtime_env"].get("env_vars", {}) for call in ray_init_calls)
    assert first == {**shipped_code_env().get("env_vars", {}), **STATE_TRACKING, **TRIALS_IN_LAUNCH_DIR,
                     "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert "MLFLOW_TRACKING_URI" not in second and "RAY_TRAIN_ENABLE_STATE_TRACKING" not in second


def test_cluster_workers_get_the_drivers_vipo_and_its_commit(monkeypatch):
    """Joining a cluster, the workers import the vipo this process imported (py_modules) and tag its commit."""
    import vipo

    monkeypatch.delenv("VIPO_GIT_COMMIT", raising=False)
    env = shipped_code_env()
    assert env["py_modules"] == [str(Path(vipo.__file__).resolve().parent)]
    assert env["env_vars"] == {"VIPO_GIT_COMMIT": git_commit()}
    monkeypatch.setenv("VIPO_GIT_COMMIT", "abc123")  # set by the submitter: the workers inherit it already
    assert shipped_code_env() == {"py_modules": env["py_modules"]}


def test_init_ray_is_a_no_op_when_ray_is_running(ray_init_calls, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    init_ray(RayConfig(address="ray://head:10001"))
    assert ray_init_calls == []


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": []}) == {"a.b": "1", "a.c.d": "x", "e": "[]"}


def test_a_launch_is_a_new_run_and_only_a_resume_of_its_folder_reopens_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = JobConfig(output_dir=tmp_path, seed=5)
    folder = tmp_path / "run-a"
    logger = build_logger(cfg.tracking, tmp_path, "run-a", run_folder=folder, resume=True)
    logger.log_config(cfg, run_identity(cfg))
    for step, loss in ((1, 0.5), (2, 0.4), (3, 0.3)):
        logger.log_metrics({"loss": loss}, step=step)
    logger.log_images({"grid": np.zeros((8, 8, 3), np.uint8)}, step=1)
    logger.close("FAILED")
    assert read_run_id(folder) == logger.run_id

    again = build_logger(cfg.tracking, tmp_path, "run-a", run_folder=folder, resume=True)
    assert again.run_id == logger.run_id  # the resume reopens the run the folder records
    again.log_config(cfg, {"extra": "1"})
    for step, loss in ((2, 0.41), (3, 0.31), (4, 0.2)):  # steps 2-3 redone after a checkpoint at step 1
        again.log_metrics({"loss": loss}, step=step)
    again.close()

    client = MlflowClient(resolve_tracking_uri(cfg.tracking, tmp_path))
    run = client.get_run(logger.run_id)
    assert run.data.params["seed"] == "5"
    assert run.data.tags["vipo.config_hash"] == config_hash(cfg) and run.data.tags["extra"] == "1"
    history = client.get_metric_history(logger.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.4), (3, 0.3), (4, 0.2)]
    names = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"config.yaml", "environment.txt", "images"} <= names
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())  # sqlite: under output_dir

    fresh = build_logger(cfg.tracking, tmp_path, "run-a", run_folder=folder)  # a new launch, same name and folder
    elsewhere = build_logger(cfg.tracking, tmp_path, "run-a", run_folder=tmp_path / "other", resume=True)
    assert len({logger.run_id, fresh.run_id, elsewhere.run_id}) == 3
    assert read_run_id(folder) == fresh.run_id


def test_disabled_tracking_and_other_ranks_log_in_memory(tmp_path):
    off = build_logger(TrackingConfig(enabled=False), tmp_path, "x")
    rank1 = build_logger(TrackingConfig(), tmp_path, "x", rank=1)
    for logger in (off, rank1):
        logger.log_metrics({"loss": 1.0}, 0)
        assert logger.metrics == {"loss": [(0, 1.0)]}
    assert not (tmp_path / "mlflow.db").exists()


def test_local_ray_start_is_retried_only_when_the_node_misses_its_start_up_window(monkeypatch):
    from vipo.tracking.ray_session import start_local_ray

    calls = []

    def init(**kwargs):
        calls.append(("init", kwargs))
        if sum(name == "init" for name, _ in calls) < 3:
            raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(("shutdown", None)))
    start_local_ray(num_cpus=1)
    assert [name for name, _ in calls] == ["init", "shutdown", "init", "shutdown", "init"]
    assert all(kwargs == {"num_cpus": 1} for name, kwargs in calls if name == "init")

    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kwargs: (_ for _ in ()).throw(ValueError("bad argument")))
    with pytest.raises(ValueError, match="bad argument"):
        start_local_ray(num_cpus=1)
    assert calls == []  # any other error: no retry, no shutdown

    calls.clear()

    def never_starts(**kwargs):
        calls.append(("init", kwargs))
        raise Exception("The current node timed out during startup.")

    monkeypatch.setattr(ray, "init", never_starts)
    with pytest.raises(Exception, match="timed out during startup"):  # the last attempt's error is the caller's
        start_local_ray(attempts=2, num_cpus=1)
    assert [name for name, _ in calls] == ["init", "shutdown", "init"]


def test_a_new_sqlite_store_and_the_system_metrics_monitor_print_no_mlflow_notes(tmp_path):
    # In a fresh interpreter: MLflow sets its logger's level when first imported, which is what made these appear.
    script = ("import sys\n"
              "from vipo.tracking import MLflowLogger\n"
              "logger = MLflowLogger(sys.argv[1], 'quiet', 'run', system_metrics_interval_s=1)\n"
              "logger.close()\n"
              "print('run', logger.run_id)\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-c", script, uri], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert MlflowClient(uri).get_run(done.stdout.split()[-1]).info.status == "FINISHED"
    assert " INFO mlflow" not in done.stdout + done.stderr, done.stderr
