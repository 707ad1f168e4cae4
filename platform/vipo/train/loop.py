"""The loop every recipe shares: data → micro-steps → log → validate → checkpoint, and resume.

A recipe (``vipo/train/recipes/<name>.py``) builds its models and dataset in ``setup`` and hands them to
:class:`TrainLoop`, which owns everything else: the resumable per-epoch data order, the noise generator, the
MLflow logger (rank 0), checkpoints through ``ray.train.report``, the validation gate (scores vs the start
weights, reported with the checkpoint so Tune sees them; strips and GIFs) and the final export.
The hooks a recipe provides are listed in :class:`Recipe`.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from vipo.config import dump_config, validate_config
from vipo.tracking import RunLogger, build_logger, read_run_id, run_identity, write_run_id
from vipo.train.checkpointing import (
    CONFIG_FILE,
    PROGRESS_FILE,
    WEIGHTS_DIR,
    TrainingProgress,
    atomic_save,
    atomic_write_text,
    capture_rng,
    checkpoint_dir_name,
    mark_complete,
    prune_checkpoints,
    restore_rng,
    resume_checkpoint,
    rng_file,
    seed_global_rngs,
)
from vipo.train.config import TrainConfig
from vipo.train.engine import Engine, WorkerContext
from vipo.train.validation import ClipScorer, ValidationGate
from vipo.train.guard import StepGuard, nonfinite_parameters
from vipo.train.preemption import stop_requested

__all__ = ["DRILL_MARKER", "InjectedFailure", "Recipe", "TrainLoop", "run_recipe", "video_grid"]

DRILL_MARKER = ".failure_drill_done"


class InjectedFailure(RuntimeError):
    """The crash ``failure.inject_at_step`` asks for."""


class Recipe(Protocol):
    """What a recipe class provides: torchtune's verbs (``setup``, ``train``, ``save_checkpoint``, ``cleanup``)
    plus the hooks :class:`TrainLoop` calls. See ``vipo/train/recipes/stage1.py`` for the smallest example."""

    config_class: ClassVar[type[TrainConfig]]
    #: Recorded as MLflow identity tags: the weights the run starts from and the data manifest it reads.
    parent_checkpoint: Path | None
    manifest_path: Path | None
    #: The fixed validation clips (``.clips``: name → (frames, hole), judged by the loop's gate), or None.
    validation: Any
    #: Injected by :func:`run_recipe`; scores the validation clips (None: strips only).
    scorer: ClipScorer | None
    #: Injected by :func:`run_recipe`; receives every report in local mode (e.g. ``ray.tune.report``).
    on_report: Callable[[dict], None] | None

    @classmethod
    def prepare(cls, cfg: TrainConfig) -> None:
        """On the driver, once, before any worker starts (e.g. write tiny demo weights)."""

    def __init__(self, cfg: TrainConfig, ctx: WorkerContext) -> None: ...

    def setup(self, checkpoint: Path | None) -> None:
        """Build models (trained weights from ``checkpoint/weights`` when resuming), the engine, the dataset and
        ``self.loop = TrainLoop(self, ..., checkpoint=checkpoint)``."""

    def train(self) -> None:
        """``self.loop.run()``."""

    def save_checkpoint(self, directory: Path) -> None:
        """Write the trained weights (``save_pretrained`` / peft folders) into ``directory`` (rank 0 only)."""

    def cleanup(self) -> None:
        """Drop models and free accelerator memory (runs after success and failure alike)."""

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """One micro-batch through ``engine.module``: the scalar loss and extra scalars to log (averaged over
        ranks; every rank must return the same keys)."""

    def validate(self, step: int) -> dict[str, np.ndarray]:
        """Rank 0 (every rank under ZeRO-3, whose result is dropped): validation clip name → the current weights'
        raw (F, H, W, 3) uint8 inpainting, judged by the loop's :class:`ValidationGate`; a recipe without
        ``validation.clips`` returns its own strips (name → (F, H, W, 3) uint8), logged as they are."""

    @classmethod
    def export(cls, cfg: TrainConfig, checkpoint: Path, out_dir: Path) -> None:
        """Write diffusers-format folders for ``checkpoint`` (a folder of this recipe) into ``out_dir``."""


def video_grid(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 → one (H, F·W, 3) strip, frames left to right."""
    return np.concatenate(list(frames), axis=1)


def _write_gif(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    import imageio.v2 as imageio

    imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)


class TrainLoop:
    """Runs a set-up recipe to ``optim.max_steps`` and resumes it from a checkpoint folder.

    ``noise`` is the generator recipes draw timesteps and noise from (per rank, saved in checkpoints). Data
    order per epoch comes from a seeded ``DistributedSampler``, so skipping ``batch_in_epoch`` batches after a
    restart reproduces exactly what an uninterrupted run would have seen next.
    """

    def __init__(self, recipe: Recipe, cfg: TrainConfig, ctx: WorkerContext, engine: Engine, dataset: Dataset, *,
                 checkpoint: Path | None, loader_workers: int = 0):
        self.recipe, self.cfg, self.ctx, self.engine, self.dataset = recipe, cfg, ctx, engine, dataset
        self.loader_workers = loader_workers
        seed_global_rngs(cfg.seed, ctx.rank)  # a resume then restores the checkpoint's states instead
        self.noise = torch.Generator().manual_seed(cfg.seed * 100_003 + ctx.rank)
        self.progress = TrainingProgress(seed=cfg.seed)
        self.guard = StepGuard(cfg.guard)
        self._skip_reason: str | None = None  # the guard's verdict on the step in progress
        self.stopped_early = False  # a stop request (SIGTERM to the driver) ended the run at a checkpoint
        # The gate judges recipes whose validation is a set of inpainting clips (``.clips``); others (ProPainter's)
        # return their own strips from ``validate`` and log their own scores.
        clips = getattr(getattr(recipe, "validation", None), "clips", None)
        scorer = getattr(recipe, "scorer", None)
        if scorer is not None and ctx.is_main and clips is not None:
            scorer = scorer.setup(ctx.device)
        self.gate = ValidationGate(clips, scorer) if clips is not None else None
        if checkpoint is not None:
            self._restore(checkpoint)
        # Decided once, on every rank alike, so all ranks crash together and a relaunch does not crash again.
        drill = cfg.failure.inject_at_step
        self._drill_pending = (drill is not None and drill > self.progress.step
                               and not (cfg.run_dir / DRILL_MARKER).exists())
        # The run folder is this run's identity: a relaunch reopens the MLflow run the checkpoint (or, before the
        # first checkpoint, the folder) records, by id.
        self.logger: RunLogger = build_logger(
            cfg.tracking, cfg.output_dir, cfg.run_name, rank=ctx.rank, run_folder=cfg.run_dir, resume=True,
            run_id=read_run_id(checkpoint) if checkpoint is not None else None, system_metrics=True,
        )
        if ctx.is_main:
            self.logger.log_config(cfg, run_identity(
                cfg, manifest_path=recipe.manifest_path, parent_checkpoint=recipe.parent_checkpoint))

    # -- data --------------------------------------------------------------------------------------------------
    def epoch_loader(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        """This rank's batches of ``epoch``, minus the first ``skip_batches`` (already consumed)."""
        sampler = DistributedSampler(
            self.dataset, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True,
            seed=self.cfg.seed, drop_last=True,
        )
        sampler.set_epoch(epoch)
        indices = list(sampler)
        if len(indices) < self.cfg.batch_size:
            raise ValueError(
                f"the dataset has {len(self.dataset)} clips: fewer than batch_size ({self.cfg.batch_size}) × "
                f"workers ({self.ctx.world_size}); add data or lower batch_size / scaling.num_workers"
            )
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        # Its own generator: creating a loader (as a resume does mid-epoch) must not advance the global RNG.
        return DataLoader(
            self.dataset, batch_size=self.cfg.batch_size, sampler=indices[skip_batches * self.cfg.batch_size:],
            drop_last=True, num_workers=self.loader_workers,
            generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch),
        )

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> Path | None:
        """Train to ``max_steps``, then export the final checkpoint (rank 0) when ``export_on_finish``.
        Returns the export folder (rank 0) or None. The MLflow run is closed FINISHED, FAILED, or KILLED when a
        stop request (SIGTERM, :mod:`vipo.train.preemption`) ended it at a checkpoint (no export then)."""
        try:
            self._train()
            finished = not self.stopped_early
            out = self._export() if finished and self.cfg.export_on_finish and self.ctx.is_main else None
        except SystemExit:
            # Ray Tune ends a local-mode trial it stops (a stopper, ASHA) with SystemExit inside its report call.
            self.logger.close("KILLED")
            raise
        except BaseException:
            self.logger.close("FAILED")
            raise
        self.logger.close("FINISHED" if finished else "KILLED")
        return out

    def _train(self) -> None:
        cfg, p = self.cfg, self.progress
        micro_losses: list[torch.Tensor] = []
        extras: dict[str, float] = {}
        step_start = time.perf_counter()
        bar = tqdm(total=cfg.optim.max_steps, initial=p.step, desc=f"train {cfg.run_name}",
                   disable=not self.ctx.is_main, dynamic_ncols=True)
        if self.gate is not None and p.step == 0:
            self.validate(reference=True)
        while p.step < cfg.optim.max_steps and not self.stopped_early:
            for batch in self.epoch_loader(p.epoch, p.batch_in_epoch):
                def loss_fn() -> torch.Tensor:
                    loss, metrics = self.recipe.compute_loss(batch)
                    extras.update(metrics)
                    micro_losses.append(loss.detach().float())
                    return loss

                def judge(grad_norm: float | None, record: bool = True) -> str | None:
                    # The step's loss over its micro-batches and ranks: every rank reaches the same verdict.
                    reason = self.guard.check(self._mean_over_ranks(torch.stack(micro_losses).mean()), grad_norm,
                                              record=record)
                    if record:
                        self._skip_reason = reason
                    return reason

                lr = self.engine.lr  # the rate this update uses: the schedule advances inside micro_step
                self._skip_reason = None
                _, grad_norm = self.engine.micro_step(loss_fn, judge)
                p.batch_in_epoch += 1
                p.samples_seen += cfg.batch_size * self.ctx.world_size
                if grad_norm is None:
                    continue
                if self._skip_reason is not None:
                    tqdm.write(f"warning: optimiser step {p.step + 1} skipped ({self._skip_reason}: loss "
                               f"{torch.stack(micro_losses).mean().item()}, grad norm {grad_norm}); "
                               f"{self.guard.consecutive} in a row", file=sys.stderr)
                    micro_losses.clear()
                    extras.clear()
                    continue
                p.step += 1
                elapsed = time.perf_counter() - step_start
                metrics = self._step_metrics(torch.stack(micro_losses).mean(), extras, grad_norm, lr, elapsed)
                micro_losses.clear()
                extras.clear()
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if self.ctx.is_main and p.step % cfg.log_every_n_steps == 0:
                    self.logger.log_metrics(metrics, step=p.step)
                last = p.step >= cfg.optim.max_steps
                saved = last or p.step % cfg.checkpointing.every_n_steps == 0
                every = cfg.validation.every_n_steps
                # Validated before the checkpoint, so its report (what Tune and ASHA judge) carries the scores.
                validated = self.validate() if every is not None and (saved or p.step % every == 0) else {}
                if saved:
                    self.save({**metrics, **validated})
                elif validated:
                    self._report({**metrics, **validated, "step": p.step}, None, None)
                self._maybe_inject_failure()
                step_start = time.perf_counter()
                if not last and self._stop_requested():
                    if not saved:
                        self.save(metrics)
                    self.stopped_early = True
                if last or self.stopped_early:
                    break
            else:
                p.epoch += 1
                p.batch_in_epoch = 0
        bar.close()

    def _stop_requested(self) -> bool:
        """Rank 0's view of the stop request, on every rank: all stop after the same step."""
        flag = torch.tensor([float(self.ctx.is_main and stop_requested(self.cfg.run_dir))], device=self.ctx.device)
        if self.ctx.world_size > 1:
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        if self.ctx.world_size == 1:
            return float(value)
        value = value.detach().to(self.ctx.device, torch.float64)
        dist.all_reduce(value)
        return value.item() / self.ctx.world_size

    def _step_metrics(self, loss: torch.Tensor, extras: Mapping[str, float], grad_norm: float, lr: float,
                      elapsed: float) -> dict[str, float]:
        """Loss and recipe scalars averaged over ranks (one all-reduce), plus the step's lr, the gradient norm
        before clipping, rank-0 timing and memory."""
        names = sorted(extras)
        values = torch.tensor([float(loss), *(float(extras[n]) for n in names)], dtype=torch.float64)
        if self.ctx.world_size > 1:
            values = values.to(self.ctx.device)
            dist.all_reduce(values)
            values = values.cpu() / self.ctx.world_size
        samples = self.cfg.batch_size * self.cfg.optim.grad_accum * self.ctx.world_size
        metrics = {"loss": values[0].item(), **{n: v.item() for n, v in zip(names, values[1:])}}
        metrics.update(lr=lr, grad_norm=grad_norm, step_time_s=elapsed,
                       samples_per_s=samples / elapsed if elapsed > 0 else math.nan, epoch=self.progress.epoch)
        metrics.update(self.guard.metrics())
        if self.ctx.device.type == "cuda":
            metrics["gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated(self.ctx.device) / 2**30
        return metrics

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save(self, metrics: Mapping[str, float]) -> None:
        """Write this rank's part of the checkpoint and report it (every rank, so Ray merges the folders).
        Weights holding a NaN or an infinity are never written: the run stops instead."""
        step = self.progress.step
        self.progress.guard = self.guard.state_dict()
        with tempfile.TemporaryDirectory(prefix="vipo-ckpt-") as tmp:
            directory = Path(tmp)
            with self.engine.full_weights():
                bad = nonfinite_parameters((n, p) for n, p in self.engine.model.named_parameters() if p.requires_grad)
                if bad:
                    raise RuntimeError(f"step {step}: non-finite weights ({', '.join(bad[:3])}, ...: {len(bad)} "
                                       "tensors); no checkpoint written. Relaunch resumes from the last good one")
                if self.ctx.is_main:
                    self.recipe.save_checkpoint(directory / WEIGHTS_DIR)
            self.engine.save_state(directory, self.ctx)
            atomic_save(capture_rng(self.noise), rng_file(directory, self.ctx.rank))
            if self.ctx.is_main:
                if self.gate is not None:
                    self.gate.save(directory)
                atomic_write_text(yaml.safe_dump(dump_config(self.cfg), sort_keys=False), directory / CONFIG_FILE)
                if self.logger.run_id is not None and self.logger.tracking_uri is not None:
                    write_run_id(directory, self.logger.run_id, self.logger.tracking_uri)
            self._report(dict(metrics, step=step), directory, checkpoint_dir_name(step))

    def _report(self, metrics: dict, directory: Path | None, name: str | None) -> None:
        """Report ``metrics`` with the checkpoint in ``directory`` (None: metrics only): to Ray Train from a
        worker group, else (local mode) into the run folder and to ``recipe.on_report``."""
        if not self.ctx.in_ray:
            if directory is not None:
                target = self.cfg.run_dir / name
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(directory, target)
                mark_complete(target, self.progress)
                prune_checkpoints(self.cfg.run_dir, self.cfg.checkpointing.keep_last_k)
                metrics = {**metrics, "checkpoint_path": str(target)}
            on_report = getattr(self.recipe, "on_report", None)
            if on_report is not None:
                on_report(metrics)
            return
        import ray.train

        if directory is None:
            ray.train.report(metrics)
            return
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                         checkpoint_dir_name=name)
        # Every rank's part is in the run folder once every rank is back from report(): only then is it complete.
        if self.ctx.world_size > 1:
            dist.barrier()
        if self.ctx.is_main:
            mark_complete(self.cfg.run_dir / name, self.progress)

    def _restore(self, checkpoint: Path) -> None:
        self.engine.load_state(checkpoint)
        if self.gate is not None and not self.gate.load(checkpoint):
            tqdm.write("warning: the checkpoint holds no validation reference; validation reports no deltas")
        self.progress = TrainingProgress.from_file(checkpoint / PROGRESS_FILE)
        self.guard.load_state_dict(self.progress.guard)
        rng = rng_file(checkpoint, self.ctx.rank)
        if rng.is_file():
            restore_rng(torch.load(rng, map_location="cpu", weights_only=False), self.noise)
        else:
            # A relaunch with more workers than before: the new ranks start fresh streams (not bit-reproducible).
            self.noise.manual_seed(self.cfg.seed * 100_003 + self.ctx.rank + 7919 * self.progress.step)
        if self.progress.seed != self.cfg.seed:
            tqdm.write(f"warning: checkpoint seed {self.progress.seed} != config seed {self.cfg.seed}; "
                       "resuming with the checkpoint's data order")
            self.cfg.seed = self.progress.seed

    def _maybe_inject_failure(self) -> None:
        if not self._drill_pending or self.progress.step != self.cfg.failure.inject_at_step:
            return
        if self.ctx.is_main:
            self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
            (self.cfg.run_dir / DRILL_MARKER).write_text(f"{self.progress.step}\n")
        raise InjectedFailure(f"failure.inject_at_step={self.progress.step}: simulated worker crash (drill)")

    # -- validation and the end --------------------------------------------------------------------------------
    def validate(self, reference: bool = False) -> dict[str, float]:
        """Rank 0 inpaints the validation clips and judges them (:class:`ValidationGate`); under ZeRO-3 every rank
        runs the pipeline (its forward hooks are collectives), inside one gather of the full weights.

        ``reference``: the weights are the start weights (step 0): keep their outputs as the reference. Returns the
        scores to report (rank 0; empty elsewhere), after logging them, the strips and GIFs to MLflow.
        """
        step = self.progress.step
        self.engine.model.eval()
        try:
            with self.engine.full_weights(), torch.no_grad():
                run_here = self.ctx.is_main or self.engine.shards_parameters
                outputs = self.recipe.validate(step) if run_here else {}
        finally:
            self.engine.model.train()
        if not self.ctx.is_main or not outputs:
            return {}
        if reference:
            scores = self.gate.set_reference(outputs)
            self.logger.log_metrics(scores, step=step)
            return scores
        scores, videos = self.gate.judge(outputs) if self.gate is not None else ({}, outputs)
        if scores:
            self.logger.log_metrics(scores, step=step)
        self.logger.log_images({name: video_grid(frames) for name, frames in videos.items()}, step=step)
        with tempfile.TemporaryDirectory(prefix="vipo-val-") as tmp:
            for name, frames in videos.items():
                _write_gif(frames, Path(tmp) / f"{name}_step{step:07d}.gif")
            self.logger.log_artifact(tmp, "validation")
        return scores

    def _export(self) -> Path:
        """Export the final checkpoint (as ``vipo export`` would) and log it as the MLflow artifact ``model``."""
        from vipo.train.export import export

        out = export(self.cfg.run_dir, self.progress.step)
        self.logger.log_artifact(out, "model")
        self.logger.set_tags({"vipo.export_dir": str(out)})
        return out


def run_recipe(recipe_cls: type[Recipe], config: dict, scorer: ClipScorer | None = None,
               on_report: Callable[[dict], None] | None = None) -> None:
    """The Ray Train function of every recipe (``partial(run_recipe, recipe_cls, ...)``): validate, restore,
    setup → train → cleanup. It resumes from the newest complete checkpoint of Ray's record and the run folder's
    (:func:`resume_checkpoint`). ``scorer`` judges the validation clips (see :mod:`vipo.train.validation`).

    In local mode (``scaling.num_workers: 0``) Ray Train keeps neither checkpoints nor reports, so the loop writes
    checkpoints into the run folder itself and hands every report (with ``checkpoint_path``, as Ray Tune's
    ``TuneReportCallback`` does) to ``on_report``."""
    import ray.train

    cfg = validate_config(recipe_cls.config_class, config, "<train config>")
    if cfg.scaling.num_workers:
        ctx = WorkerContext.from_ray()
        ray_checkpoint = ray.train.get_checkpoint()
    else:
        ctx, ray_checkpoint = WorkerContext.local(cfg.scaling.use_gpu), None
    seed_global_rngs(cfg.seed, ctx.rank)  # setup's draws (model init) repeat too
    recipe = recipe_cls(cfg, ctx)
    recipe.scorer = scorer
    recipe.on_report = on_report
    try:
        with ray_checkpoint.as_directory() if ray_checkpoint else contextlib.nullcontext() as directory:
            recipe.setup(resume_checkpoint(cfg.run_dir, directory))
        recipe.train()
    finally:
        recipe.cleanup()
