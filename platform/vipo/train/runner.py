"""Build the Ray Train ``TorchTrainer`` for a training config and run it.

The run lives in ``output_dir/<run name>`` (Ray Train V2's ``RunConfig(storage_path, name)``). Launching the same
config again resumes from the latest checkpoint there: the controller finds it and ``ray.train.get_checkpoint()``
hands it to every worker (local mode, ``scaling.num_workers: 0``: this process trains and the loop keeps the run
folder itself, see :func:`vipo.train.loop.run_recipe`). ``scaling.use_gpu: false`` trains with DDP over gloo on
CPUs; with GPUs Ray sets up NCCL and the recipe runs under DeepSpeed when ``deepspeed.enabled``. SIGTERM during
``fit`` checkpoints at the next step boundary and raises :class:`vipo.train.preemption.Preempted`
(:mod:`vipo.train.preemption`).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, Sequence

from vipo.config import dump_config
from vipo.tracking import init_ray, launch_tracking_uri
from vipo.train.checkpointing import PROGRESS_FILE, TrainingProgress, resume_checkpoint
from vipo.train.config import TrainConfig
from vipo.train.preemption import Preempted, stop_on_sigterm
from vipo.train.recipes import get_recipe
from vipo.train.validation import ClipScorer

if TYPE_CHECKING:
    from ray.train import Result, UserCallback
    from ray.train.torch import TorchTrainer

__all__ = ["build_trainer", "fit"]


def build_trainer(cfg: TrainConfig, callbacks: Sequence["UserCallback"] = (), scorer: ClipScorer | None = None,
                  on_report: Callable[[dict], None] | None = None) -> "TorchTrainer":
    """``TorchTrainer(run_recipe for the config's recipe, ScalingConfig, RunConfig(storage_path=output_dir,
    name=run name, CheckpointConfig(num_to_keep=K), FailureConfig(max_failures)))`` for ``cfg``; ``callbacks``
    go to the ``RunConfig`` (a Tune trial passes ``TuneReportCallback`` so each training report reaches Tune);
    ``scorer`` (not set up yet) travels to the workers with the training function and judges validation clips;
    ``on_report`` receives the reports in local mode, where Ray Train runs no callbacks: there the callbacks'
    ``after_report`` is called from the training loop instead, with each report and its checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vipo.train.loop import run_recipe

    if callbacks and not cfg.scaling.num_workers:
        on_report, callbacks = _calling_callbacks(callbacks, on_report), ()
    return TorchTrainer(
        partial(run_recipe, get_recipe(cfg.recipe), scorer=scorer, on_report=on_report),
        train_loop_config=dump_config(cfg),
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=cfg.scaling.resources_per_worker,
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=str(cfg.output_dir),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpointing.keep_last_k),
            failure_config=FailureConfig(max_failures=cfg.failure.max_failures),
            callbacks=list(callbacks),
        ),
    )


def _calling_callbacks(callbacks: Sequence["UserCallback"],
                       on_report: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """A local-mode report handler that does what Ray Train's controller does with a worker group's reports: call
    every callback's ``after_report`` (one rank's metrics, the checkpoint in the run folder), then ``on_report``."""
    from ray.train import Checkpoint

    def report(metrics: dict) -> None:
        checkpoint = Checkpoint(metrics["checkpoint_path"]) if "checkpoint_path" in metrics else None
        for callback in callbacks:
            callback.after_report(run_context=None, metrics=[metrics], checkpoint=checkpoint)
        if on_report is not None:
            on_report(metrics)

    return report


def fit(cfg: TrainConfig, callbacks: Sequence["UserCallback"] = (), scorer: ClipScorer | None = None,
        on_report: Callable[[dict], None] | None = None) -> "Result":
    """Start or join Ray (``cfg.ray``), then train (``callbacks``, ``scorer``, ``on_report``: see
    :func:`build_trainer`); raises ``ray.train.TrainingFailedError`` when the workers fail more than
    ``failure.max_failures`` times, :class:`Preempted` when SIGTERM stopped the run at a checkpoint (relaunch to
    resume either way)."""
    init_ray(cfg.ray, launch_tracking_uri(cfg.tracking, cfg.output_dir))
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    get_recipe(cfg.recipe).prepare(cfg)
    with stop_on_sigterm(cfg.run_dir, cfg.failure.preemption_grace_s) as signalled:
        result = build_trainer(cfg, callbacks, scorer, on_report).fit()
    if signalled.is_set():
        latest = resume_checkpoint(cfg.run_dir, None)
        step = TrainingProgress.from_file(latest / PROGRESS_FILE).step if latest else 0
        if step < cfg.optim.max_steps:
            raise Preempted(f"stopped on SIGTERM at step {step} (checkpoint {latest}); relaunch the same command to "
                            "resume there")
    return result
