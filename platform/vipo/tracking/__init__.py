"""Tracking: local-or-cluster Ray, MLflow logging and run identity."""

from vipo.tracking.identity import file_hash, git_commit, run_identity
from vipo.tracking.logger import MemoryLogger, MLflowLogger, RunLogger, build_logger, flatten, resolve_tracking_uri
from vipo.tracking.ray_session import init_ray, tune_verbosity, verbose

__all__ = [
    "MLflowLogger",
    "MemoryLogger",
    "RunLogger",
    "build_logger",
    "file_hash",
    "flatten",
    "git_commit",
    "init_ray",
    "tune_verbosity",
    "verbose",
    "resolve_tracking_uri",
    "run_identity",
]
