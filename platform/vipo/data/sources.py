"""Video sources: where the clean videos live on disk, as typed configs chosen by a ``kind:`` field.

Each source config scans its layout into :class:`Video` records (frame file lists or a video file plus frame count
and fps). Layout problems the user must fix (a missing root, a missing split list) raise :class:`DataError`
naming the folder expected; problems with one video (an empty folder, a listed video with no folder) skip that
video and count it in a :class:`SkipLog`, or raise in strict mode.

Layouts::

    davis        <root>/JPEGImages/480p/<video>/00000.jpg, <root>/ImageSets/2017/{train,val}.txt
                 (also <root>/DAVIS/JPEGImages/..., the inner folder some downloads unpack to)
    youtube_vos  <root>/JPEGImages/<id>/00000.jpg or <root>/train/JPEGImages/<id>/00000.jpg
    frame_folders <root>/<video>/<frame>.{jpg,jpeg,png}
    video_files  <root>/<video>.{mp4,avi,mov,mkv} (or root is one such file)
    hm3d         <root>/<area>/<room>/output/panorama_*.png
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence, Union

import numpy as np
from pydantic import Field

from vipo.config import Config, ExistingPath
from vipo.data.errors import BadSample, DataError, SkipLog
from vipo.data.images import decode_video, read_frames, video_info

__all__ = [
    "DavisSource",
    "FrameFoldersSource",
    "Hm3dSource",
    "SourceConfig",
    "Video",
    "VideoFilesSource",
    "YoutubeVosSource",
    "scan_sources",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


def _natural_key(path: Path) -> list:
    # frame_2 before frame_10; zero-padded DAVIS/YouTube-VOS names sort the same either way.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _list_frames(folder: Path, pattern: str = "*") -> list[Path]:
    files = [p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=_natural_key)


@dataclass(frozen=True)
class Video:
    """One video of a source.

    ``frames`` lists frame files in temporal order (empty for a video file, whose frames are decoded from
    ``path``); ``num_frames`` counts them; ``fps`` is the source frame rate where known; ``repeat`` is how many
    times the video enters a training index (DAVIS oversampling).
    """

    video_id: str
    path: Path
    num_frames: int
    fps: float | None = None
    frames: tuple[Path, ...] = ()
    repeat: int = 1

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` → uint8 (F,H,W,3) RGB. Raises :class:`BadSample` naming the file at fault."""
        if self.frames:
            return read_frames([self.frames[i] for i in indices])
        return decode_video(self.path, indices)


def _frame_folder_video(folder: Path, video_id: str, fps: float | None, repeat: int, skips: SkipLog,
                        strict: bool, pattern: str = "*") -> Video | None:
    frames = _list_frames(folder, pattern)
    if not frames:
        skips.handle(BadSample(folder, f"empty folder: no {pattern} frames with suffix {'/'.join(IMAGE_SUFFIXES)}"),
                     strict)
        return None
    return Video(video_id, folder, len(frames), fps, tuple(frames), repeat)


class _SourceBase(Config):
    name: str | None = Field(default=None, description="prefix of video ids; defaults to the kind")
    repeat: int = Field(default=1, ge=1, description="times each video enters a training index (oversampling)")

    @property
    def prefix(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


class DavisSource(_SourceBase):
    """DAVIS-2017 frames of one split. Default ``repeat=10`` balances its ~60 train videos against YouTube-VOS.

    DAVIS 480p is 24 fps (``fps``); at the default 15 fps target that gives stride 1, as DiffuEraser samples it.
    """

    kind: Literal["davis"] = "davis"
    root: ExistingPath
    split: Literal["train", "val"] = "train"
    resolution: str = "480p"
    year: str = "2017"
    fps: float | None = Field(default=24.0, gt=0)
    repeat: int = Field(default=10, ge=1)

    def resolved_root(self) -> Path:
        """``root`` or its inner ``DAVIS/`` folder, whichever holds ``JPEGImages/<resolution>``."""
        for candidate in (self.root, self.root / "DAVIS"):
            if (candidate / "JPEGImages" / self.resolution).is_dir():
                return candidate
        raise DataError(
            f"DAVIS root {self.root}: expected the folder {self.root / 'JPEGImages' / self.resolution} "
            f"(or {self.root / 'DAVIS' / 'JPEGImages' / self.resolution}); set root to the folder that holds "
            f"JPEGImages/ and ImageSets/"
        )

    def scan(self, skips: SkipLog, strict: bool = False) -> list[Video]:
        root = self.resolved_root()
        split_file = root / "ImageSets" / self.year / f"{self.split}.txt"
        if not split_file.is_file():
            raise DataError(f"DAVIS split list not found: {split_file} (expected one video name per line)")
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        videos = []
        for name in names:
            folder = root / "JPEGImages" / self.resolution / name
            if not folder.is_dir():
                skips.handle(BadSample(folder, f"missing video folder: listed in {split_file}"), strict)
                continue
            video = _frame_folder_video(folder, f"{self.prefix}/{name}", self.fps, self.repeat, skips, strict)
            if video:
                videos.append(video)
        return videos


class YoutubeVosSource(_SourceBase):
    """YouTube-VOS train split. Its ``JPEGImages`` keep every 5th frame of 30 fps video, hence ``fps=6``;
    set ``fps: 30`` for the ``train_all_frames`` download."""

    kind: Literal["youtube_vos"] = "youtube_vos"
    root: ExistingPath
    fps: float | None = Field(default=6.0, gt=0)

    def scan(self, skips: SkipLog, strict: bool = False) -> list[Video]:
        for images in (self.root / "JPEGImages", self.root / "train" / "JPEGImages"):
            if images.is_dir():
                break
        else:
            raise DataError(f"YouTube-VOS root {self.root}: expected {self.root / 'JPEGImages'} or "
                            f"{self.root / 'train' / 'JPEGImages'} holding one folder of JPEGs per video")
        return _scan_folder_of_folders(images, self.prefix, self.fps, self.repeat, skips, strict)


class FrameFoldersSource(_SourceBase):
    """Any folder holding one folder of frame images per video; ``fps`` if known (else stride 1)."""

    kind: Literal["frame_folders"] = "frame_folders"
    root: ExistingPath
    fps: float | None = Field(default=None, gt=0)

    def scan(self, skips: SkipLog, strict: bool = False) -> list[Video]:
        return _scan_folder_of_folders(self.root, self.prefix, self.fps, self.repeat, skips, strict)


def _scan_folder_of_folders(root: Path, prefix: str, fps: float | None, repeat: int, skips: SkipLog,
                            strict: bool) -> list[Video]:
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=_natural_key)
    if not folders:
        raise DataError(f"{root}: no video folders found (expected {root}/<video>/<frame>.jpg)")
    videos = [_frame_folder_video(f, f"{prefix}/{f.name}", fps, repeat, skips, strict) for f in folders]
    return [v for v in videos if v]


class VideoFilesSource(_SourceBase):
    """Video files (mp4/avi/mov/mkv) in a folder, or a single file; fps comes from the container."""

    kind: Literal["video_files"] = "video_files"
    root: ExistingPath

    def scan(self, skips: SkipLog, strict: bool = False) -> list[Video]:
        if self.root.is_file():
            files = [self.root]
        else:
            files = sorted((p for p in self.root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES), key=_natural_key)
        if not files:
            raise DataError(f"{self.root}: no video files with suffix {'/'.join(VIDEO_SUFFIXES)}")
        videos = []
        for path in files:
            try:
                count, fps = video_info(path)
            except BadSample as err:
                skips.handle(err, strict)
                continue
            videos.append(Video(f"{self.prefix}/{path.stem}", path, count, fps, (), self.repeat))
        return videos


class Hm3dSource(_SourceBase):
    """HM3D ERP panoramas for the VAE: one "video" per room, ``<area>/<room>/output/panorama_*.png``."""

    kind: Literal["hm3d"] = "hm3d"
    root: ExistingPath

    def scan(self, skips: SkipLog, strict: bool = False) -> list[Video]:
        outputs = sorted(self.root.glob("*/*/output"), key=lambda p: (p.parent.parent.name, p.parent.name))
        if not outputs:
            raise DataError(f"HM3D root {self.root}: no <area>/<room>/output/ folders found "
                            f"(expected {self.root}/<area>/<room>/output/panorama_0000.png)")
        videos = []
        for output in outputs:
            room_id = f"{self.prefix}/{output.parent.parent.name}/{output.parent.name}"
            video = _frame_folder_video(output, room_id, None, self.repeat, skips, strict, "panorama_*")
            if video:
                videos.append(video)
        return videos


SourceConfig = Annotated[
    Union[DavisSource, YoutubeVosSource, FrameFoldersSource, VideoFilesSource, Hm3dSource],
    Field(discriminator="kind"),
]
"""A video source config; the ``kind`` field picks the layout (the registry is this union)."""


def scan_sources(sources: Sequence[SourceConfig], skips: SkipLog, strict: bool = False) -> list[Video]:
    """All videos of all sources, in config order. Video ids must be unique across sources."""
    videos = [video for source in sources for video in source.scan(skips, strict)]
    seen: set[str] = set()
    for video in videos:
        if video.video_id in seen:
            raise DataError(f"duplicate video id {video.video_id!r}: give each source a distinct `name`")
        seen.add(video.video_id)
    return videos
