"""Connect to Ray: a cluster when an address is given (config or ``RAY_ADDRESS``), else a local instance.

By default a job's terminal shows vipo's own lines (a line per step, progress bars, results); Ray's worker output,
Tune's status tables and library warnings go to Ray's log files (``<temp dir>/session_latest/logs``).
``vipo --verbose`` (``VIPO_VERBOSE=1``, inherited by Ray's workers) lets them through.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import vipo
from vipo.config import RayConfig
from vipo.tracking.identity import git_commit
from vipo.tracking.logger import quiet_mlflow

__all__ = ["init_ray", "job_env_vars", "shipped_code_env", "start_local_ray", "tune_verbosity", "verbose"]

VERBOSE_ENV = "VIPO_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def tune_verbosity() -> int:
    """Tune's ``RunConfig(verbose=...)``: its periodic status tables only when asked for."""
    return 1 if verbose() else 0


def _quiet_libraries() -> None:
    # Libraries' own chatter (Ray's start-up notes, diffusers/transformers deprecation notes) is not the user's.
    # Ray Data sets its loggers' levels when first imported, so it is imported (every job uses it) before the
    # levels are set here.
    import ray.data  # noqa: F401

    quiet_mlflow()
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


#: Ray Train records its runs for the dashboard's Train view only when this is set where the trainer runs.
TRAIN_STATE_TRACKING = "RAY_TRAIN_ENABLE_STATE_TRACKING"
#: Tune moves each trial into its own folder unless this is "0"; vipo's trials write only under their configured
#: output folders, and relative paths in configs and overrides must mean what they meant at launch.
TRIAL_DIR_CHDIR = "RAY_CHDIR_TO_TRIAL_DIR"


def job_env_vars(tracking_uri: str | None) -> dict[str, str]:
    """The variables every Ray process of the job inherits: the MLflow tracking URI, Train state tracking, and Tune
    trials kept in the launch's working directory.

    A variable already in this process's environment is left out: a ``ray job submit --runtime-env-json`` job
    carries it to every worker already, and Ray refuses to merge the same key from ``ray.init``.
    """
    wanted = {TRAIN_STATE_TRACKING: "1", TRIAL_DIR_CHDIR: "0",
              **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {})}
    return {key: value for key, value in wanted.items() if key not in os.environ}


def init_ray(config: RayConfig, tracking_uri: str | None = None) -> None:
    """Start or join Ray once per process; a second call is a no-op (tests share one session).

    ``tracking_uri`` (the launch's resolved MLflow URI) reaches every worker through the job's runtime environment,
    so no Ray task or actor falls back to a store of its own."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    loud = verbose()
    if not loud:
        _quiet_libraries()
    output = {"log_to_driver": loud, "logging_level": logging.INFO if loud else logging.ERROR}
    env_vars = job_env_vars(tracking_uri)
    # The trainer object runs in this process: it reads the state-tracking switch here.
    os.environ.setdefault(TRAIN_STATE_TRACKING, "1")
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        runtime_env = shipped_code_env()
        if env_vars:
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
        ray.init(address=address, runtime_env=runtime_env, **output)
        return
    start_local_ray(
        num_cpus=config.num_cpus or os.cpu_count(),
        num_gpus=config.num_gpus,
        include_dashboard=False,
        runtime_env={"env_vars": {VERBOSE_ENV: "1" if loud else "0", **env_vars}},
        **output,
    )


def start_local_ray(attempts: int = 3, **init_kwargs) -> None:
    """``ray.init(**init_kwargs)`` for a new local instance, retried when the node misses Ray's start-up window.

    Ray gives a new node a fixed 30 s to register, and its agent processes can need longer on a busy laptop or CI
    machine; the failed attempt's processes are shut down before the next."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as err:
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"Ray did not start within its 30 s window (attempt {attempt}/{attempts}); retrying",
                  file=sys.stderr, flush=True)
