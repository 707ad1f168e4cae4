"""What a generation run must do: clip work items, their sample ids, and every seed derived from ids.

A work item is one clip window of one video (``window`` = the n-th window cut from the video). It yields
``masks_per_clip`` (K) preference samples — one per random moving hole — and each sample is one shard row with
``clip_index = window·K + k`` and ``clip_id = <video_id>#<clip_index>``. All randomness derives from the run
seed and these ids (never from execution order), so a rerun or a resume reproduces every window, hole and
candidate bit for bit, whichever actor handles it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from vipo.data.errors import SkipLog
from vipo.data.shards import make_clip_id
from vipo.data.sources import SourceConfig, Video, scan_sources

__all__ = ["SampleResult", "WorkItem", "WorkResult", "derive_seed", "plan_work"]


def derive_seed(*parts: object) -> int:
    """A 32-bit seed from any parts (their ``str``), stable across processes and Python versions."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") % 2**32


@dataclass(frozen=True)
class WorkItem:
    """Window ``window`` of ``video``, to be cut into ``masks_per_clip`` samples."""

    video: Video
    window: int
    masks_per_clip: int

    @property
    def work_id(self) -> str:
        return f"{self.video.video_id}@{self.window}"

    def clip_index(self, mask_index: int) -> int:
        return self.window * self.masks_per_clip + mask_index

    def sample_ids(self) -> list[str]:
        """The shard ``clip_id`` of each of the K samples, in mask order."""
        return [make_clip_id(self.video.video_id, self.clip_index(k)) for k in range(self.masks_per_clip)]


def plan_work(sources: list[SourceConfig], max_videos: int | None, clips_per_video: int, masks_per_clip: int,
              skips: SkipLog) -> list[WorkItem]:
    """Work items of the first ``max_videos`` videos (config order), ``clips_per_video`` windows each.

    Videos a source cannot list (e.g. an unreadable video file) are recorded in ``skips``; videos too short for
    a clip are kept here and skipped by the stage, per clip, with the reason.
    """
    videos: list[Video] = scan_sources(sources, skips)[:max_videos]
    return [WorkItem(video, window, masks_per_clip) for video in videos for window in range(clips_per_video)]


@dataclass
class SampleResult:
    """What the stages made for one sample: one encoded shard row per stage (each with that stage's negatives)
    and the manifest record of every candidate, selected or not."""

    clip_id: str
    rows: list[dict] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def merged_row(self) -> dict:
        """The shard row: the first stage's row with the negatives of every stage (and the first real prior)."""
        row = dict(self.rows[0])
        row["negatives"] = [negative for stage_row in self.rows for negative in stage_row["negatives"]]
        row["prior"] = next((r["prior"] for r in self.rows if r["prior"]["kind"] != "none"), row["prior"])
        return row


@dataclass
class WorkResult:
    """A work item on its way through the stages (the only thing that crosses the object store: encoded
    frames, never raw ones). ``error`` is set when the clip's input is bad (``error_where`` names the file);
    ``seconds`` accumulates time per step and per kind; ``devices`` records where each stage ran."""

    item: WorkItem
    samples: dict[str, SampleResult] = field(default_factory=dict)
    error: str | None = None
    error_where: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)

    def add_seconds(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def sample(self, clip_id: str) -> SampleResult:
        return self.samples.setdefault(clip_id, SampleResult(clip_id))
