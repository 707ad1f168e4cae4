"""Connect to Ray: a cluster when an address is given (config or ``RAY_ADDRESS``), else a local instance."""

from __future__ import annotations

import os
from pathlib import Path

import vipo
from vipo.config import RayConfig
from vipo.tracking.identity import git_commit

__all__ = ["init_ray", "shipped_code_env"]


def shipped_code_env() -> dict:
    """The runtime env that makes a cluster's workers run this process's ``vipo`` and record its identity.

    Under ``ray job submit --working-dir`` the driver imports ``vipo`` from the uploaded ``platform/``; workers
    would import the image's installed copy, so the package goes along as a ``py_modules`` entry. Its commit is
    taken here, in the shipped checkout (workers' copy has no ``.git``), unless ``VIPO_GIT_COMMIT`` is set already.
    """
    env: dict = {"py_modules": [str(Path(vipo.__file__).resolve().parent)]}
    if not os.environ.get("VIPO_GIT_COMMIT"):
        env["env_vars"] = {"VIPO_GIT_COMMIT": git_commit()}
    return env


def init_ray(config: RayConfig) -> None:
    """Start or join Ray once per process; a second call is a no-op (tests share one session)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=shipped_code_env())
        return
    ray.init(
        num_cpus=config.num_cpus or os.cpu_count(),
        num_gpus=config.num_gpus,
        include_dashboard=False,
    )
