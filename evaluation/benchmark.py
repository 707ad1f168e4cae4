"""Benchmarks: a config of clips + hole masks, materialised once to disk and identified by a content hash.

A benchmark names a video source (any :mod:`vipo.data.sources` kind), which videos, the frame window, the frame
size and where the holes come from (a mask folder such as E2FGVI's ``test_masks``, fixed seeded random moving
masks, or object annotations). :func:`materialize` decodes and resizes everything ONCE into
``<root>/<name>-<fingerprint>/`` (lossless ``.npz`` per clip plus ``benchmark.json``), so every method reads
bit-identical inputs. Two identities:

- the *fingerprint* (folder name): the config plus the size and mtime of every input file read; a changed input
  file or config gives a new folder instead of a stale one;
- the *benchmark hash*: sha256 over the materialised frames and holes of every clip. Results are keyed by it.

Polarity: holes are bool ``(F, H, W)``, True = hole (mask PNGs 255 = hole).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from vipo.config import Config, ExistingPath, dump_config
from vipo.data import SkipLog, SourceConfig, Video, resize_frames, scan_sources
from vipo.masks import MovingMaskConfig, load_davis_annotations, load_mask_sequence, mask_dilate, random_moving_masks

__all__ = [
    "AnnotationMasks",
    "Benchmark",
    "BenchmarkClip",
    "BenchmarkConfig",
    "FolderMasks",
    "RandomMasks",
    "materialize",
]

MANIFEST = "benchmark.json"
CLIPS_DIR = "clips"


class _MaskSpec(Config):
    dilation: int = Field(default=0, ge=0, description="3x3-cross dilation iterations applied to the holes")


class _MaskFolderSpec(_MaskSpec):
    root: ExistingPath
    resize: bool = False
    """Masks whose size differs from their video's frames are an error naming the file and both sizes; ``true``
    resizes them to the frames (nearest neighbour) instead."""


class FolderMasks(_MaskFolderSpec):
    """``<root>/<video name>/*.png`` (255 = hole), e.g. E2FGVI/FuseFormer ``test_masks``; frame i uses the i-th
    PNG in natural order."""

    kind: Literal["folder"] = "folder"


class RandomMasks(_MaskSpec):
    """Fixed random moving masks (:func:`vipo.masks.random_moving_masks`), seeded per video from ``seed``."""

    kind: Literal["random"] = "random"
    seed: int = Field(default=0, ge=0)
    shape: MovingMaskConfig = MovingMaskConfig()


class AnnotationMasks(_MaskFolderSpec):
    """Object masks from palette annotations ``<root>/<video name>/*.png`` (DAVIS ``Annotations/480p``);
    ``object_ids`` picks objects (default: every non-background index)."""

    kind: Literal["annotations"] = "annotations"
    object_ids: list[int] | None = None


MaskConfig = Annotated[Union[FolderMasks, RandomMasks, AnnotationMasks], Field(discriminator="kind")]


class BenchmarkConfig(Config):
    """Which clips, which holes, what size. Defaults are the research group's protocol (first 24 frames at
    432×240); frames are resized to exactly ``height×width`` (no crop), as E2FGVI does."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    source: SourceConfig
    masks: MaskConfig
    videos: list[str] | None = None
    """Video names (folder names) to keep, in this order; default: every video of the source."""
    video_list: ExistingPath | None = None
    """A file naming the videos instead: ``.json`` (a list, or a dict keyed by name as E2FGVI's ``test.json``)
    or text with one name per line."""
    max_videos: int | None = Field(default=None, ge=1)
    start_frame: int = Field(default=0, ge=0)
    num_frames: int = Field(default=24, ge=2)
    height: int = Field(default=240, ge=16)
    width: int = Field(default=432, ge=16)

    @model_validator(mode="after")
    def _one_video_selection(self) -> "BenchmarkConfig":
        if self.videos is not None and self.video_list is not None:
            raise ValueError("give at most one of `videos` and `video_list`")
        return self

    def selected_names(self) -> list[str] | None:
        """The video names asked for (``videos`` or ``video_list``), or None for every video of the source."""
        if self.videos is not None:
            return list(self.videos)
        if self.video_list is None:
            return None
        text = self.video_list.read_text()
        if self.video_list.suffix != ".json":
            return [line.strip() for line in text.splitlines() if line.strip()]
        listed = json.loads(text)
        if not isinstance(listed, (list, dict)):
            raise ValueError(f"{self.video_list}: expected a JSON list of video names or an object keyed by them")
        return [str(name) for name in listed]


@dataclass(frozen=True)
class BenchmarkClip:
    """One materialised clip: ``clip_id`` (file-safe), source ``video_id``, frame indices read, content sha256."""

    clip_id: str
    video_id: str
    frame_indices: tuple[int, ...]
    sha256: str


@dataclass(frozen=True)
class Benchmark:
    """A materialised benchmark folder: identity, geometry and clips; :meth:`load_clip` reads one clip."""

    name: str
    hash: str
    root: Path
    height: int
    width: int
    num_frames: int
    clips: tuple[BenchmarkClip, ...]

    @property
    def clip_ids(self) -> list[str]:
        return [clip.clip_id for clip in self.clips]

    def load_clip(self, clip_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Frames uint8 ``(F, H, W, 3)`` RGB and holes bool ``(F, H, W)`` (True = hole) of ``clip_id``."""
        path = self.root / CLIPS_DIR / f"{clip_id}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: clip missing from benchmark {self.name} ({self.hash}); delete "
                                    f"{self.root} to materialise it again")
        with np.load(path) as data:
            return data["frames"], data["hole"]

    @classmethod
    def open(cls, root: str | Path) -> "Benchmark":
        """Open a materialised benchmark folder (the one holding ``benchmark.json``)."""
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: not a materialised benchmark folder")
        data = json.loads(manifest.read_text())
        clips = tuple(BenchmarkClip(c["clip_id"], c["video_id"], tuple(c["frame_indices"]), c["sha256"])
                      for c in data["clips"])
        return cls(data["name"], data["hash"], root, data["height"], data["width"], data["num_frames"], clips)


def _clip_id(video_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)


def _video_name(video: Video) -> str:
    return video.video_id.rsplit("/", 1)[-1]


def _select_videos(config: BenchmarkConfig) -> list[Video]:
    videos = scan_sources([config.source], SkipLog(), strict=True)
    wanted = config.selected_names()
    if wanted is not None:
        by_name = {_video_name(v): v for v in videos}
        missing = [name for name in wanted if name not in by_name]
        if missing:
            raise FileNotFoundError(f"benchmark {config.name}: videos {missing[:5]} not found in the source "
                                    f"({len(missing)} missing); fix `videos`/`video_list` or the source root")
        videos = [by_name[name] for name in wanted]
    videos = videos[: config.max_videos] if config.max_videos else videos
    if not videos:
        raise FileNotFoundError(f"benchmark {config.name}: the source has no videos")
    end = config.start_frame + config.num_frames
    short = [f"{v.video_id} ({v.num_frames})" for v in videos if v.num_frames < end]
    if short:
        raise ValueError(f"benchmark {config.name}: videos shorter than start_frame + num_frames = {end}: "
                         f"{', '.join(short[:5])}; lower num_frames or leave them out with `videos`")
    return videos


def _mask_folder(masks: FolderMasks | AnnotationMasks, video: Video) -> Path:
    folder = masks.root / _video_name(video)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no mask folder for video {video.video_id} (expected {masks.root}/<video>/)")
    return folder


def _check_mask_sizes(masks: FolderMasks | AnnotationMasks, folder: Path, frame_size: tuple[int, int]) -> None:
    """Refuse masks of another size than the video's frames (``frame_size`` = height, width) unless ``resize``."""
    if masks.resize:
        return
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            width, height = image.size
        if (height, width) != frame_size:
            raise ValueError(f"{path}: mask is {width}x{height} but the video's frames are {frame_size[1]}x"
                             f"{frame_size[0]}; give masks of the frames' size or set benchmark.masks.resize: true")


def _holes(config: BenchmarkConfig, video: Video, indices: list[int], frame_size: tuple[int, int]) -> np.ndarray:
    size = (config.height, config.width)
    masks = config.masks
    if isinstance(masks, RandomMasks):
        digest = hashlib.sha256(f"{masks.seed}:{video.video_id}".encode()).digest()
        hole = random_moving_masks(len(indices), *size, seed=int.from_bytes(digest[:8], "little"), config=masks.shape)
    else:
        folder = _mask_folder(masks, video)
        _check_mask_sizes(masks, folder, frame_size)
        if isinstance(masks, FolderMasks):
            hole = load_mask_sequence(folder, size=size)
        else:
            hole = load_davis_annotations(folder, masks.object_ids, size=size)
        if len(hole) <= indices[-1]:
            raise ValueError(f"{folder}: {len(hole)} mask PNGs, but frames up to index {indices[-1]} are scored")
        hole = hole[indices]
    return mask_dilate(hole, masks.dilation, kernel="cross")


def _input_files(config: BenchmarkConfig, videos: list[Video], indices: list[int]) -> list[Path]:
    files = []
    for video in videos:
        files.extend([video.frames[i] for i in indices] if video.frames else [video.path])
        if not isinstance(config.masks, RandomMasks):
            files.extend(sorted(_mask_folder(config.masks, video).glob("*.png")))
    return files


def _fingerprint(config: BenchmarkConfig, videos: list[Video], indices: list[int]) -> str:
    """16 hex digits over the config and (path, size, mtime) of every input file: the materialised folder's key."""
    digest = hashlib.sha256(json.dumps(dump_config(config), sort_keys=True).encode())
    for path in _input_files(config, videos, indices):
        stat = path.stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _clip_sha256(frames: np.ndarray, hole: np.ndarray) -> str:
    digest = hashlib.sha256(repr((frames.shape, hole.shape)).encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    digest.update(np.ascontiguousarray(hole).tobytes())
    return digest.hexdigest()


def materialize(config: BenchmarkConfig, root: str | Path) -> Benchmark:
    """The benchmark of ``config`` under ``root``, materialising it first if this exact input was never seen.

    The folder is built next to its final place and renamed into it, so a crash never leaves a half benchmark.
    """
    root = Path(root)
    videos = _select_videos(config)
    indices = list(range(config.start_frame, config.start_frame + config.num_frames))
    target = root / f"{config.name}-{_fingerprint(config, videos, indices)}"
    if (target / MANIFEST).is_file():
        return Benchmark.open(target)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=root) as tmp:
        staging = Path(tmp) / "benchmark"
        (staging / CLIPS_DIR).mkdir(parents=True)
        clips = []
        for video in videos:
            source_frames = video.read(indices)
            frames = resize_frames(source_frames, (config.height, config.width))
            hole = _holes(config, video, indices, source_frames.shape[1:3])
            if not hole.any():
                raise ValueError(f"benchmark {config.name}: video {video.video_id} has no hole pixel in frames "
                                 f"{indices[0]}..{indices[-1]}; nothing would be scored")
            clip_id = _clip_id(video.video_id)
            np.savez_compressed(staging / CLIPS_DIR / f"{clip_id}.npz", frames=frames, hole=hole)
            clips.append({"clip_id": clip_id, "video_id": video.video_id, "frame_indices": indices,
                          "sha256": _clip_sha256(frames, hole)})
        identity = json.dumps([[c["clip_id"], c["sha256"]] for c in clips], separators=(",", ":"))
        manifest = {
            "name": config.name,
            "hash": hashlib.sha256(identity.encode()).hexdigest()[:16],
            "height": config.height,
            "width": config.width,
            "num_frames": config.num_frames,
            "config": dump_config(config),
            "clips": clips,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if target.exists():  # a folder without a manifest: an interrupted run under an old layout
            shutil.rmtree(target)
        os.replace(staging, target)
    return Benchmark.open(target)
