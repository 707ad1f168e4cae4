"""Run identity and the MLflow logger on a sqlite backend."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from vipo.config import JobConfig, RayConfig, TrackingConfig, config_hash
from vipo.tracking import build_logger, flatten, git_commit, init_ray, resolve_tracking_uri, run_identity
from vipo.tracking.ray_session import shipped_code_env


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
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


def test_init_ray_defaults_to_local_with_the_machine_cpus(ray_init_calls):
    init_ray(RayConfig())
    [call] = ray_init_calls
    assert (call["num_cpus"], call["num_gpus"], call["include_dashboard"]) == (os.cpu_count(), None, False)
    assert "address" not in call


def test_init_ray_address_from_config_beats_environment(ray_init_calls, monkeypatch):
    init_ray(RayConfig(num_cpus=3, num_gpus=1))
    monkeypatch.setenv("RAY_ADDRESS", "ray://env-head:10001")
    init_ray(RayConfig())
    init_ray(RayConfig(address="ray://config-head:10001"))
    shipped = shipped_code_env()
    local, *joined = ray_init_calls
    assert (local["num_cpus"], local["num_gpus"]) == (3, 1) and "address" not in local
    assert [(call["address"], call["runtime_env"]) for call in joined] == [("ray://env-head:10001", shipped),
                                                                          ("ray://config-head:10001", shipped)]


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


def test_mlflow_logger_roundtrip_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = JobConfig(output_dir=tmp_path, seed=5)
    logger = build_logger(cfg.tracking, tmp_path, "run-a", resume=True)
    logger.log_config(cfg, run_identity(cfg))
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.log_images({"grid": np.zeros((8, 8, 3), np.uint8)}, step=1)
    logger.close()

    again = build_logger(cfg.tracking, tmp_path, "run-a", resume=True)
    assert again.run_id == logger.run_id  # a relaunch keeps one MLflow run
    again.log_config(cfg, {"extra": "1"})
    again.log_metrics({"loss": 0.25}, step=2)
    again.close()

    client = MlflowClient(resolve_tracking_uri(cfg.tracking, tmp_path))
    run = client.get_run(logger.run_id)
    assert run.data.params["seed"] == "5"
    assert run.data.tags["vipo.config_hash"] == config_hash(cfg)
    assert [m.value for m in client.get_metric_history(logger.run_id, "loss")] == [0.5, 0.25]
    names = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"config.yaml", "images"} <= names
    assert run.info.status == "FINISHED"


def test_disabled_tracking_and_other_ranks_log_in_memory(tmp_path):
    off = build_logger(TrackingConfig(enabled=False), tmp_path, "x")
    rank1 = build_logger(TrackingConfig(), tmp_path, "x", rank=1)
    for logger in (off, rank1):
        logger.log_metrics({"loss": 1.0}, 0)
        assert logger.metrics == {"loss": [(0, 1.0)]}
    assert not (tmp_path / "mlflow.db").exists()
