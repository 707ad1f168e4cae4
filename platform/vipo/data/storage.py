"""Where shard files live: a local or shared folder, or an object-store prefix (``s3://``, ``gs://``), through
pyarrow's filesystems, so one writer works for all of them.

A :class:`ShardStore` is a picklable address (the URI string); each process resolves its own filesystem on first
use, so Ray workers on other nodes write straight to the store. On a local filesystem a file is written under a
hidden temporary name, fsynced and renamed into place; on an object store the upload itself is atomic (an object
exists only once its upload completes), so it is written under its final name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

__all__ = ["ShardStore", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class ShardStore:
    """A folder of shard files named by ``uri``: a path (local or a shared mount) or a pyarrow filesystem URI."""

    uri: str
    _resolved: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {"uri": self.uri}  # filesystems are resolved again where the store is used

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "uri", state["uri"])
        object.__setattr__(self, "_resolved", None)

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if self._resolved is None:
            if "://" in self.uri:
                resolved = pafs.FileSystem.from_uri(self.uri)
            else:
                resolved = (pafs.LocalFileSystem(), str(Path(self.uri).resolve()))
            object.__setattr__(self, "_resolved", resolved)
        return self._resolved

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._filesystem()[0]

    @property
    def is_local(self) -> bool:
        """A POSIX filesystem: writes go through a temp name, fsync and rename."""
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def local_folder(self) -> Path | None:
        return Path(self._filesystem()[1]) if self.is_local else None

    def path(self, name: str) -> str:
        return f"{self._filesystem()[1].rstrip('/')}/{name}"

    def where(self, name: str) -> str:
        """``name`` as users should see it in messages (a path or a URI)."""
        return self.path(name) if self.is_local else f"{self.uri.rstrip('/')}/{name}"

    def ensure(self) -> None:
        self.filesystem.create_dir(self._filesystem()[1], recursive=True)

    def list(self) -> list[str]:
        """Names of the files in the store (hidden temporary files included)."""
        selector = pafs.FileSelector(self._filesystem()[1], allow_not_found=True)
        return sorted(info.base_name for info in self.filesystem.get_file_info(selector)
                      if info.type == pafs.FileType.File)

    def exists(self, name: str) -> bool:
        return self.filesystem.get_file_info(self.path(name)).type == pafs.FileType.File

    def size(self, name: str) -> int:
        return self.filesystem.get_file_info(self.path(name)).size

    def delete(self, name: str) -> None:
        if self.exists(name):
            self.filesystem.delete_file(self.path(name))

    def open_input(self, name: str):
        return self.filesystem.open_input_file(self.path(name))
