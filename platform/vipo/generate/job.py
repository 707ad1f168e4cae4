"""A generation run: output policy, planning, streaming results into shards, the error budget, the summary.

Output layout under ``output_dir``::

    shards/shard-<run tag>-<n>.parquet   rows (see vipo.data.shards), committed atomically
    shards/manifest.json                 per sample: done (+ shard) or skipped (+ reason), and the scores and
                                         flags of every candidate, selected or not
    shards/generation.json               what wrote the shards: content hash, scorer
    shards/summary.json                  counts, skips by reason, seconds per clip per kind, quality gate
    shards/contact_sheet.png             GT | hole | each negative, for the first few samples

Rerunning into an existing output refuses unless ``resume`` (finish it: exactly the missing clips are made; the
content-deciding config and the scorer must match) or ``overwrite`` (delete the shards and start again).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import cv2
from tqdm import tqdm

from vipo.config import ConfigError
from vipo.data.errors import SkipLog
from vipo.data.shards import MANIFEST_NAME, Manifest, ShardWriter
from vipo.generate.candidates import Scorer
from vipo.generate.config import GenerateConfig
from vipo.generate.plan import WorkResult, plan_work
from vipo.generate.report import RunStats, contact_sheet, manifest_summary
from vipo.generate.stages import GenerateStage, build_stages, run_in_process
from vipo.tracking import RunLogger, run_identity

__all__ = ["ErrorBudgetExceeded", "Executor", "OutputExistsError", "generate", "shards_dir"]

logger = logging.getLogger(__name__)

RUN_RECORD = "generation.json"
SUMMARY = "summary.json"
CONTACT_SHEET = "contact_sheet.png"
NO_NEGATIVE = "no negative selected: every candidate out of band or too close to GT"

Executor = Callable[[list[WorkResult], list[GenerateStage]], Iterator[WorkResult]]
"""Runs work through the stages and yields each finished result: Ray actor pools or this process."""


class OutputExistsError(ConfigError):
    """The output folder already holds shards this run may not touch."""


class ErrorBudgetExceeded(RuntimeError):
    """More clips had bad input than ``max_error_fraction`` allows."""


def shards_dir(config: GenerateConfig) -> Path:
    return config.output_dir / "shards"


def _prepare_output(config: GenerateConfig, scorer: Scorer, resume: bool, overwrite: bool) -> Manifest:
    folder = shards_dir(config)
    record = {"content_hash": config.content_hash(), "scorer": scorer.describe()}
    if (folder / MANIFEST_NAME).exists() or any(folder.glob("*.parquet")):
        if overwrite:
            shutil.rmtree(folder)
        elif not resume:
            raise OutputExistsError(f"{folder}: output_dir: already holds shards of a generation run; pass --resume "
                                    f"to finish it, --overwrite to replace it, or choose another output_dir")
        else:
            stored_path = folder / RUN_RECORD
            stored = json.loads(stored_path.read_text()) if stored_path.is_file() else None
            if stored != record:
                raise OutputExistsError(f"{folder}: cannot resume: the shards were made with {stored}, this config "
                                        f"gives {record}; use --overwrite or another output_dir")
    folder.mkdir(parents=True, exist_ok=True)
    for temp in folder.glob(".*.tmp"):  # leftovers of a writer killed mid-shard; never readable shards
        temp.unlink()
    (folder / RUN_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
    return Manifest.load(folder)


class _ShardCommitter:
    """Buffers rows, commits a shard every ``rows_per_shard`` rows, and saves the manifest after each commit."""

    def __init__(self, manifest: Manifest, rows_per_shard: int):
        self.manifest = manifest
        self.rows_per_shard = rows_per_shard
        self.run_tag = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.pending: list[tuple[dict, list[dict]]] = []
        self.shards = 0

    def add(self, row: dict, candidates: list[dict]) -> None:
        self.pending.append((row, candidates))
        if len(self.pending) >= self.rows_per_shard:
            self.flush()

    def skip(self, clip_id: str, reason: str, candidates: list[dict]) -> None:
        self.manifest.mark_skipped(clip_id, reason)
        self.manifest.clips[clip_id]["candidates"] = candidates

    def flush(self) -> None:
        if self.pending:
            name = f"shard-{self.run_tag}-{self.shards:05d}.parquet"
            with ShardWriter(self.manifest.folder / name) as writer:
                writer.write_rows([row for row, _ in self.pending])
            self.manifest.add_shard(writer.info)
            for row, candidates in self.pending:
                self.manifest.clips[row["clip_id"]]["candidates"] = candidates
            self.pending, self.shards = [], self.shards + 1
        self.manifest.save()


def _default_executor(config: GenerateConfig) -> Executor:
    if config.executor == "local":
        return run_in_process

    def on_ray(work: list[WorkResult], stages: list[GenerateStage]) -> Iterator[WorkResult]:
        from vipo.generate.adapter import run_on_ray
        from vipo.tracking import init_ray, launch_tracking_uri

        init_ray(config.ray, launch_tracking_uri(config.tracking, config.output_dir))  # only when there is work: a finished run resumes without starting Ray
        return run_on_ray(work, stages)

    return on_ray


def generate(config: GenerateConfig, scorer: Scorer, *, resume: bool = False, overwrite: bool = False,
             executor: Executor | None = None, logger_factory: Callable[[], RunLogger] | None = None) -> dict:
    """Run generation; return the summary (also written to ``shards/summary.json`` and logged).

    Raises :class:`OutputExistsError` when the output holds shards and neither ``resume`` nor ``overwrite`` is
    set (before any logging starts), :class:`ErrorBudgetExceeded` when bad-input clips exceed
    ``max_error_fraction`` (the shards and manifest written so far stay valid and a later ``resume``
    continues), and ``ModelLoadError`` naming the weights path when a model does not load.
    ``logger_factory`` builds the run's logger (config + identity tags first, summary, contact sheet, manifest
    at the end); the run is closed FINISHED, or FAILED/KILLED when an exception escapes.
    """
    manifest = _prepare_output(config, scorer, resume, overwrite)
    run_logger = logger_factory() if logger_factory is not None else None
    try:
        if run_logger is not None:
            run_logger.log_config(config, {**run_identity(config), **_scorer_tags(scorer)})
        summary, sheet_rows = _produce(config, scorer, manifest, executor or _default_executor(config))
        _write_report(config, manifest, summary, sheet_rows, run_logger)
    except BaseException as err:
        if run_logger is not None:
            run_logger.close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    if run_logger is not None:
        run_logger.close("FINISHED")
    return summary


def _produce(config: GenerateConfig, scorer: Scorer, manifest: Manifest,
             executor: Executor) -> tuple[dict, list[dict]]:
    """Plan, run the stages, commit rows and skips as results stream in → (summary, contact-sheet rows)."""
    scan_skips = SkipLog()
    items = plan_work(config.sources, config.max_videos, config.clips_per_video, config.masks_per_clip, scan_skips)
    finished = manifest.finished()
    todo = [item for item in items if not set(item.sample_ids()) <= finished]
    stats = RunStats(clips_planned=len(items))
    failed = scan_skips.total * config.clips_per_video
    total = len(todo) + failed
    budget = math.floor(config.max_error_fraction * total)
    _check_budget(failed, budget, total)
    committer = _ShardCommitter(manifest, config.rows_per_shard)
    sheet_rows: list[dict] = []
    written = skipped = 0
    start = time.perf_counter()
    results = executor([WorkResult(item) for item in todo], build_stages(config, scorer)) if todo else []
    with tqdm(total=len(todo), unit="clip", desc="generate", dynamic_ncols=True) as bar:
        for result in results:
            stats.add_result(result)
            if result.error is not None:
                failed += 1
                for clip_id in result.item.sample_ids():
                    committer.skip(clip_id, f"{result.error} ({result.error_where})", [])
                    skipped += 1
                _check_budget(failed, budget, total, committer)
            for clip_id, sample in result.samples.items():
                if clip_id in finished:
                    continue
                row = sample.merged_row()
                if not row["negatives"]:
                    committer.skip(clip_id, NO_NEGATIVE, sample.candidates)
                    skipped += 1
                    continue
                committer.add(row, sample.candidates)
                written += 1
                if len(sheet_rows) < config.contact_sheet_clips:
                    sheet_rows.append(row)
            bar.update(1)
            bar.set_postfix(written=written, skipped=skipped)
    committer.flush()
    elapsed = time.perf_counter() - start
    summary = manifest_summary(manifest, config.quality_gate)
    lost = config.clips_per_video * config.masks_per_clip
    for reason, videos in scan_skips.counts.items():  # videos no source could list have no manifest entries
        summary["skipped_by_reason"][reason] = summary["skipped_by_reason"].get(reason, 0) + videos * lost
        summary["samples_skipped"] += videos * lost
    summary.update(stats.summary(), samples_written_now=written, samples_skipped_now=skipped, wall_seconds=elapsed,
                   clips_per_minute=60 * stats.clips_processed / elapsed if stats.clips_processed else 0.0,
                   content_hash=config.content_hash(), scorer=scorer.describe(), shards=str(manifest.folder))
    return summary, sheet_rows


def _check_budget(failed: int, budget: int, total: int, committer: _ShardCommitter | None = None) -> None:
    if failed > budget:
        if committer is not None:
            committer.flush()  # keep what is done: a resume after fixing the inputs continues from here
        raise ErrorBudgetExceeded(f"{failed} of {total} clips had bad input, more than max_error_fraction allows "
                                  f"({budget}); see the skipped entries in the manifest")


def _scorer_tags(scorer: Scorer) -> dict[str, str]:
    return {f"vipo.generate.scorer.{key}": str(value) for key, value in scorer.describe().items()}


def _write_report(config: GenerateConfig, manifest: Manifest, summary: dict, sheet_rows: list[dict],
                  run_logger: RunLogger | None) -> None:
    folder = manifest.folder
    (folder / SUMMARY).write_text(json.dumps(summary, indent=1, sort_keys=True))
    sheet = contact_sheet(sheet_rows) if sheet_rows else None
    if sheet is not None:
        cv2.imwrite(str(folder / CONTACT_SHEET), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
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
