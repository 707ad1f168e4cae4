"""Tracking: local-or-cluster Ray, MLflow logging and run identity."""

from vipo.tracking.identity import (
    accelerator_tags,
    code_root,
    code_version,
    environment_freeze,
    file_hash,
    git_commit,
    run_identity,
)
from vipo.tracking.logger import (
    RUN_FILE,
    MemoryLogger,
    MLflowLogger,
    RunLogger,
    build_logger,
    flatten,
    is_server_uri,
    launch_tracking_uri,
    read_run_id,
    resolve_tracking_uri,
    write_run_id,
)
from vipo.tracking.ray_session import init_ray, tune_verbosity, verbose

__all__ = [
    "MLflowLogger",
    "MemoryLogger",
    "RUN_FILE",
    "RunLogger",
    "accelerator_tags",
    "build_logger",
    "code_root",
    "code_version",
    "environment_freeze",
    "file_hash",
    "flatten",
    "git_commit",
    "init_ray",
    "is_server_uri",
    "launch_tracking_uri",
    "read_run_id",
    "resolve_tracking_uri",
    "run_identity",
    "tune_verbosity",
    "verbose",
    "write_run_id",
]
