"""Precomputed optical flow on disk (what ``vipo flows`` writes and the ProPainter datasets read).

Layout under a flows root (one folder per video, one compressed file per consecutive frame pair)::

    <root>/flows.json                          size (height, width), RAFT iterations, weights
    <root>/<video id>/00000.npz                forward (0 -> 1) and backward (1 -> 0), each (2, H, W) float16
    <root>/<video id>/_DONE                    written last: the video is complete

Each pair file is written atomically, and ``_DONE`` marks a finished video, so an interrupted job is resumed by
skipping done videos and never leaves a torn file; readers load only the pairs a clip needs. Flows are in pixels
at the stored frame size, channel 0 = dx, following :class:`vipo.models.propainter.BidirectionalRAFT`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from vipo.data.errors import BadSample, DataError

__all__ = ["DONE_MARKER", "FLOWS_META", "FlowStore", "atomic_write_bytes", "pair_file", "write_video_flows"]

DONE_MARKER = "_DONE"
FLOWS_META = "flows.json"


def pair_file(root: Path, video_id: str, index: int) -> Path:
    return Path(root) / video_id / f"{index:05d}.npz"


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename: readers never see a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_video_flows(root: Path, video_id: str, forward: np.ndarray, backward: np.ndarray) -> None:
    """Write one video's flows, (N-1, 2, H, W) each, as float16 pair files, then its ``_DONE`` marker."""
    for index, (fwd, bwd) in enumerate(zip(forward, backward)):
        atomic_write_bytes(_npz_bytes(forward=fwd.astype(np.float16), backward=bwd.astype(np.float16)),
                           pair_file(root, video_id, index))
    (Path(root) / video_id / DONE_MARKER).write_text(f"{len(forward)}\n")


class FlowStore:
    """Read access to a flows root; checks that it holds flows at ``size`` = (height, width)."""

    def __init__(self, root: str | Path, size: tuple[int, int]):
        self.root = Path(root)
        meta = self.root / FLOWS_META
        if not meta.is_file():
            raise DataError(f"{meta}: missing; {self.root} is not a flows root (write one with `vipo flows`)")
        stored = tuple(json.loads(meta.read_text())["size"])
        if stored != tuple(size):
            raise DataError(f"{self.root}: flows are {stored[0]}x{stored[1]} (height x width) but training frames are "
                            f"{size[0]}x{size[1]}; recompute them with `vipo flows` at data.size")

    def is_done(self, video_id: str) -> bool:
        return (self.root / video_id / DONE_MARKER).is_file()

    def read(self, video_id: str, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Flows of pairs ``start .. start+count-1``: (forward, backward), (count, 2, H, W) float32 each."""
        if not self.is_done(video_id):
            raise BadSample(self.root / video_id, "no precomputed flows for this video (run `vipo flows` on it)")
        forward, backward = [], []
        for index in range(start, start + count):
            path = pair_file(self.root, video_id, index)
            try:
                with np.load(path) as data:
                    forward.append(data["forward"])
                    backward.append(data["backward"])
            except (OSError, ValueError, KeyError) as err:
                raise BadSample(path, f"unreadable flow file ({err}); rerun `vipo flows --overwrite`") from None
        return np.stack(forward).astype(np.float32), np.stack(backward).astype(np.float32)
