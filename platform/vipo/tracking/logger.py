"""One logger protocol for every job, with MLflow and in-memory backends.

Jobs call ``log_config`` once (resolved config as params + YAML artifact, identity as tags), ``log_metrics`` per
step, ``log_images``/``log_artifact`` for pictures and files, and ``close``. Only rank 0 gets a real backend.

Run identity: a launch creates a new run; a resume reopens the run whose id the output folder (``mlflow_run.json``,
also copied into each training checkpoint) records, never a run found by name: two launches sharing a name are two
runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Mapping, Protocol
from urllib.parse import urlparse

import numpy as np
import yaml
from pydantic import BaseModel

from vipo.config import TrackingConfig, dump_config
from vipo.tracking.identity import environment_freeze

__all__ = ["RUN_FILE", "MemoryLogger", "MLflowLogger", "RunLogger", "build_logger", "flatten", "is_server_uri",
           "launch_tracking_uri", "quiet_mlflow", "read_run_id", "resolve_tracking_uri", "write_run_id"]

log = logging.getLogger(__name__)

#: The run record an output folder (and each training checkpoint) keeps: a resume reopens this run by id.
RUN_FILE = "mlflow_run.json"
_SERVER_SCHEMES = ("http", "https", "databricks")


class RunLogger(Protocol):
    run_id: str | None
    tracking_uri: str | None

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


def launch_tracking_uri(tracking: TrackingConfig, output_dir: str | Path) -> str | None:
    """The URI a launch logs to (see :func:`resolve_tracking_uri`), or None with tracking off."""
    return resolve_tracking_uri(tracking, output_dir) if tracking.enabled else None


def is_server_uri(tracking_uri: str) -> bool:
    """A tracking server owns its artifact store (``--artifacts-destination``, ``mlflow-artifacts:``)."""
    return urlparse(tracking_uri).scheme in _SERVER_SCHEMES


def read_run_id(folder: str | Path) -> str | None:
    """The MLflow run id recorded in ``folder`` (an output folder or a checkpoint), or None."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["run_id"]
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(f"{path}: unreadable MLflow run record ({err}); delete it to start a new run") from None


def write_run_id(folder: str | Path, run_id: str, tracking_uri: str) -> None:
    """Record ``run_id`` in ``folder`` so that a resume of this folder reopens the same run."""
    from vipo.train.checkpointing import atomic_write_text  # (imports torch: only where a record is written)

    record = {"run_id": run_id, "tracking_uri": tracking_uri}
    atomic_write_text(json.dumps(record, indent=2) + "\n", Path(folder) / RUN_FILE)


def quiet_mlflow() -> None:
    """Keep MLflow's INFO notes (creating a sqlite store's tables, starting the system-metrics monitor) out of the
    job's output; its warnings stay. MLflow sets its logger's level when first imported, so it is imported first."""
    import mlflow  # noqa: F401

    logger = logging.getLogger("mlflow")
    logger.setLevel(max(logger.level, logging.WARNING))  # a job that asked for less (ERROR) keeps it


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise the first use of a sqlite store: two jobs creating its schema at once fail otherwise."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    database = Path(tracking_uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        yield


def _experiment_id(client, experiment: str, artifact_root: str | Path | None, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    # Against a server the server's artifact store decides; a local path here would be the creating node's disk.
    location = Path(artifact_root).resolve().as_uri() if artifact_root and not is_server_uri(tracking_uri) else None
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except MlflowException as err:  # another job created it between the lookup and the create
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise err from None
        return found.experiment_id


class MLflowLogger:
    """Logs to one MLflow run through ``MlflowClient`` (no global fluent state, so several runs can coexist).

    ``run_id`` reopens that run (a resume; its metric steps up to the last logged one are not logged again), else a
    new run is created, a child of ``parent_run_id`` when given. ``system_metrics_interval_s`` starts MLflow's
    system-metrics monitor (CPU, memory, GPU utilisation and memory) sampling at that interval.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, *, artifact_root: str | Path | None = None,
                 run_id: str | None = None, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, system_metrics_interval_s: float | None = None):
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        self.tracking_uri = tracking_uri
        with _store_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            experiment_id = _experiment_id(self.client, experiment, artifact_root, tracking_uri)
        self._last_step: dict[str, int] = {}
        self.resumed = run_id is not None and self._reopen(run_id)
        if self.resumed:
            self.run_id = run_id
            if tags:
                self.set_tags(tags)
        else:
            tags = {**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self._monitor = self._start_system_metrics(system_metrics_interval_s)

    def _reopen(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            log.warning("MLflow run %s is not in %s: starting a new run", run_id, self.tracking_uri)
            return False
        if run.info.lifecycle_stage != "active":
            log.warning("MLflow run %s was deleted: starting a new run", run_id)
            return False
        # The latest value of each key sits at its largest step: anything up to it was logged before the resume.
        self._last_step = {metric.key: metric.step for metric in run.data._metric_objs}
        self.client.update_run(run_id, status="RUNNING")
        return True

    def _start_system_metrics(self, interval_s: float | None):
        if interval_s is None:
            return None
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=self.resumed,
                                       tracking_uri=self.tracking_uri)
        monitor.start()
        return monitor

    def log_config(self, config: BaseModel, tags: Mapping[str, str]) -> None:
        """Params (only new ones: a resumed run keeps its params), tags, ``config.yaml`` and ``environment.txt``."""
        from mlflow.entities import Param

        params = flatten(dump_config(config))
        existing = self.client.get_run(self.run_id).data.params
        # MLflow refuses to change a logged param, so log only new ones.
        fresh = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[start:start + 100])
        self.set_tags(tags)
        self.client.log_text(self.run_id, yaml.safe_dump(dump_config(config), sort_keys=False), "config.yaml")
        self.client.log_text(self.run_id, environment_freeze(), "environment.txt")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log at ``step``; a key already logged at ``step`` or later (work redone after a resume) is dropped, so
        every metric's steps strictly increase."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self._last_step.get(k, -1)]
        self._last_step.update({metric.key: step for metric in batch})
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
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self.client.set_terminated(self.run_id, status=status)


class MemoryLogger:
    """Keeps everything in memory: for tests, non-zero ranks and ``tracking.enabled: false``."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.tracking_uri: str | None = None
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
                 run_folder: str | Path | None = None, resume: bool = False, run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, system_metrics: bool = False) -> RunLogger:
    """MLflow on rank 0 when tracking is enabled, an in-memory logger otherwise.

    A launch creates a new run. A resume (``resume=True``) reopens the run recorded in ``run_folder``, or ``run_id``
    when given (read from a checkpoint): by id, never by name. The run's id is then recorded in ``run_folder``.
    ``system_metrics`` turns on MLflow's system metrics when ``tracking.system_metrics`` allows.
    """
    if rank != 0 or not tracking.enabled:
        return MemoryLogger()
    if resume and run_id is None and run_folder is not None:
        run_id = read_run_id(run_folder)
    tracking_uri = resolve_tracking_uri(tracking, output_dir)
    logger = MLflowLogger(
        tracking_uri, tracking.experiment, tracking.run_name or run_name,
        artifact_root=Path(output_dir) / "mlartifacts", run_id=run_id if resume else None,
        parent_run_id=tracking.parent_run_id, tags=tags,
        system_metrics_interval_s=tracking.system_metrics_interval_s if system_metrics and tracking.system_metrics
        else None,
    )
    if run_folder is not None:
        write_run_id(run_folder, logger.run_id, tracking_uri)
    return logger
