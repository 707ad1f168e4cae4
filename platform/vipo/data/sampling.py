"""Clip sampling as DiffuEraser trains, and the 4n+1 frame sampler of the video VAE.

Diffusion clips: a random contiguous window of ``nframes`` frames at about ``target_fps`` (stride
``max(fps // target_fps, 1)`` when the source fps is known, else 1; shrunk to fit when the video is too short for
it), reversed in time with probability ``reverse_prob``; frames are resized so they cover the target size (the
short side for a square target) and centre-cropped. A video with fewer than ``nframes`` frames cannot give a clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np
from pydantic import Field, PositiveInt

from vipo.config import Config
from vipo.data.errors import BadSample, SkipLog
from vipo.data.sources import Video

__all__ = [
    "ClipSamplingConfig",
    "ClipWindow",
    "build_clip_index",
    "frame_stride",
    "resize_center_crop",
    "resize_frames",
    "sample_window",
    "vae_frame_indices",
]


class ClipSamplingConfig(Config):
    """How training clips are cut. ``resolution`` is a square side or ``[height, width]``."""

    nframes: int = Field(default=22, ge=1)
    target_fps: float = Field(default=15.0, gt=0)
    reverse_prob: float = Field(default=0.5, ge=0, le=1)
    resolution: PositiveInt | tuple[PositiveInt, PositiveInt] = 512

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the output frames."""
        if isinstance(self.resolution, int):
            return self.resolution, self.resolution
        return self.resolution


@dataclass(frozen=True)
class ClipWindow:
    """A window of a video: ``nframes`` frames from ``start`` every ``stride`` frames, maybe played backwards."""

    start: int
    stride: int
    nframes: int
    reversed: bool = False

    @property
    def indices(self) -> list[int]:
        """Source frame indices in the order the clip shows them."""
        forward = [self.start + i * self.stride for i in range(self.nframes)]
        return forward[::-1] if self.reversed else forward


def frame_stride(num_frames: int, nframes: int, fps: float | None, target_fps: float = 15.0) -> int:
    """Stride giving about ``target_fps`` from ``fps``, shrunk so that ``nframes`` frames fit in the video."""
    stride = max(int(fps // target_fps), 1) if fps else 1
    if nframes > 1 and (nframes - 1) * stride + 1 > num_frames:
        stride = max((num_frames - 1) // (nframes - 1), 1)
    return stride


def sample_window(num_frames: int, fps: float | None, config: ClipSamplingConfig,
                  rng: np.random.Generator) -> ClipWindow | None:
    """A random clip window, or None when the video has fewer than ``config.nframes`` frames."""
    if num_frames < config.nframes:
        return None
    stride = frame_stride(num_frames, config.nframes, fps, config.target_fps)
    span = (config.nframes - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1))
    return ClipWindow(start, stride, config.nframes, bool(rng.random() < config.reverse_prob))


def resize_frames(frames: np.ndarray, size: tuple[int, int],
                  interpolation: Literal["auto", "nearest"] = "auto") -> np.ndarray:
    """Resize (F,H,W[,C]) frames to exactly ``size`` = (height, width); same dtype (bool masks included).

    ``auto`` averages areas when shrinking (no aliasing) and interpolates bilinearly when enlarging; masks use
    ``nearest`` so they stay binary.
    """
    height, width = size
    src_h, src_w = frames.shape[1:3]
    if (src_h, src_w) == (height, width):
        return frames.copy()
    if interpolation == "nearest":
        flag = cv2.INTER_NEAREST
    else:
        flag = cv2.INTER_AREA if height * width < src_h * src_w else cv2.INTER_LINEAR
    # cv2 has no bool type; a uint8 view round-trips masks exactly.
    source = frames.view(np.uint8) if frames.dtype == bool else frames
    out = np.stack([cv2.resize(frame, (width, height), interpolation=flag) for frame in source])
    return out.view(bool) if frames.dtype == bool else out


def resize_center_crop(frames: np.ndarray, size: tuple[int, int],
                       interpolation: Literal["auto", "nearest"] = "auto") -> np.ndarray:
    """Resize (F,H,W[,C]) frames so they cover ``size`` = (height, width) (the short side, for a square target),
    then centre-crop to it. Same dtype; see :func:`resize_frames` for ``interpolation``."""
    height, width = size
    src_h, src_w = frames.shape[1:3]
    scale = max(height / src_h, width / src_w)
    new_h, new_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    resized = resize_frames(frames, (new_h, new_w), interpolation)
    return np.ascontiguousarray(resized[:, top:top + height, left:left + width])


def vae_frame_indices(num_frames: int, max_frames: int, rng: np.random.Generator) -> list[int] | None:
    """4n+1 increasing frame indices for the causal video VAE: first and last frame kept, the rest drawn at random.

    The clip has the largest 4n+1 length ≤ min(num_frames, max_frames); None when the room has fewer than 5
    frames (or ``max_frames`` < 5), which cannot make a 4n+1 clip with n ≥ 1.
    """
    length = (min(num_frames, max_frames) - 1) // 4 * 4 + 1
    if length < 5:
        return None
    middle = rng.choice(np.arange(1, num_frames - 1), size=length - 2, replace=False)
    return [0, *sorted(int(i) for i in middle), num_frames - 1]


def build_clip_index(videos: Sequence[Video], min_frames: int, skips: SkipLog, strict: bool = False) -> list[Video]:
    """The training index: each video long enough for a clip, repeated ``video.repeat`` times (oversampling).

    Videos with fewer than ``min_frames`` frames are skipped and counted (or raise in strict mode).
    """
    index: list[Video] = []
    for video in videos:
        if video.num_frames < min_frames:
            skips.handle(BadSample(video.path, f"too few frames: {video.num_frames} < {min_frames}"), strict)
            continue
        index.extend([video] * video.repeat)
    return index
