"""One logger protocol for every job, with MLflow and in-memory backends.

Jobs call ``log_config`` once (resolved config as params + YAML artifact, identity as tags), ``log_metrics`` per
step, ``log_images``/``log_artifact`` for pictures and files, and ``close``. Only rank 0 gets a real backend.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
import yaml
from pydantic import BaseModel

from vipo.config import TrackingConfig, dump_config

__all__ = ["MemoryLogger", "MLflowLogger", "RunLogger", "build_logger", "flatten", "resolve_tracking_uri"]


class RunLogger(Protocol):
    run_id: str | None

    def log_config(self, config: BaseModel, tags: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...


def flatten(data: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested dict → ``{"a.b.c": "value"}`` (the form MLflow params and Tune search spaces use)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def resolve_tracking_uri(tracking: TrackingConfig, output_dir: str | Path) -> str:
    """Config first, then ``MLFLOW_TRACKING_URI``, else a sqlite database under ``output_dir``."""
    if tracking.tracking_uri:
        return tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = Path(output_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


class MLflowLogger:
    """Logs to one MLflow run through ``MlflowClient`` (no global fluent state, so several runs can coexist).

    ``resume=True`` reopens the latest run of the same experiment and name, so a relaunched job keeps one run.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, *, artifact_root: str | Path | None = None,
                 resume: bool = False, tags: Mapping[str, str] | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = Path(artifact_root).resolve().as_uri() if artifact_root else None
            experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        self.run_id = None
        if resume:
            runs = self.client.search_runs(
                [experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'",
                order_by=["attributes.start_time DESC"], max_results=1,
            )
            if runs:
                self.run_id = runs[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
        if self.run_id is None:
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
        elif tags:
            self.set_tags(tags)

    def log_config(self, config: BaseModel, tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        params = flatten(dump_config(config))
        existing = self.client.get_run(self.run_id).data.params
        # A resumed run already holds the params; MLflow refuses to change a logged param, so log only new ones.
        fresh = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])
        self.set_tags(tags)
        self.client.log_text(self.run_id, yaml.safe_dump(dump_config(config), sort_keys=False), "config.yaml")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start:start + 1000])

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        for name, image in images.items():
            self.client.log_image(self.run_id, image, artifact_file=f"images/{name}/step_{step:07d}.png")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class MemoryLogger:
    """Keeps everything in memory: for tests, non-zero ranks and ``tracking.enabled: false``."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.images: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.artifacts: list[tuple[str, str | None]] = []
        self.texts: dict[str, str] = {}
        self.status: str | None = None

    def log_config(self, config: BaseModel, tags: Mapping[str, str]) -> None:
        self.params.update(flatten(dump_config(config)))
        self.tags.update(tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, float(value)))

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        for name, image in images.items():
            self.images.setdefault(name, []).append((step, image))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((str(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.texts[artifact_file] = text

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})

    def close(self, status: str = "FINISHED") -> None:
        self.status = status


def build_logger(tracking: TrackingConfig, output_dir: str | Path, run_name: str, *, rank: int = 0,
                 resume: bool = False, tags: Mapping[str, str] | None = None) -> RunLogger:
    """MLflow on rank 0 when tracking is enabled, an in-memory logger otherwise."""
    if rank != 0 or not tracking.enabled:
        return MemoryLogger()
    return MLflowLogger(
        resolve_tracking_uri(tracking, output_dir), tracking.experiment, tracking.run_name or run_name,
        artifact_root=Path(output_dir) / "mlartifacts", resume=resume, tags=tags,
    )

