"""Run identity: what makes a run identifiable afterwards (config hash, code, data, parent checkpoint, machine).

The research group lost weeks to mislabelled runs; every job records these fields as MLflow tags.
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

import vipo
from vipo.config import config_hash

__all__ = ["accelerator_tags", "code_root", "code_version", "environment_freeze", "file_hash", "git_commit",
           "run_identity"]


def code_root() -> Path:
    """The folder holding the code that runs: the checkout this ``vipo`` package was imported from."""
    # platform/vipo/__init__.py → the repository root two levels above the package.
    return Path(vipo.__file__).resolve().parents[2]


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True, timeout=30).stdout


def code_version(root: Path) -> dict[str, str]:
    """``vipo.git_commit`` (HEAD, suffixed ``-dirty``), ``vipo.git_dirty`` and ``vipo.git_diff_hash`` of ``root``.

    A tree is dirty when tracked files differ from HEAD or untracked files that git does not ignore exist; the diff
    hash (sha256 of ``git diff HEAD`` plus the untracked files' names and bytes, 16 hex digits) tells two dirty runs
    of the same commit apart. ``VIPO_GIT_COMMIT`` overrides the commit, for code shipped without ``.git``.
    """
    if os.environ.get("VIPO_GIT_COMMIT"):
        return {"vipo.git_commit": os.environ["VIPO_GIT_COMMIT"], "vipo.git_dirty": "unknown",
                "vipo.git_diff_hash": "none"}
    try:
        sha = _git(root, "rev-parse", "HEAD").decode().strip()
        diff = _git(root, "diff", "HEAD", "--binary")
        untracked = [name for name in _git(root, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
                     if name]
    except (OSError, subprocess.SubprocessError):
        return {"vipo.git_commit": "unknown", "vipo.git_dirty": "unknown", "vipo.git_diff_hash": "none"}
    if not diff and not untracked:
        return {"vipo.git_commit": sha, "vipo.git_dirty": "false", "vipo.git_diff_hash": "none"}
    digest = hashlib.sha256(diff)
    for name in sorted(untracked):
        digest.update(b"\0untracked\0" + name + b"\0")
        path = root / os.fsdecode(name)
        if path.is_file():
            digest.update(path.read_bytes())
    return {"vipo.git_commit": f"{sha}-dirty", "vipo.git_dirty": "true", "vipo.git_diff_hash": digest.hexdigest()[:16]}


def git_commit(root: Path | None = None) -> str:
    """The commit of ``root`` (default :func:`code_root`), ``-dirty`` when modified; ``unknown`` outside git."""
    return code_version(root or code_root())["vipo.git_commit"]


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), e.g. a data manifest."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def accelerator_tags() -> dict[str, str]:
    """``vipo.accelerator`` (the CUDA device names, or ``cpu``) and ``vipo.accelerator_count`` of this process."""
    import torch

    if not torch.cuda.is_available():
        return {"vipo.accelerator": "cpu", "vipo.accelerator_count": "0"}
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return {"vipo.accelerator": ", ".join(names), "vipo.accelerator_count": str(torch.cuda.device_count())}


def environment_freeze() -> str:
    """The interpreter, platform and every installed distribution as ``name==version`` lines (sorted)."""
    packages = sorted({f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions()
                       if dist.metadata["Name"]}, key=str.lower)
    header = [f"# python {sys.version.split()[0]} ({sys.executable})", f"# platform {platform.platform()}"]
    return "\n".join([*header, *packages]) + "\n"


def run_identity(
    config: BaseModel,
    *,
    manifest_path: str | Path | None = None,
    parent_checkpoint: str | Path | None = None,
    root: Path | None = None,
) -> dict[str, str]:
    """Tags that identify a run: ``vipo.config_hash``, ``vipo.git_commit``, ``vipo.manifest_hash``, host, ...

    ``manifest_path`` is the data manifest the run reads; ``parent_checkpoint`` the weights it starts from;
    ``root`` the code folder (default :func:`code_root`). Missing ones are recorded as ``none`` so a query can tell
    "not used" from "not recorded".
    """
    return {
        "vipo.config_hash": config_hash(config),
        **code_version(root or code_root()),
        "vipo.manifest_hash": file_hash(manifest_path) if manifest_path else "none",
        "vipo.manifest_path": str(manifest_path) if manifest_path else "none",
        "vipo.parent_checkpoint": str(parent_checkpoint) if parent_checkpoint else "none",
        "vipo.version": vipo.__version__,
        "vipo.host": socket.gethostname(),
        **accelerator_tags(),
    }
