"""Shared fixtures. Ray starts once per test session (start-up costs seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The whole suite shares two cores; one intra-op thread per process keeps Ray workers from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs and 2 *logical* GPUs (for the GPU-actor scheduling path; no CUDA)."""
    import ray

    from vipo.tracking.ray_session import TRIAL_DIR_CHDIR, start_local_ray

    if not ray.is_initialized():
        start_local_ray(
            num_cpus=4,
            num_gpus=2,
            object_store_memory=300 * 1024**2,
            include_dashboard=False,
            # Workers unpickle functions defined in test modules by module name: tests/ must be importable there.
            runtime_env={"env_vars": {
                "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", TRIAL_DIR_CHDIR: "0",  # as init_ray sets
                "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
            }},
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on loopback (sqlite backend, proxied artifact store), stopped by process group."""
    from servers import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real ``ray start --head`` with its dashboard/job server on loopback, its own temp dir and ports, and token
    auth (as cluster.yaml runs it; clients use ``ray_head.client_env``).

    Short temp dir: Ray's socket paths must stay under the 107-byte AF_UNIX limit."""
    import secrets
    import tempfile

    from servers import RayNode

    temp_dir = Path(tempfile.mkdtemp(prefix="vipo-ray-"))
    head = RayNode(temp_dir, num_cpus=4, auth_token=secrets.token_hex(16)).start()
    yield head
    head.stop()
