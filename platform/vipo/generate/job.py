"""A generation run: the output's lease and self-repair, planning, streaming commit records into the manifest, the
error budget, progress, the summary.

Output layout under ``output_dir``::

    shards/lease.json                    the running generation's host, pid, start and heartbeat
    shards/shard-<work-id hash>.parquet  rows (see vipo.data.shards), written by the workers, committed atomically
                                         (or under ``shard_storage``: a shared path or an object-store URI)
    shards/manifest.json                 per sample: done (+ shard) or skipped (+ reason), and the scores and
                                         flags of every candidate, selected or not; per shard rows and sha256
    shards/generation.json               what wrote the shards: content hash, scorer
    shards/summary.json                  counts, skips by reason, seconds per clip per kind, quality gate
    shards/contact_sheet.png             GT | hole | each negative, for the first few samples

Rerunning into an existing output refuses unless ``resume`` (finish it: exactly the missing clips are made; the
content-deciding config and the scorer must match) or ``overwrite`` (delete the shards and start again); a live
run's lease refuses both. Every start verifies each listed shard (exists, footer, rows, checksum) and puts the
clips of a failed one back to do; a shard on storage but not in the manifest is adopted when it verifies and was
made by this content hash, else deleted. ``retry_skipped`` also redoes clips skipped for bad input.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2
import pyarrow.parquet as pq
from tqdm import tqdm

from vipo.config import ConfigError
from vipo.data.errors import DataError, SkipLog
from vipo.data.shards import MANIFEST_NAME, Manifest, verify_shard
from vipo.data.flow_store import atomic_write_bytes
from vipo.data.storage import TEMP_SUFFIX, ShardStore
from vipo.generate.candidates import Scorer
from vipo.generate.config import GenerateConfig
from vipo.generate.lease import LEASE_NAME, OutputLease
from vipo.generate.plan import WorkItem, WorkResult, plan_work
from vipo.generate.report import RunStats, contact_sheet, manifest_summary
from vipo.generate.stages import GenerateStage, build_stages, run_in_process
from vipo.generate.writer import CANDIDATES_KEY, CONTENT_HASH_KEY, ShardCommit, ShardWriteStage
from vipo.tracking import RunLogger, run_identity

__all__ = ["ErrorBudgetExceeded", "Executor", "OutputExistsError", "generate", "shards_dir"]

logger = logging.getLogger(__name__)

RUN_RECORD = "generation.json"
SUMMARY = "summary.json"
CONTACT_SHEET = "contact_sheet.png"

Executor = Callable[[list[WorkResult], list[GenerateStage], ShardWriteStage], Iterator[ShardCommit]]
"""Runs work through the stages, writes shards, and yields each commit record: Ray actor pools or this process."""


class OutputExistsError(ConfigError):
    """The output folder already holds shards this run may not touch."""


class ErrorBudgetExceeded(RuntimeError):
    """More clips had bad input than ``max_error_fraction`` allows."""


def shards_dir(config: GenerateConfig) -> Path:
    return config.output_dir / "shards"


def _store(config: GenerateConfig) -> ShardStore:
    return ShardStore(config.shard_storage or str(shards_dir(config)))


def _delete_leftovers(folder: Path, store: ShardStore) -> None:
    """Temp files of dead writers (the lease says no other writer is alive); never readable shards."""
    for temp in folder.glob(f".*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
    for name in store.list():
        if name.startswith(".") and name.endswith(TEMP_SUFFIX):
            store.delete(name)


def _prepare_output(config: GenerateConfig, scorer: Scorer, resume: bool, overwrite: bool,
                    retry_skipped: bool) -> Manifest:
    """Check the run may write here, repair the output (see the module doc) → the manifest to continue."""
    folder, store = shards_dir(config), _store(config)
    record = {"content_hash": config.content_hash(), "scorer": scorer.describe()}
    shards = [name for name in store.list() if name.endswith(".parquet") and not name.startswith(".")]
    if (folder / MANIFEST_NAME).exists() or shards:
        if overwrite:
            for name in shards:
                store.delete(name)
            for path in folder.iterdir():
                if path.is_file() and path.name != LEASE_NAME:
                    path.unlink()
        elif not (resume or retry_skipped):
            raise OutputExistsError(f"{folder}: output_dir: already holds shards of a generation run; pass --resume "
                                    f"to finish it, --overwrite to replace it, or choose another output_dir")
        else:
            stored_path = folder / RUN_RECORD
            stored = json.loads(stored_path.read_text()) if stored_path.is_file() else None
            if stored != record:
                raise OutputExistsError(f"{folder}: cannot resume: the shards were made with {stored}, this config "
                                        f"gives {record}; use --overwrite or another output_dir")
    _delete_leftovers(folder, store)
    atomic_write_bytes(json.dumps(record, indent=1, sort_keys=True).encode(), folder / RUN_RECORD)
    manifest = Manifest.load(folder, adopt_unlisted=False)
    if manifest.shards and manifest.storage != config.shard_storage:
        raise OutputExistsError(f"{folder}: the manifest's shards are in {manifest.storage or folder}, the config "
                                f"says shard_storage={config.shard_storage}; keep the storage of the first run")
    manifest.storage = config.shard_storage
    _repair(manifest, store, record["content_hash"])
    if retry_skipped:
        for clip_id in manifest.input_errors():
            del manifest.clips[clip_id]
    if manifest.path.exists() or manifest.clips:  # a run that fails before its first commit leaves no manifest
        manifest.save()
    return manifest


def _repair(manifest: Manifest, store: ShardStore, content_hash: str) -> None:
    """Verify every listed shard (bad ones go, their clips back to do); adopt or delete unlisted ones."""
    for name, entry in sorted(manifest.shards.items()):
        try:
            info, _ = verify_shard(store, name)
            if (info.rows, info.checksum) != (entry["rows"], entry.get("sha256")):
                raise DataError(f"{store.where(name)}: {info.rows} rows with sha256 {info.checksum[:12]}..., the "
                                f"manifest recorded {entry['rows']} rows with {str(entry.get('sha256'))[:12]}...")
        except DataError as err:
            lost = manifest.remove_shard(name)
            store.delete(name)
            logger.warning("%s; its %d clips will be generated again", err, len(lost))
    for name in manifest.unlisted():
        try:
            info, footer = verify_shard(store, name)
            if footer.get(CONTENT_HASH_KEY) != content_hash:
                raise DataError(f"{store.where(name)}: made by a run of content hash {footer.get(CONTENT_HASH_KEY)}, "
                                f"not {content_hash}")
        except DataError as err:
            store.delete(name)
            logger.warning("deleted an orphan shard: %s", err)
            continue
        manifest.add_shard(info)
        for clip_id, candidates in json.loads(footer.get(CANDIDATES_KEY, "{}")).items():
            manifest.clips[clip_id]["candidates"] = candidates
        logger.info("adopted %s: committed by a run that died before recording it", store.where(name))


def _default_executor(config: GenerateConfig) -> Executor:
    if config.executor == "local":
        return run_in_process

    def on_ray(work: list[WorkResult], stages: list[GenerateStage], writer: ShardWriteStage) -> Iterator[ShardCommit]:
        import ray

        from vipo.generate.adapter import run_on_ray
        from vipo.tracking import init_ray, launch_tracking_uri

        started = not ray.is_initialized()
        # Only when there is work: a finished run resumes without starting Ray.
        init_ray(config.ray, launch_tracking_uri(config.tracking, config.output_dir))
        try:
            yield from run_on_ray(work, stages, writer)
        finally:
            if started:
                ray.shutdown()  # what this run started, it stops, on success and on any error

    return on_ray


def generate(config: GenerateConfig, scorer: Scorer, *, resume: bool = False, overwrite: bool = False,
             retry_skipped: bool = False, executor: Executor | None = None,
             logger_factory: Callable[[], RunLogger] | None = None) -> dict:
    """Run generation; return the summary (also written to ``shards/summary.json`` and logged).

    Raises :class:`~vipo.generate.lease.OutputLockedError` when a live run holds the output,
    :class:`OutputExistsError` when the output holds shards and neither ``resume`` nor ``overwrite`` is set
    (before any logging starts), :class:`ErrorBudgetExceeded` when bad-input clips of all launches exceed
    ``max_error_fraction`` (the shards and manifest written so far stay valid and a later ``resume`` continues),
    :class:`~vipo.generate.writer.ShardWriteError` when storage refuses a shard (e.g. disk full), and
    ``ModelLoadError`` naming the weights path when a model does not load. ``retry_skipped`` resumes and also
    redoes clips skipped for bad input. ``logger_factory`` builds the run's logger (config + identity tags first,
    summary, contact sheet, manifest at the end); the run is closed FINISHED, or FAILED/KILLED when an exception
    escapes.
    """
    with OutputLease(shards_dir(config), config.lease_stale_seconds) as lease:
        manifest = _prepare_output(config, scorer, resume, overwrite, retry_skipped)
        run_logger = logger_factory() if logger_factory is not None else None
        try:
            if run_logger is not None:
                run_logger.log_config(config, {**run_identity(config), **_scorer_tags(scorer)})
            summary = _produce(config, scorer, manifest, executor or _default_executor(config), lease.run_id)
            _write_report(config, manifest, summary, run_logger)
        except BaseException as err:
            if run_logger is not None:
                run_logger.close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        if run_logger is not None:
            run_logger.close("FINISHED")
        return summary


def _failed_items(items: list[WorkItem], manifest: Manifest) -> int:
    """Work items an earlier launch skipped for bad input (all of an item's samples share its fate)."""
    bad = set(manifest.input_errors())
    return sum(item.sample_ids()[0] in bad for item in items)


def _progress_text(written: int, skipped: int, stats: RunStats) -> str:
    per_clip = stats.summary()["seconds_per_clip"]
    timing = " ".join(f"{name} {seconds:.2f}" for name, seconds in per_clip.items())
    return f"written={written} skipped={skipped}" + (f" s/clip: {timing}" if timing else "")


def _produce(config: GenerateConfig, scorer: Scorer, manifest: Manifest, executor: Executor, run_id: str) -> dict:
    """Plan, run the stages and the writes, record commits as they stream in → the summary."""
    scan_skips = SkipLog()
    items = plan_work(config.sources, config.max_videos, config.clips_per_video, config.masks_per_clip, scan_skips)
    finished = manifest.finished()
    todo = [item for item in items if not set(item.sample_ids()) <= finished]
    stats = RunStats(clips_planned=len(items))
    unlisted = scan_skips.total * config.clips_per_video
    total = len(items) + unlisted
    failed = unlisted + _failed_items(items, manifest)  # the budget spans every launch into this output
    budget = math.floor(config.max_error_fraction * total)
    _check_budget(failed, budget, total)
    writer = ShardWriteStage(_store(config), config.content_hash(), run_id,
                             clips_per_shard=max(1, math.ceil(config.rows_per_shard / config.masks_per_clip)),
                             cpus=config.writer.num_cpus, resources=dict(config.writer.resources))
    written = skipped = 0
    start = time.perf_counter()
    commits = executor([WorkResult(item) for item in todo], build_stages(config, scorer), writer) if todo else iter(())
    try:
        with tqdm(total=len(todo), unit="clip", desc="generate", dynamic_ncols=True, disable=None) as bar:
            for commit in commits:
                stats.add_commit(commit)
                if commit.shard is not None:
                    manifest.add_shard(commit.shard)
                for clip_id, reason, input_error in commit.skipped:
                    manifest.mark_skipped(clip_id, reason, input_error)
                for clip_id, candidates in commit.candidates.items():
                    manifest.clips[clip_id]["candidates"] = candidates
                manifest.save()
                written, skipped, failed = written + commit.rows, skipped + len(commit.skipped), failed + commit.failed
                bar.update(commit.clips)
                bar.set_postfix_str(_progress_text(written, skipped, stats), refresh=False)
                _check_budget(failed, budget, total)
    finally:
        close = getattr(commits, "close", None)
        if close is not None:
            close()  # an error or a kill stops the executor (Ray Data's iterator) before we leave
    elapsed = time.perf_counter() - start
    summary = manifest_summary(manifest, config.quality_gate)
    lost = config.clips_per_video * config.masks_per_clip
    for reason, videos in scan_skips.counts.items():  # videos no source could list have no manifest entries
        summary["skipped_by_reason"][reason] = summary["skipped_by_reason"].get(reason, 0) + videos * lost
        summary["samples_skipped"] += videos * lost
    summary.update(stats.summary(), samples_written_now=written, samples_skipped_now=skipped, wall_seconds=elapsed,
                   clips_per_minute=60 * stats.clips_processed / elapsed if stats.clips_processed else 0.0,
                   content_hash=config.content_hash(), scorer=scorer.describe(), shards=str(manifest.folder))
    return summary


def _check_budget(failed: int, budget: int, total: int) -> None:
    if failed > budget:
        raise ErrorBudgetExceeded(f"{failed} of {total} clips had bad input (this and earlier launches), more than "
                                  f"max_error_fraction allows ({budget}); see the skipped entries in the manifest, "
                                  f"fix the inputs and rerun with --retry-skipped")


def _sheet_rows(manifest: Manifest, count: int) -> list[dict]:
    """The first ``count`` rows the manifest counts as done, read back from the store."""
    rows: list[dict] = []
    store = manifest.store
    for name in sorted(manifest.shards):
        if len(rows) >= count:
            break
        with store.open_input(name) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=count):
                rows += [row for row in batch.to_pylist()
                         if manifest.clips.get(row["clip_id"], {}).get("shard") == name]
                if len(rows) >= count:
                    break
    return rows[:count]


def _scorer_tags(scorer: Scorer) -> dict[str, str]:
    return {f"vipo.generate.scorer.{key}": str(value) for key, value in scorer.describe().items()}


def _write_report(config: GenerateConfig, manifest: Manifest, summary: dict, run_logger: RunLogger | None) -> None:
    folder = manifest.folder
    atomic_write_bytes(json.dumps(summary, indent=1, sort_keys=True).encode(), folder / SUMMARY)
    sheet_rows = _sheet_rows(manifest, config.contact_sheet_clips)
    sheet = contact_sheet(sheet_rows) if sheet_rows else None
    if sheet is not None:
        png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))[1].tobytes()
        atomic_write_bytes(png, folder / CONTACT_SHEET)
    too_close = [kind for kind, gate in summary["quality_gate"]["kinds"].items() if gate["too_close_to_gt"]]
    for kind in too_close:
        logger.warning("negatives of kind %r are too close to the ground truth: mean hole PSNR %.1f dB > %.1f",
                       kind, summary["quality_gate"]["kinds"][kind]["hole_psnr_mean"], config.quality_gate.max_psnr)
    if run_logger is None:
        return
    run_logger.log_metrics(_numbers(summary, "generate."), step=0)
    if sheet is not None:
        run_logger.log_images({"contact_sheet": sheet}, step=0)
    run_logger.set_tags({**run_identity(config, manifest_path=manifest.path),
                         "vipo.generate.too_close_to_gt": ",".join(too_close) or "none"})
    run_logger.log_artifact(manifest.path, "generate")
    run_logger.log_artifact(folder / SUMMARY, "generate")
    if sheet is not None:
        run_logger.log_artifact(folder / CONTACT_SHEET, "generate")


def _numbers(data: dict, prefix: str) -> dict[str, float]:
    """The finite numbers of a nested summary as dotted metric names (flags, texts and None left out)."""
    numbers = {}
    for key, value in data.items():
        if isinstance(value, dict):
            numbers.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[f"{prefix}{key}"] = float(value)
    return numbers
