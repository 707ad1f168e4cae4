"""Ray Data glue: the shard sink and the batch collate adapter (apart, so ``import vipo.data`` needs no Ray)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
from ray.data import Datasink
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.datasource.datasink import WriteResult

from vipo.data.shards import Manifest, ShardWriter

__all__ = ["ClipShardDatasink", "RawBatchCollate"]


class ClipShardDatasink(Datasink):
    """Write shard rows (dicts from :func:`vipo.data.shards.encode_clip`) atomically, one shard per write task.

    Rows may carry an extra ``skip_reason`` string column: rows where it is non-empty are not written but
    recorded in the manifest as skipped with that reason. The manifest is updated once, on the driver, when the
    write finishes; the shards of a run that dies before that are verified and adopted by the next
    :meth:`Manifest.load`. (``vipo generate`` streams commit records instead, see :mod:`vipo.generate.writer`.)

    Usage: ``ds.write_datasink(ClipShardDatasink(out_dir, run_tag="gen-0", min_rows_per_shard=64))``.
    """

    def __init__(self, folder: str | Path, run_tag: str | None = None, row_group_size: int = 4,
                 min_rows_per_shard: int | None = None):
        self.folder = Path(folder)
        self.run_tag = run_tag or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.row_group_size = row_group_size
        self._min_rows = min_rows_per_shard
        self._write_id = uuid.uuid4().hex[:8]

    @property
    def min_rows_per_write(self) -> int | None:
        return self._min_rows

    def on_write_start(self, schema=None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, blocks: Iterable, ctx) -> dict:
        tables = [b if isinstance(b, pa.Table) else pa.Table.from_pandas(b) for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return {"shard": None, "skipped": []}
        table = pa.concat_tables(tables, promote_options="default")
        skipped: list[tuple[str, str]] = []
        if "skip_reason" in table.column_names:
            reasons = table.column("skip_reason").to_pylist()
            skipped = [(c, r) for c, r in zip(table.column("clip_id").to_pylist(), reasons) if r]
            table = table.filter(pa.array([not r for r in reasons]))
        if table.num_rows == 0:
            return {"shard": None, "skipped": skipped}
        name = f"shard-{self.run_tag}-{self._write_id}-{ctx.task_idx:05d}.parquet"
        with ShardWriter(self.folder / name, self.row_group_size) as writer:
            writer.write_table(table)
        return {"shard": writer.info, "skipped": skipped}

    def on_write_complete(self, write_result: WriteResult) -> None:
        manifest = Manifest.load(self.folder)
        for result in write_result.write_returns:
            if result["shard"] is not None:
                manifest.add_shard(result["shard"])
            for clip_id, reason in result["skipped"]:
                manifest.mark_skipped(clip_id, reason)
        manifest.save()


class RawBatchCollate(NumpyBatchCollateFn):
    """``iter_torch_batches(collate_fn=RawBatchCollate(dataset))``: numpy batches of raw samples → the dataset's
    training tensors (``dataset.collate``)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        return self.dataset.collate(batch)
