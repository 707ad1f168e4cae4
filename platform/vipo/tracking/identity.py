"""Run identity: what makes a run identifiable afterwards (config hash, code, data, parent checkpoint).

The research group lost weeks to mislabelled runs; every job records these fields as MLflow tags.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path

from pydantic import BaseModel

import vipo
from vipo.config import config_hash

_SOURCE_DIR = Path(__file__).resolve().parent


def git_commit(cwd: Path = _SOURCE_DIR) -> str:
    """The checkout's HEAD sha, suffixed ``-dirty`` when tracked files differ; ``unknown`` outside git.

    ``VIPO_GIT_COMMIT`` overrides it, for clusters that ship code without ``.git`` (Ray ``runtime_env``).
    """
    if os.environ.get("VIPO_GIT_COMMIT"):
        return os.environ["VIPO_GIT_COMMIT"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), e.g. a data manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_identity(
    config: BaseModel,
    *,
    manifest_path: str | Path | None = None,
    parent_checkpoint: str | Path | None = None,
) -> dict[str, str]:
    """Tags that identify a run: ``vipo.config_hash``, ``vipo.git_commit``, ``vipo.manifest_hash``, ...

    ``manifest_path`` is the data manifest the run reads; ``parent_checkpoint`` the weights it starts from.
    Missing ones are recorded as ``none`` so a query can tell "not used" from "not recorded".
    """
    return {
        "vipo.config_hash": config_hash(config),
        "vipo.git_commit": git_commit(),
        "vipo.manifest_hash": file_hash(manifest_path) if manifest_path else "none",
        "vipo.manifest_path": str(manifest_path) if manifest_path else "none",
        "vipo.parent_checkpoint": str(parent_checkpoint) if parent_checkpoint else "none",
        "vipo.version": vipo.__version__,
        "vipo.host": socket.gethostname(),
    }
