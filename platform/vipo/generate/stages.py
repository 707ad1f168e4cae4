"""The generation stage: one model group, run by one actor class — decode → holes → inpaint → score → encode.

Decoding, inference and encoding happen inside the same actor, so raw frames never enter the object store;
only encoded rows leave it. A later stage (another model group) decodes the clip again from the source, which is
cheap next to inference and exact (the window and the holes are functions of ids and the run seed). Stages never
import Ray: :mod:`vipo.generate.adapter` turns them into actor pools, :func:`run_in_process` runs them here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

import vipo
from vipo.data.errors import BadSample
from vipo.data.sampling import ClipSamplingConfig, ClipWindow, resize_center_crop, sample_window
from vipo.data.shards import ClipRecord, Negative, Prior, Provenance, encode_clip
from vipo.generate.candidates import Candidate, QualityBand, QualityGate, Scorer, hard_composite, judge
from vipo.generate.config import GenerateConfig, StageConfig
from vipo.generate.kinds import Clip, NegativeKind
from vipo.generate.models import ModelSpec, load_models, pick_device
from vipo.generate.plan import WorkItem, WorkResult, derive_seed
from vipo.generate.writer import ShardCommit, ShardWriteStage, write_in_batches
from vipo.masks import MovingMaskConfig, random_moving_masks

__all__ = ["GENERATOR", "GenerateStage", "Resources", "build_stages", "load_window", "run_in_process"]

GENERATOR = "vipo.generate"


@dataclass(frozen=True)
class Resources:
    """What one actor of a stage reserves (fractional GPUs pack several actors per GPU; ``custom``: named Ray
    resources)."""

    cpus: float = 1.0
    gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)


def load_window(item: WorkItem, sampling: ClipSamplingConfig, seed: int) -> tuple[ClipWindow, np.ndarray]:
    """Sample the item's window (seeded by video id and window number) and decode it → uint8 (F,H,W,3).

    Raises :class:`BadSample` for a video shorter than ``nframes``, a corrupt video or an unreadable frame.
    """
    video = item.video
    rng = np.random.default_rng(derive_seed(seed, video.video_id, item.window, "window"))
    window = sample_window(video.num_frames, video.fps, sampling, rng)
    if window is None:
        raise BadSample(video.path, f"too few frames: {video.num_frames} < {sampling.nframes}")
    return window, resize_center_crop(video.read(window.indices), sampling.size)


@dataclass
class GenerateStage:
    """Makes ``kinds`` for every sample of a work item. Fields are the stage's config; ``setup`` loads models."""

    name: str
    kinds: list[NegativeKind]
    models: dict[str, ModelSpec]
    scorer: Scorer
    sampling: ClipSamplingConfig
    masks: MovingMaskConfig
    seed: int
    band: QualityBand | None
    gate: QualityGate
    config_hash: str
    frame_codec: str = "png"
    jpeg_quality: int = 95
    resources: Resources = Resources()
    batch_size: int = 1
    min_size: int = 1
    max_size: int = 1
    device: str = field(default="cpu", init=False)

    @classmethod
    def from_config(cls, config: GenerateConfig, stage: StageConfig, scorer: Scorer) -> "GenerateStage":
        kinds = [kind for kind in config.kinds if kind.label in stage.kinds]
        needed = sorted({model for kind in kinds for model in kind.required_models()})
        return cls(
            name=stage.name, kinds=[kind.model_copy() for kind in kinds],
            models={name: config.models[name] for name in needed}, scorer=scorer, sampling=config.sampling,
            masks=config.masks, seed=config.seed, band=config.quality_band, gate=config.quality_gate,
            config_hash=config.content_hash(), frame_codec=config.frame_codec, jpeg_quality=config.jpeg_quality,
            resources=Resources(stage.num_cpus, stage.num_gpus, dict(stage.resources)), batch_size=stage.batch_size,
            min_size=stage.min_size, max_size=stage.max_size,
        )

    def setup(self) -> None:
        """Load this stage's models once (per actor) and hand them to its kinds."""
        self.device = pick_device(self.resources.gpus)
        loaded = load_models(sorted(self.models), self.models, self.device)
        for kind in self.kinds:
            kind.setup(loaded)

    def process_batch(self, batch: list[WorkResult]) -> list[WorkResult]:
        return [self.process(result) for result in batch]

    def process(self, result: WorkResult) -> WorkResult:
        """Add this stage's negatives to every sample of ``result`` (a clip that failed to load is passed on)."""
        if result.error is not None:
            return result
        start = time.perf_counter()
        try:
            window, frames = load_window(result.item, self.sampling, self.seed)
        except BadSample as err:
            result.error, result.error_where = err.reason, err.where
            return result
        result.add_seconds("decode", time.perf_counter() - start)
        result.devices[self.name] = self.device
        clip = Clip(result.item.work_id, frames)
        for mask_index, clip_id in enumerate(result.item.sample_ids()):
            hole_seed = derive_seed(self.seed, clip_id, "hole")
            hole = random_moving_masks(*frames.shape[:3], seed=hole_seed, config=self.masks)
            candidates = self._candidates(clip, clip_id, hole, result)
            start = time.perf_counter()
            scores = self.scorer(np.stack([c.composite for c in candidates]), frames, hole)
            for i, candidate in enumerate(candidates):
                candidate.scores = {name: float(values[i]) for name, values in scores.items()}
            judge(candidates, self.band, self.gate)
            result.add_seconds("score", time.perf_counter() - start)
            start = time.perf_counter()
            record = ClipRecord(
                result.item.video.video_id, result.item.clip_index(mask_index), window.start, hole_seed,
                window.indices, frames, hole, negatives=_negatives(candidates),
                prior=Prior(next((c.prior for c in candidates if c.selected and c.prior != "none"), "none")),
            )
            sample = result.sample(clip_id)
            sample.rows.append(encode_clip(record, Provenance(GENERATOR, vipo.__version__, self.config_hash),
                                           self.frame_codec, self.jpeg_quality))
            sample.candidates.extend(c.record() for c in candidates)
            result.add_seconds("encode", time.perf_counter() - start)
        for name, seconds in clip.shared_seconds.items():
            result.add_seconds(name, seconds)
        return result

    def _candidates(self, clip: Clip, clip_id: str, hole: np.ndarray, result: WorkResult) -> list[Candidate]:
        candidates = []
        for kind in self.kinds:
            for seed in kind.seeds:
                candidate_seed = derive_seed(self.seed, clip_id, kind.label, seed)
                shared_before, start = clip.shared_total(), time.perf_counter()
                output = kind.make(clip, hole, candidate_seed)
                # Shared work (ProPainter) is booked under its own name, not under the kind that triggered it.
                result.add_seconds(kind.label, time.perf_counter() - start - (clip.shared_total() - shared_before))
                candidates.append(Candidate(kind.label, candidate_seed, output.frames,
                                            hard_composite(clip.frames, output.frames, hole), output.prior,
                                            output.meta))
        return candidates


def _negatives(candidates: list[Candidate]) -> list[Negative]:
    """Shard negatives of the selected candidates: raw output and hard composite, both kept."""
    negatives = []
    for c in candidates:
        if c.selected:
            meta: dict[str, Any] = {**c.meta, "prior": c.prior, "flags": c.flags}
            negatives.append(Negative(c.kind, c.raw, c.seed, composited=False, scores=c.scores, meta=meta))
            negatives.append(Negative(c.kind, c.composite, c.seed, composited=True, scores=c.scores, meta=meta))
    return negatives


def build_stages(config: GenerateConfig, scorer: Scorer) -> list[GenerateStage]:
    """The pipeline: one :class:`GenerateStage` per configured stage (model group), in config order."""
    return [GenerateStage.from_config(config, stage, scorer) for stage in config.stage_configs()]


def _processed(work: list[WorkResult], stages: list[GenerateStage]) -> Iterator[WorkResult]:
    for stage in stages:
        stage.setup()
    for result in work:
        for stage in stages:
            result = stage.process(result)
        yield result


def run_in_process(work: list[WorkResult], stages: list[GenerateStage],
                   writer: ShardWriteStage) -> Iterator[ShardCommit]:
    """Run the stages here, one clip at a time (models load once), and write the shards: the executor without
    Ray."""
    return write_in_batches(_processed(work, stages), writer)
