"""The one module that knows Ray Data: generation stages → autoscaling actor pools → write tasks → commit records.

``from_items`` puts one work item per block (a failure is then one clip, and every actor gets work at once);
each stage becomes ``map_batches`` over an actor class (``ActorPoolStrategy(min_size, max_size)``: the pool grows
while the stage has queued work and the cluster has room, so stages with different models get their own bounds
and fractional GPUs) whose constructor loads the models once. Rows carry pickled :class:`WorkResult` objects —
encoded frames only — so consecutive actor stages (which Ray never fuses) exchange compressed bytes, not raw
video.

A last ``map_batches`` of Ray tasks writes each group of finished clips as one shard straight into the output
store (:class:`vipo.generate.writer.ShardWriteStage`); only the small :class:`ShardCommit` records stream back to
the driver, which records them in the manifest, shows progress and stops on the error budget. Leaving the
iterator early (an error, a kill) closes Ray Data's result iterator, which stops the pipeline.
"""

from __future__ import annotations

import pickle
from typing import Iterator

import pyarrow as pa
import ray
import ray.data

from vipo.generate.plan import WorkResult
from vipo.generate.stages import GenerateStage
from vipo.generate.writer import ShardCommit, ShardWriteStage, write_in_batches

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
        node = ray.get_runtime_context().get_node_id()
        for result in results:  # which node and logical GPUs Ray gave the actor (the stage records the torch device)
            result.devices[f"{self.stage.name}.ray_gpu_ids"] = ",".join(str(i) for i in ray.get_gpu_ids())
            result.devices[f"{self.stage.name}.node"] = node
        return _to_table(results)


def _write(batch: pa.Table, writer: ShardWriteStage) -> pa.Table:
    commit = writer.write(_from_table(batch))
    commit.node = ray.get_runtime_context().get_node_id()
    return pa.table({"commit": [pickle.dumps(commit, protocol=pickle.HIGHEST_PROTOCOL)]})


def run_on_ray(work: list[WorkResult], stages: list[GenerateStage], writer: ShardWriteStage, *,
               write_on_driver: bool = False) -> Iterator[ShardCommit]:
    """Run ``work`` through ``stages`` as Ray Data actor pools and write the shards from the workers; yield each
    commit as its shard lands (any order). ``write_on_driver``: stream the results here and write them in this
    process instead (the baseline of ``benchmarks/bench_generate.py``)."""
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
            compute=ray.data.ActorPoolStrategy(min_size=min(stage.min_size, len(work)),
                                               max_size=min(stage.max_size, len(work))),
            num_cpus=stage.resources.cpus,
            num_gpus=stage.resources.gpus,
            **({"resources": stage.resources.custom} if stage.resources.custom else {}),
        )
    if write_on_driver:
        rows = iter(dataset.iter_rows())
        try:
            yield from write_in_batches((pickle.loads(row["payload"]) for row in rows), writer)
        finally:
            rows.close()
        return
    dataset = dataset.map_batches(_write, fn_kwargs={"writer": writer}, batch_size=writer.clips_per_shard,
                                  batch_format="pyarrow", num_cpus=writer.cpus,
                                  **({"resources": writer.resources} if writer.resources else {}))
    rows = iter(dataset.iter_rows())
    try:
        for row in rows:
            yield pickle.loads(row["commit"])
    finally:
        rows.close()  # stops the streaming executor: an error or a kill never leaves the pipeline running
