"""Where job outputs land: relative output paths resolve against a storage root, never a Ray job's temp copy.

``ray job submit --working-dir .`` runs the entrypoint inside Ray's per-session copy of the working dir
(``<temp>/session_<date>_<pid>/runtime_resources/working_dir_files/...``), which Ray deletes with the session. A
relative ``output_dir`` resolved there would vanish, so a storage root (the cluster's shared storage) anchors
relative paths, and a path that still lands in a session dir is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["STORAGE_ROOT_ENV", "SessionDirError", "ray_session_dir", "resolve_output_path"]

STORAGE_ROOT_ENV = "VIPO_STORAGE_ROOT"

# Ray names a session folder ``session_<%Y-%m-%d_%H-%M-%S_%f>_<pid>``; ``session_latest`` links to the newest.
_SESSION_DIR_NAME = re.compile(r"^session_(latest|\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_\d+)$")


class SessionDirError(ValueError):
    """An output path inside a Ray session dir: Ray deletes it with the session."""


def ray_session_dir(path: str | Path) -> Path | None:
    """The Ray session folder that ``path`` (absolute) lies in, or ``None``."""
    path = Path(path)
    for folder in (path, *path.parents):
        if _SESSION_DIR_NAME.match(folder.name):
            return folder
    return None


def resolve_output_path(path: str | Path, storage_root: str | Path | None = None) -> Path:
    """``path`` made absolute: a relative one joins ``storage_root`` (default ``$VIPO_STORAGE_ROOT``, else the
    working directory). Raises :class:`SessionDirError` when the result lies in a Ray session dir."""
    path = Path(path).expanduser()
    root = storage_root or os.environ.get(STORAGE_ROOT_ENV) or None
    if not path.is_absolute() and root is not None:
        path = Path(root).expanduser() / path
    path = path.resolve()
    session = ray_session_dir(path)
    if session is not None:
        raise SessionDirError(
            f"{path} is inside the Ray session dir {session}, deleted with the session: set {STORAGE_ROOT_ENV} or "
            f"storage.root to shared storage, or give an absolute path")
    return path
