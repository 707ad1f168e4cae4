"""Connect to Ray: a cluster when an address is given (config or ``RAY_ADDRESS``), else a local instance."""

from __future__ import annotations

import os

from vipo.config import RayConfig

__all__ = ["init_ray", "job_env_vars"]

#: Ray Train records its runs for the dashboard's Train view only when this is set where the trainer runs.
TRAIN_STATE_TRACKING = "RAY_TRAIN_ENABLE_STATE_TRACKING"


def job_env_vars(tracking_uri: str | None) -> dict[str, str]:
    """The variables every Ray process of the job inherits: the MLflow tracking URI and Train state tracking.

    A variable already in this process's environment is left out: a ``ray job submit --runtime-env-json`` job
    carries it to every worker already, and Ray refuses to merge the same key from ``ray.init``.
    """
    wanted = {TRAIN_STATE_TRACKING: "1", **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    return {key: value for key, value in wanted.items() if key not in os.environ}


def init_ray(config: RayConfig, tracking_uri: str | None = None) -> None:
    """Start or join Ray once per process; a second call is a no-op (tests share one session).

    ``tracking_uri`` (the launch's resolved MLflow URI) reaches every worker through the job's runtime environment,
    so no Ray task or actor falls back to a store of its own."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env_vars = job_env_vars(tracking_uri)
    # The trainer object runs in this process: it reads the state-tracking switch here.
    os.environ.setdefault(TRAIN_STATE_TRACKING, "1")
    runtime_env = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **runtime_env)
        return
    ray.init(
        num_cpus=config.num_cpus or os.cpu_count(),
        num_gpus=config.num_gpus,
        include_dashboard=False,
        **runtime_env,
    )
