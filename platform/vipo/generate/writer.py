"""The write step: finished work results → one shard in the output store, and a small commit record for the driver.

It runs where the results are (a Ray task after the actor stages, or this process), so pixels go from the
workers straight to storage; the driver receives only :class:`ShardCommit` records (shard name, rows, clip ids,
checksum, scores) and owns the manifest. A shard's name is a hash of the work ids it holds, so a rerun of the
same work writes the same name; its footer carries the run's content hash and the candidates' records, so a shard
committed just before a crash (on storage, not yet in the manifest) can be verified and adopted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from vipo.data.errors import DataError
from vipo.data.shards import ShardInfo, ShardWriter
from vipo.data.storage import ShardStore
from vipo.generate.plan import WorkResult

__all__ = ["CANDIDATES_KEY", "CONTENT_HASH_KEY", "NO_NEGATIVE", "ShardCommit", "ShardWriteError", "ShardWriteStage",
           "shard_name", "write_in_batches"]

NO_NEGATIVE = "no negative selected: every candidate out of band or too close to GT"
CONTENT_HASH_KEY = "vipo.content_hash"
"""Footer key: the content hash of the run that wrote the shard (an orphan is adopted only by the same run)."""
CANDIDATES_KEY = "vipo.candidates"
"""Footer key: the manifest's candidate records (scores, flags) of the shard's clips, JSON by clip id."""


class ShardWriteError(DataError):
    """A shard could not be written (disk full, storage unreachable); what is committed stays valid."""


@dataclass
class ShardCommit:
    """What one write returns to the driver: no pixels. ``skipped``: (clip id, reason, bad input?) per sample
    not written; ``candidates``: each sample's candidate records; ``seconds``: summed over the ``clips`` timed;
    ``devices``: where each work item's stages ran; ``node``: the Ray node that wrote the shard ("" off Ray)."""

    work_ids: list[str]
    shard: ShardInfo | None = None
    skipped: list[tuple[str, str, bool]] = field(default_factory=list)
    candidates: dict[str, list[dict]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    clips: int = 0
    failed: int = 0
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    node: str = ""

    @property
    def rows(self) -> int:
        return self.shard.rows if self.shard else 0


def shard_name(work_ids: Iterable[str]) -> str:
    """The shard of these work items: the same items give the same name, whichever worker writes them."""
    digest = hashlib.sha256("\n".join(sorted(work_ids)).encode()).hexdigest()[:20]
    return f"shard-{digest}.parquet"


@dataclass(frozen=True)
class ShardWriteStage:
    """Writes batches of ``clips_per_shard`` finished work results as shards into ``store``.

    ``run_id`` tags the temporary files (the output's lease holder), ``cpus``/``resources`` are what each Ray
    write task reserves.
    """

    store: ShardStore
    content_hash: str
    run_id: str
    clips_per_shard: int = 1
    row_group_size: int = 4
    cpus: float = 0.25
    resources: dict[str, float] = field(default_factory=dict)

    def write(self, results: list[WorkResult]) -> ShardCommit:
        commit = ShardCommit([result.item.work_id for result in results])
        rows = []
        for result in results:
            commit.clips += 1
            commit.devices[result.item.work_id] = result.devices
            if result.error is not None:
                commit.failed += 1
                commit.skipped.extend((clip_id, f"{result.error} ({result.error_where})", True)
                                      for clip_id in result.item.sample_ids())
                continue
            for name, seconds in result.seconds.items():
                commit.seconds[name] = commit.seconds.get(name, 0.0) + seconds
            for clip_id, sample in result.samples.items():
                commit.candidates[clip_id] = sample.candidates
                row = sample.merged_row()
                if row["negatives"]:
                    rows.append(row)
                else:
                    commit.skipped.append((clip_id, NO_NEGATIVE, False))
        if rows:
            name = shard_name(commit.work_ids)
            metadata = {CONTENT_HASH_KEY: self.content_hash,
                        CANDIDATES_KEY: json.dumps({row["clip_id"]: commit.candidates[row["clip_id"]]
                                                    for row in rows})}
            writer = ShardWriter(name, self.row_group_size, store=self.store, metadata=metadata,
                                 temp_tag=self.run_id)
            try:
                with writer:
                    writer.write_rows(rows)
            except OSError as err:
                raise ShardWriteError(f"{self.store.where(name)}: cannot write shard ({err}); free space or fix "
                                      f"the storage, then run again with --resume") from None
            commit.shard = writer.info
        return commit


def write_in_batches(results: Iterable[WorkResult], writer: ShardWriteStage) -> Iterator[ShardCommit]:
    """Group finished results ``writer.clips_per_shard`` at a time and write each group: the write step of the
    in-process executor (and of the driver-write baseline in ``benchmarks/bench_generate.py``)."""
    batch: list[WorkResult] = []
    for result in results:
        batch.append(result)
        if len(batch) == writer.clips_per_shard:
            yield writer.write(batch)
            batch = []
    if batch:
        yield writer.write(batch)
