"""The one module that knows Ray Data: generation stages → actor pools, results streamed back to the driver.

``from_items`` puts one work item per block (a failure is then one clip, and every actor gets work at once);
each stage becomes ``map_batches`` over an actor class (``ActorPoolStrategy(size=pool_size)``, ``num_gpus`` and
``num_cpus`` per actor from the stage's resources) whose constructor loads the models once. Rows carry pickled
:class:`WorkResult` objects — encoded frames only — so consecutive actor stages (which Ray never fuses) exchange
compressed bytes, not raw video.

The write happens on the driver: rows stream back through ``iter_rows`` to the job, which commits them into
shards with :class:`vipo.data.shards.ShardWriter` and records each commit in the manifest. One writer of the
manifest, committing shard by shard, is what makes a killed run resumable clip-exactly, and it lets the job show
progress per clip and stop on the error budget while the pipeline runs.
"""

from __future__ import annotations

import pickle
from typing import Iterator

import pyarrow as pa
import ray
import ray.data

from vipo.generate.plan import WorkResult
from vipo.generate.stages import GenerateStage

__all__ = ["run_on_ray"]


def _row(result: WorkResult) -> dict:
    return {"work_id": result.item.work_id, "payload": pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)}


def _to_table(results: list[WorkResult]) -> pa.Table:
    return pa.Table.from_pylist([_row(result) for result in results],
                                schema=pa.schema([("work_id", pa.string()), ("payload", pa.binary())]))


def _from_table(table: pa.Table) -> list[WorkResult]:
    return [pickle.loads(payload) for payload in table.column("payload").to_pylist()]


class _StageActor:
    """A Ray Data actor around one stage: ``setup`` in the constructor, one stage call per batch."""

    def __init__(self, stage: GenerateStage):
        self.stage = stage
        stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = self.stage.process_batch(_from_table(batch))
        for result in results:  # which logical GPUs Ray gave the actor (the stage records the torch device)
            result.devices[f"{self.stage.name}.ray_gpu_ids"] = ",".join(str(i) for i in ray.get_gpu_ids())
        return _to_table(results)


def run_on_ray(work: list[WorkResult], stages: list[GenerateStage]) -> Iterator[WorkResult]:
    """Run ``work`` through ``stages`` as Ray Data actor pools; yield results as clips finish (any order)."""
    if not work:
        return
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the job shows one clips-done bar instead of one per operator
    dataset = ray.data.from_items([_row(result) for result in work], override_num_blocks=len(work))
    for stage in stages:
        dataset = dataset.map_batches(
            _StageActor,
            fn_constructor_kwargs={"stage": stage},
            batch_size=stage.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=stage.pool_size),
            num_cpus=stage.resources.cpus,
            num_gpus=stage.resources.gpus,
        )
    for row in dataset.iter_rows():
        yield pickle.loads(row["payload"])
