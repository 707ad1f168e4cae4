"""What a generation run reports: counts, skip reasons, seconds per clip per kind, the per-kind quality gate,
and a contact sheet (GT | hole | each negative) that shows at a glance whether the negatives are visibly worse.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from vipo.data.images import decode_image
from vipo.data.shards import Manifest
from vipo.generate.candidates import TOO_CLOSE, QualityGate
from vipo.generate.writer import ShardCommit

__all__ = ["PSNR_CAP", "RunStats", "contact_sheet", "manifest_summary"]

PSNR_CAP = 100.0
"""Hole PSNR is capped here in averages: a negative identical to the GT in the hole has infinite PSNR."""


def _reason_head(reason: str) -> str:
    # "too few frames: 12 < 22 (/v)" → "too few frames", as SkipLog counts reasons.
    return reason.split(":", 1)[0]


def manifest_summary(manifest: Manifest, gate: QualityGate) -> dict:
    """Totals over every invocation that wrote into this shard folder (first run and resumes), from its manifest:
    samples written, skipped by reason, and the quality gate per kind over all candidates."""
    skipped: Counter = Counter()
    psnr: dict[str, list[float]] = {}
    selected_psnr: dict[str, list[float]] = {}
    too_close: Counter = Counter()
    for entry in manifest.clips.values():
        if entry["status"] != "done":
            skipped[_reason_head(entry["reason"])] += 1
        for candidate in entry.get("candidates", []):
            value = min(candidate["scores"]["psnr"], PSNR_CAP)
            psnr.setdefault(candidate["kind"], []).append(value)
            if candidate["selected"]:
                selected_psnr.setdefault(candidate["kind"], []).append(value)
            too_close[candidate["kind"]] += TOO_CLOSE in candidate["flags"]
    kinds = {}
    for kind, values in sorted(psnr.items()):
        selected = selected_psnr.get(kind, [])
        mean = float(np.mean(values))
        kinds[kind] = {
            "candidates": len(values),
            "selected": len(selected),
            "hole_psnr_mean": mean,
            "selected_hole_psnr_mean": float(np.mean(selected)) if selected else None,
            "too_close_fraction": too_close[kind] / len(values),
            "too_close_to_gt": mean > gate.max_psnr,
        }
    return {
        "samples_written": manifest.num_rows,
        "samples_skipped": sum(skipped.values()),
        "skipped_by_reason": dict(skipped),
        "quality_gate": {"max_psnr": gate.max_psnr, "kinds": kinds},
    }


@dataclass
class RunStats:
    """What one invocation did, accumulated while results stream in (totals come from the manifest)."""

    clips_planned: int
    clips_processed: int = 0
    clips_failed: int = 0
    seconds: Counter = field(default_factory=Counter)

    def add_commit(self, commit: ShardCommit) -> None:
        self.clips_processed += commit.clips
        self.clips_failed += commit.failed
        self.seconds.update(commit.seconds)

    def summary(self) -> dict:
        """Counts of this invocation and its mean seconds per clip per step and per kind."""
        timed = self.clips_processed - self.clips_failed
        return {
            "clips_planned": self.clips_planned,
            "clips_processed": self.clips_processed,
            "clips_failed": self.clips_failed,
            "seconds_per_clip": {name: total / timed for name, total in sorted(self.seconds.items())} if timed else {},
        }


MIN_TILE_WIDTH = 128


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """Put ``text`` in a strip above a (H,W,3) tile (small tiles enlarged, pixels kept visible as blocks)."""
    if tile.shape[1] < MIN_TILE_WIDTH:
        factor = -(-MIN_TILE_WIDTH // tile.shape[1])
        tile = cv2.resize(tile, (tile.shape[1] * factor, tile.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    scale = max(tile.shape[1] / 256, 0.4)
    strip = np.full((int(24 * scale) + 4, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text[:24], (2, strip.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, (0, 0, 0),
                1, cv2.LINE_AA)
    return np.concatenate([strip, tile])


def contact_sheet(rows: list[dict]) -> np.ndarray:
    """One line per shard row: GT | hole | each selected negative's composite, at the clip's middle frame.

    Returns uint8 (H', W', 3). Columns follow the first row's kinds; a kind missing in a row is a grey tile.
    """
    if not rows:
        raise ValueError("contact_sheet: no rows")
    kinds = list(dict.fromkeys(n["kind"] for row in rows for n in row["negatives"] if n["composited"]))
    lines = []
    for row in rows:
        index = len(row["frames"]) // 2
        gt = decode_image(row["frames"][index], row["clip_id"])
        hole = decode_image(row["masks"][index], row["clip_id"], grey=True)
        tiles = [_label(gt, row["clip_id"]), _label(np.repeat(hole[..., None], 3, axis=2), "hole")]
        composites = {n["kind"]: n for n in row["negatives"] if n["composited"]}
        for kind in kinds:
            negative = composites.get(kind)
            tile = (decode_image(negative["frames"][index], row["clip_id"]) if negative
                    else np.full_like(gt, 128))
            tiles.append(_label(tile, kind))
        lines.append(np.concatenate(tiles, axis=1))
    return np.concatenate(lines, axis=0)
