"""The one evaluation module that knows Ray Data: an :class:`EvaluateStage` → an actor pool over the clips.

``from_items`` puts one clip per block, so every actor gets work at once and a failure names one clip; the stage
becomes ``map_batches`` over an actor class (``ActorPoolStrategy(size=pool_size)``, ``num_gpus``/``num_cpus`` per
actor from the method's ``actors``) whose constructor runs ``setup``. Rows out are each clip's scores as JSON; the
driver stores them as they arrive, so a killed run keeps every finished clip.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import ray.data

from evaluation.cache import ClipScores
from evaluation.stage import EvaluateStage

__all__ = ["run_on_ray"]


class _StageActor:
    """A Ray Data actor around one stage: ``setup`` in the constructor, one stage call per batch."""

    def __init__(self, stage: EvaluateStage):
        self.stage = stage
        stage.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        results = self.stage.process_batch([str(clip_id) for clip_id in batch["clip_id"]])
        return {"clip_id": [r.clip_id for r in results], "scores": [r.to_json() for r in results]}


def run_on_ray(stage: EvaluateStage, clip_ids: list[str]) -> Iterator[ClipScores]:
    """Evaluate ``clip_ids`` with ``stage`` on a Ray Data actor pool; yield scores as clips finish (any order)."""
    if not clip_ids:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job shows one clips-done bar per method instead
    dataset = ray.data.from_items([{"clip_id": clip_id} for clip_id in clip_ids], override_num_blocks=len(clip_ids))
    actors = stage.actors
    dataset = dataset.map_batches(
        _StageActor,
        fn_constructor_kwargs={"stage": stage},
        batch_size=actors.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(actors.pool_size, len(clip_ids))),
        num_cpus=actors.num_cpus,
        num_gpus=actors.num_gpus,
    )
    for row in dataset.iter_rows():
        yield ClipScores.from_json(row["scores"])
