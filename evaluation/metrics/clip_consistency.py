"""CLIP temporal consistency (TC): the mean cosine similarity of consecutive frames' CLIP image embeddings.

A flickering or drifting fill changes a frame's embedding from one frame to the next; a stable video scores close
to 1 (identical frames score exactly 1). The network is transformers' CLIP vision tower with its projection,
loaded from a local folder (never downloaded); frames are resized whole to the tower's input size (not
centre-cropped, which could cut the hole out) and normalised with the folder's preprocessor mean/std.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.metrics.inputs import VideoLike, seeded_random_network, to_video_tensor

if TYPE_CHECKING:
    from transformers import CLIPVisionModelWithProjection

__all__ = ["ClipEmbedder", "clip_temporal_consistency", "get_clip_embedder"]

# A small random tower for tests and demos that allow it (the numbers are then not TC).
_RANDOM_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8, projection_dim=16)


class ClipEmbedder(torch.nn.Module):
    """CLIP image embeddings of frames in ``[0, 1]``: ``(N, 3, H, W)`` → ``(N, D)``."""

    def __init__(self, model: CLIPVisionModelWithProjection, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = model.config.image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        frames = F.interpolate(frames.float(), size=(self.size, self.size), mode="bicubic", antialias=True,
                               align_corners=False).clamp_(0, 1)
        return self.model(pixel_values=(frames - self.mean) / self.std).image_embeds


@functools.cache
def get_clip_embedder(weights: str | Path | None = None, allow_random: bool = False) -> ClipEmbedder:
    """The CLIP image tower from a local transformers folder (a ``CLIPModel`` or ``CLIPVisionModelWithProjection``
    checkpoint), built once per process. Without one: ``FileNotFoundError`` — or, only with ``allow_random``, a
    small seeded random tower and a warning that its numbers are not TC."""
    # transformers loads here, with a tower: importing it for the scoring config alone would cost seconds.
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    if weights is not None:
        folder = Path(weights).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"CLIP weights not found: {folder} has no config.json (a transformers CLIP "
                                    "folder, e.g. openai/clip-vit-base-patch32 saved with save_pretrained)")
        model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True)
        processor = folder / "preprocessor_config.json"
        settings = json.loads(processor.read_text()) if processor.is_file() else {}
        return ClipEmbedder(model, settings.get("image_mean", OPENAI_CLIP_MEAN),
                            settings.get("image_std", OPENAI_CLIP_STD))
    if not allow_random:
        raise FileNotFoundError("temporal consistency needs CLIP weights offline: set scoring.clip_weights to a "
                                "local transformers CLIP folder (e.g. openai/clip-vit-base-patch32)")
    model = seeded_random_network(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**_RANDOM_CONFIG)),
                                  "CLIP is RANDOM (allow_random_clip=True, no weights given): its numbers are not TC")
    return ClipEmbedder(model, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


@torch.no_grad()
def clip_temporal_consistency(video: VideoLike, embedder: ClipEmbedder, *, frame_chunk: int = 32) -> Tensor:
    """Mean cosine similarity of the CLIP embeddings of frames t and t+1 → ``(B,)``; ``video`` ``(B, F, 3, H, W)``
    in ``[0, 1]`` (or uint8 channel-last), at least 2 frames. Frames are embedded ``frame_chunk`` at a time."""
    video = to_video_tensor(video)
    b, f = video.shape[:2]
    if f < 2:
        raise ValueError(f"temporal consistency needs at least 2 frames, got {f}")
    embedder.to(video.device)
    frames = video.flatten(0, 1)
    embeddings = torch.cat([embedder(frames[i:i + frame_chunk]) for i in range(0, len(frames), frame_chunk)])
    embeddings = F.normalize(embeddings.double(), dim=-1).reshape(b, f, -1)
    return (embeddings[:, 1:] * embeddings[:, :-1]).sum(dim=-1).mean(dim=1)
