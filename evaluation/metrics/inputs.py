"""Input conversion shared by every metric, and the per-frame → per-video aggregation.

Videos are scored as ``(B, F, C, H, W)`` float tensors in ``[0, data_range]`` (``[0, 1]`` by default); masks as
``(B, F, 1, H, W)`` tensors where 1 marks the pixels scored. uint8 arrays as decoded from files are accepted too and
converted here, so every metric takes the same inputs.
"""

from __future__ import annotations

import warnings
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "VideoLike",
    "mean_over_scored_frames",
    "seeded_random_network",
    "to_mask_tensor",
    "to_video_tensor",
    "true_span",
]

VideoLike = Tensor | np.ndarray


def to_video_tensor(video: VideoLike, device: torch.device | str | None = None) -> Tensor:
    """A video as a ``(B, F, C, H, W)`` float tensor.

    - float tensor ``(B, F, C, H, W)``: returned as is (moved to ``device`` if given); values are not rescaled.
    - uint8 array or tensor, channel-last ``(F, H, W, C)`` or ``(B, F, H, W, C)`` (as PyAV/imageio decode it):
      scaled to ``[0, 1]`` float32 and moved to channel-first; ``(F, H, W, C)`` gets ``B = 1``.
    """
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(np.ascontiguousarray(video))
    if not isinstance(video, Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray video, got {type(video).__name__}")
    if video.dtype == torch.uint8:
        if video.ndim == 4:
            video = video.unsqueeze(0)
        if video.ndim != 5 or video.shape[-1] not in (1, 3):
            raise ValueError(
                f"uint8 video must be channel-last (F,H,W,C) or (B,F,H,W,C) with C in (1, 3), got {tuple(video.shape)}"
            )
        video = video.permute(0, 1, 4, 2, 3).float().div_(255.0)
    elif not video.is_floating_point():
        raise TypeError(f"video must be float in [0, data_range] or uint8, got dtype {video.dtype}")
    if video.ndim != 5:
        raise ValueError(f"float video must be (B,F,C,H,W), got shape {tuple(video.shape)}")
    return video if device is None else video.to(device)


def to_mask_tensor(mask: VideoLike, like: Tensor) -> Tensor:
    """A scoring mask as a ``(B, F, 1, H, W)`` float 0/1 tensor on ``like``'s device (1 = pixel scored).

    Accepts ``(B, F, 1, H, W)``, ``(B, F, H, W)`` or ``(F, H, W)`` (then ``B = 1``) tensors or arrays: bool; float
    (``> 0.5`` is scored); uint8 PNG convention (``> 127`` is scored, i.e. 255 = hole). ``like`` is the
    ``(B, F, C, H, W)`` video the mask belongs to; shapes must agree.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if mask.ndim == 3:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4:
        mask = mask.unsqueeze(2)
    expected = (like.shape[0], like.shape[1], 1, like.shape[3], like.shape[4])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the video: expected {expected}")
    if mask.dtype == torch.bool:
        scored = mask
    elif mask.dtype == torch.uint8:
        scored = mask > 127
    else:
        scored = mask > 0.5
    return scored.to(device=like.device, dtype=like.dtype)


def mean_over_scored_frames(per_frame: Tensor, scored: Tensor) -> Tensor:
    """Mean of ``per_frame`` ``(B, F)`` over the frames where ``scored`` ``(B, F)`` is true → ``(B,)``.

    A video with no scored frame gets NaN, so an empty mask never reads as a perfect or a zero score.
    """
    total = torch.where(scored, per_frame, torch.zeros_like(per_frame)).sum(dim=1)
    return total / scored.sum(dim=1)


def true_span(flags: Tensor) -> tuple[int, int] | None:
    """First and one-past-last index where ``flags`` (1-D bool) is true, or None: a mask's box along one axis."""
    found = flags.nonzero()
    return None if found.numel() == 0 else (int(found[0]), int(found[-1]) + 1)


Network = TypeVar("Network", bound=torch.nn.Module)


def seeded_random_network(build: Callable[[], Network], warning: str) -> Network:
    """A metric network with random weights drawn from seed 0 (so repeatable), after warning that its numbers are
    not the metric: only for tests and demos whose config explicitly allows it."""
    warnings.warn(warning, stacklevel=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build()
