"""Ray Data preprocessing for ProPainter training: ``vipo prepare resize`` and ``vipo flows``.

* :func:`resize_videos` writes every video of the sources at ``size`` into ``output_dir/JPEGImages_<W>_<H>/<video
  name>/00000.png`` (upstream's layout; PNG by default, so the frames equal what the training loader computes on the
  fly from the originals — ``jpeg`` saves space at the cost of that equality).
* :func:`compute_flows` runs frozen RAFT over every video at ``size`` and stores forward/backward flows as float16
  compressed pair files (:mod:`vipo.data.flow_store`) under ``output_dir/flows_<W>_<H>/``, on an actor pool (a GPU
  each when ``num_gpus`` > 0).

Both are resumable and write each video exactly once: a video's files are written atomically and a ``_DONE`` marker
closes it; a relaunch skips done videos (``overwrite`` redoes them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, PositiveInt, model_validator

from vipo.config import ExistingPath, JobConfig
from vipo.data.errors import BadSample, SkipLog
from vipo.data.flow_store import DONE_MARKER, FLOWS_META, atomic_write_bytes, write_video_flows
from vipo.data.images import encode_image
from vipo.data.sampling import resize_frames
from vipo.data.sources import SourceConfig, Video, scan_sources

__all__ = ["FlowsJobConfig", "RaftFlows", "ResizeJobConfig", "compute_flows", "resize_videos", "resized_folder"]


class _PreprocessConfig(JobConfig):
    sources: list[SourceConfig] = Field(min_length=1)
    size: tuple[PositiveInt, PositiveInt] = (240, 432)
    """(height, width)."""
    concurrency: int = Field(default=2, ge=1, description="Ray Data tasks/actors at once.")
    strict: bool = False


class ResizeJobConfig(_PreprocessConfig):
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(default=95, ge=1, le=100)


class FlowsJobConfig(_PreprocessConfig):
    weights_dir: ExistingPath | None = None
    """Folder with ``raft-things.pth``."""
    random_weights_seed: int | None = Field(default=None, ge=0)
    """Demo/tests only: a random RAFT (flows then mean nothing)."""
    raft_iterations: int = Field(default=20, ge=1)
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per RAFT actor.")

    @model_validator(mode="after")
    def _one_raft(self) -> "FlowsJobConfig":
        if (self.weights_dir is None) == (self.random_weights_seed is None):
            raise ValueError("give exactly one of weights_dir (raft-things.pth) and random_weights_seed (demo)")
        return self


def resized_folder(config: _PreprocessConfig, kind: str) -> Path:
    """``output_dir/<kind>_<W>_<H>`` (``JPEGImages_432_240``, ``flows_432_240``)."""
    return config.output_dir / f"{kind}_{config.size[1]}_{config.size[0]}"


def _pending(videos: list[Video], root: Path, overwrite: bool, key) -> list[int]:
    pending = []
    for index, video in enumerate(videos):
        folder = root / key(video)
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        if not (folder / DONE_MARKER).is_file():
            pending.append(index)
    return pending


def _run(config: _PreprocessConfig, videos: list[Video], pending: list[int], fn, **map_args) -> dict:
    import ray

    from vipo.tracking import init_ray

    init_ray(config.ray)
    if pending:
        rows = ray.data.from_items([{"index": i} for i in pending], override_num_blocks=len(pending))
        done = rows.map_batches(fn, batch_size=1, **map_args).take_all()
    else:
        done = []
    skipped = [row["skipped"] for row in done if row["skipped"]]
    return {"videos": len(videos), "written": len(done) - len(skipped), "already_done": len(videos) - len(pending),
            "skipped": skipped}


def _scan(config: _PreprocessConfig) -> list[Video]:
    skips = SkipLog()
    return scan_sources(config.sources, skips, config.strict)


def _read_resized(config: _PreprocessConfig, videos: list[Video], batch: dict):
    """The batch's video, all its frames at ``config.size`` (None when a frame is bad and not ``strict``), and
    why it was skipped ("" when read)."""
    video = videos[int(batch["index"][0])]
    try:
        return video, resize_frames(video.read(range(video.num_frames)), config.size), ""
    except BadSample as err:
        if config.strict:
            raise
        return video, None, f"{err.where}: {err.reason}"


class _ResizeVideo:
    def __init__(self, config: ResizeJobConfig, videos: list[Video], root: Path):
        self.config, self.videos, self.root = config, videos, root

    def __call__(self, batch: dict) -> dict:
        video, frames, skipped = _read_resized(self.config, self.videos, batch)
        if frames is None:
            return {"skipped": [skipped]}
        folder = self.root / video.path.name
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "png" if self.config.image_format == "png" else "jpg"
        for i, frame in enumerate(frames):
            atomic_write_bytes(encode_image(frame, self.config.image_format, self.config.jpeg_quality),
                          folder / f"{i:05d}.{suffix}")
        (folder / DONE_MARKER).write_text(f"{len(frames)}\n")
        return {"skipped": [""]}


def resize_videos(config: ResizeJobConfig, overwrite: bool = False) -> dict:
    """Resize every source video into the ``JPEGImages_<W>_<H>`` layout on Ray Data CPU tasks; returns a summary."""
    videos = _scan(config)
    root = resized_folder(config, "JPEGImages")
    root.mkdir(parents=True, exist_ok=True)
    pending = _pending(videos, root, overwrite, lambda v: v.path.name)
    summary = _run(config, videos, pending, _ResizeVideo(config, videos, root), concurrency=config.concurrency)
    return {**summary, "output": str(root)}


def load_raft(config: FlowsJobConfig):
    """Frozen RAFT as :class:`vipo.models.propainter.BidirectionalRAFT` from ``weights_dir`` or random."""
    import torch
    from torchvision.models.optical_flow import raft_large

    from vipo.models.propainter import BidirectionalRAFT, convert_raft_state_dict
    from vipo.pipelines.propainter import WEIGHT_FILES, random_models

    if config.weights_dir is None:
        raft = random_models(config.random_weights_seed, generator=False)[0]
    else:
        raft = raft_large(weights=None)
        state = torch.load(config.weights_dir / WEIGHT_FILES["raft"], map_location="cpu", weights_only=True)
        raft.load_state_dict(convert_raft_state_dict(state), strict=True)
    return BidirectionalRAFT(raft, iterations=config.raft_iterations)


class RaftFlows:
    """Ray Data actor: one video index -> its flows written to the flows root."""

    def __init__(self, config: FlowsJobConfig, videos: list[Video], root: Path):
        import torch

        self.config, self.videos, self.root = config, videos, root
        self.device = torch.device("cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.raft = load_raft(config).to(self.device)

    def flows(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (T,H,W,3) at the job's size -> (forward, backward) float32 (T-1,2,H,W), as the trainer's RAFT."""
        import torch

        video = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2)[None].float() / 127.5 - 1
        forward, backward = self.raft(video)
        return forward[0].cpu().numpy(), backward[0].cpu().numpy()

    def __call__(self, batch: dict) -> dict:
        video, frames, skipped = _read_resized(self.config, self.videos, batch)
        if frames is None:
            return {"skipped": [skipped]}
        write_video_flows(self.root, video.video_id, *self.flows(frames))
        return {"skipped": [""]}


def compute_flows(config: FlowsJobConfig, overwrite: bool = False) -> dict:
    """Precompute RAFT flows for every source video on a Ray Data actor pool; returns a summary."""
    videos = _scan(config)
    root = resized_folder(config, "flows")
    meta = {"size": list(config.size), "raft_iterations": config.raft_iterations,
            "weights": str(config.weights_dir) if config.weights_dir else f"random:{config.random_weights_seed}"}
    meta_path = root / FLOWS_META
    if meta_path.is_file() and not overwrite and json.loads(meta_path.read_text()) != meta:
        raise ValueError(f"{meta_path}: written with {meta_path.read_text().strip()}; this job has {meta} "
                         "(use another output_dir, or --overwrite)")
    root.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    pending = _pending(videos, root, overwrite, lambda v: v.video_id)
    summary = _run(config, videos, pending, RaftFlows, fn_constructor_args=(config, videos, root),
                   concurrency=config.concurrency, num_gpus=config.num_gpus)
    return {**summary, "output": str(root)}
