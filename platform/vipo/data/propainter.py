"""ProPainter training clips (flow completion and the main network), after upstream ``core/dataset.py``.

One sample per video: a random run of ``num_local_frames`` consecutive frames plus ``num_ref_frames`` other frames
drawn at random and sorted (``-1``: every other frame of the video), resized to ``size`` (height, width) without
cropping (or already at that size, from ``vipo prepare resize``). Holes are random moving masks
(:func:`vipo.masks.random_moving_masks`) or a mask folder per video (``mask_root/<video name>/00000.png``, the
``test_masks`` layout). Flows between the local frames come from a flows root (``vipo flows``) or are left to the
trainer to compute with RAFT.

Augmentation, per sample: the local frames are played backwards with ``reverse_prob`` (the forward flows become
the reversed backward flows and vice versa) and the whole clip is mirrored left-right with ``flip_prob`` (flows
mirrored and their x component negated). Randomness comes from ``(seed, epoch, index)`` only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from pydantic import Field, PositiveInt, model_validator

from vipo.config import Config, ExistingPath
from vipo.data.datasets import _hole_planes, _pixels, _tensor, _TwoStepDataset
from vipo.data.decode import sample_rng
from vipo.data.errors import BadSample
from vipo.data.flow_store import FlowStore
from vipo.data.sampling import resize_frames
from vipo.data.sources import SourceConfig, Video
from vipo.masks import MovingMaskConfig, load_mask_sequence, random_moving_masks

__all__ = ["ProPainterDataConfig", "ProPainterDataset", "flip_clip", "reverse_local_clip"]


class ProPainterDataConfig(Config):
    sources: list[SourceConfig] = Field(min_length=1)
    size: tuple[PositiveInt, PositiveInt] = (240, 432)
    """(height, width) of training frames; multiples of 8."""
    num_local_frames: int = Field(default=10, ge=2)
    num_ref_frames: int = Field(default=6, ge=-1)
    """Non-local reference frames; -1 = every other frame of the video (then clips differ in length: batch 1)."""
    masks: MovingMaskConfig = MovingMaskConfig()
    mask_root: ExistingPath | None = None
    """A ``test_masks``-style folder (``<video name>/00000.png``, 255 = hole) used instead of random masks."""
    flows_root: ExistingPath | None = None
    """Precomputed flows (``vipo flows``) at ``size``; null: the trainer computes RAFT flow on the fly."""
    reverse_prob: float = Field(default=0.5, ge=0, le=1)
    flip_prob: float = Field(default=0.5, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    strict: bool = False

    @model_validator(mode="after")
    def _multiples_of_eight(self) -> "ProPainterDataConfig":
        if self.size[0] % 8 or self.size[1] % 8:
            raise ValueError(f"size {list(self.size)}: height and width must be multiples of 8")
        return self


def reverse_local_clip(frames: np.ndarray, holes: np.ndarray, num_local: int, flows_forward: np.ndarray | None,
                       flows_backward: np.ndarray | None):
    """Play the first ``num_local`` frames (and holes) backwards; the new forward flows are the reversed backward
    flows and vice versa. Returns the same five items."""
    order = list(range(num_local))[::-1] + list(range(num_local, len(frames)))
    if flows_forward is None:
        return frames[order], holes[order], None, None
    return frames[order], holes[order], flows_backward[::-1].copy(), flows_forward[::-1].copy()


def flip_clip(frames: np.ndarray, holes: np.ndarray, flows_forward: np.ndarray | None,
              flows_backward: np.ndarray | None):
    """Mirror frames (T,H,W,3), holes (T,H,W) and flows (N,2,H,W) left-right; flows also get dx -> -dx."""
    def mirror_flow(flow):
        if flow is None:
            return None
        mirrored = flow[..., ::-1].copy()
        mirrored[:, 0] *= -1
        return mirrored

    return (np.ascontiguousarray(frames[:, :, ::-1]), np.ascontiguousarray(holes[:, :, ::-1]),
            mirror_flow(flows_forward), mirror_flow(flows_backward))


class ProPainterDataset(_TwoStepDataset):
    """``dataset[i]`` -> ``frames`` float32 (T,3,H,W) in [-1,1] (local frames first), ``holes`` float32
    (T,1,H,W) 1 = hole, and with a flows root ``flows_forward``/``flows_backward`` float32 (L-1,2,H,W)."""

    def __init__(self, config: ProPainterDataConfig, videos: Sequence[Video] | None = None):
        super().__init__()
        self._index_videos(config, videos, config.num_local_frames + max(config.num_ref_frames, 0), "video")
        self.flows = FlowStore(config.flows_root, config.size) if config.flows_root else None

    def __len__(self) -> int:
        return len(self.index)

    def frame_indices(self, num_frames: int, rng: np.random.Generator) -> list[int]:
        """Local run then sorted references, as source frame indices."""
        local_count = self.config.num_local_frames
        start = int(rng.integers(0, num_frames - local_count + 1))
        local = list(range(start, start + local_count))
        rest = [i for i in range(num_frames) if i not in local]
        count = len(rest) if self.config.num_ref_frames < 0 else self.config.num_ref_frames
        references = sorted(int(i) for i in rng.choice(rest, size=count, replace=False)) if count else []
        return local + references

    def _holes(self, video: Video, indices: list[int], rng: np.random.Generator) -> np.ndarray:
        height, width = self.config.size
        if self.config.mask_root is None:
            return random_moving_masks(len(indices), height, width, int(rng.integers(2**63)), self.config.masks)
        folder = self.config.mask_root / video.path.name
        try:
            sequence = load_mask_sequence(folder, size=(height, width))
        except (FileNotFoundError, ValueError) as err:
            raise BadSample(folder, str(err)) from None
        return sequence[[i % len(sequence) for i in indices]]

    def load_raw(self, index: int, epoch: int) -> dict[str, Any]:
        """{``frames`` uint8 (T,H,W,3), ``hole`` bool (T,H,W)[, ``flows_forward``, ``flows_backward`` float32
        (L-1,2,H,W)]}."""
        video = self.index[index]
        rng = sample_rng(self.seed, epoch, index)
        indices = self.frame_indices(video.num_frames, rng)
        frames = resize_frames(video.read(indices), self.config.size)
        holes = self._holes(video, indices, rng)
        local = self.config.num_local_frames
        forward = backward = None
        if self.flows is not None:
            forward, backward = self.flows.read(video.video_id, indices[0], local - 1)
        if rng.random() < self.config.reverse_prob:
            frames, holes, forward, backward = reverse_local_clip(frames, holes, local, forward, backward)
        if rng.random() < self.config.flip_prob:
            frames, holes, forward, backward = flip_clip(frames, holes, forward, backward)
        raw = {"frames": frames, "hole": holes}
        if forward is not None:
            raw.update(flows_forward=forward, flows_backward=backward)
        return raw

    def collate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {"frames": _pixels(batch["frames"]), "holes": _hole_planes(batch["hole"]).float()}
        for key in ("flows_forward", "flows_backward"):
            if key in batch:
                out[key] = _tensor(np.asarray(batch[key], dtype=np.float32))
        return out
