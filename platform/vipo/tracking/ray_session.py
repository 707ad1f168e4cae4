"""Connect to Ray: a cluster when an address is given (config or ``RAY_ADDRESS``), else a local instance.

By default a job's terminal shows vipo's own lines (a line per step, progress bars, results); Ray's worker output,
Tune's status tables and library warnings go to Ray's log files (``<temp dir>/session_latest/logs``).
``vipo --verbose`` (``VIPO_VERBOSE=1``, inherited by Ray's workers) lets them through.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import vipo
from vipo.config import RayConfig
from vipo.tracking.identity import git_commit

__all__ = ["init_ray", "shipped_code_env", "tune_verbosity", "verbose"]

VERBOSE_ENV = "VIPO_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def tune_verbosity() -> int:
    """Tune's ``RunConfig(verbose=...)``: its periodic status tables only when asked for."""
    return 1 if verbose() else 0


def _quiet_libraries() -> None:
    # Libraries' own chatter (Ray's start-up notes, diffusers/transformers deprecation notes) is not the user's.
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "diffusers", "transformers", "mlflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|diffusers|transformers|ray|peft)\.")


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
    loud = verbose()
    if not loud:
        _quiet_libraries()
    output = {"log_to_driver": loud, "logging_level": logging.INFO if loud else logging.ERROR}
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=shipped_code_env(), **output)
        return
    ray.init(
        num_cpus=config.num_cpus or os.cpu_count(),
        num_gpus=config.num_gpus,
        include_dashboard=False,
        runtime_env={"env_vars": {VERBOSE_ENV: "1" if loud else "0"}},
        **output,
    )
