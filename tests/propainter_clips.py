"""A synthetic clip for ProPainter training tests: a random texture translating right by ``shift`` px per frame
(wrapping), stored as a frame folder, and its exact flows stored as a flows root (no RAFT needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vipo.data.flow_store import FLOWS_META, write_video_flows

VIDEO_ID = "frame_folders/clip"
"""The clip's video id under a ``frame_folders`` source without a name."""


def write_translating_clip(root: Path, num_frames: int, height: int, width: int, shift: int = 2) -> Path:
    """``root/clip/00000.png ...``; returns ``root``."""
    texture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    (root / "clip").mkdir(parents=True)
    for t in range(num_frames):
        Image.fromarray(np.roll(texture, shift * t, axis=1)).save(root / "clip" / f"{t:05d}.png")
    return root


def write_translation_flows(root: Path, num_frames: int, height: int, width: int, shift: int = 2) -> Path:
    """The clip's exact flows (forward dx = +shift, backward dx = -shift) as a flows root; returns ``root``."""
    forward = np.zeros((num_frames - 1, 2, height, width), np.float32)
    forward[:, 0] = shift
    write_video_flows(root, VIDEO_ID, forward, -forward)
    (root / FLOWS_META).write_text(json.dumps({"size": [height, width]}))
    return root
