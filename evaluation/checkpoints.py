"""Checkpoints scored on a benchmark while the training runs (``evaluation:`` in a train config).

Early checkpoints can score best, so a training run may name a benchmark: every ``every_n_checkpoints``-th
checkpoint and the last one are exported (:func:`vipo.train.export.export`) and scored with evaluation's own
pipeline (:func:`evaluation.job.score_methods`: the benchmark materialised once, the method on a Ray Data actor
pool, results cached), and the training's MLflow run gets each metric's mean over the clips as ``eval/<metric>``
at the checkpoint's step.

``vipo`` sits below ``evaluation``, so the jobs layer injects this, as it injects the validation scorer:
:func:`plan_checkpoint_evaluation` validates the settings before Ray starts, and :func:`evaluating_checkpoints`
starts a :class:`CheckpointEvaluator` actor and yields the Ray Train callback that hands it each reported
checkpoint. The actor is the driver's (Ray Train's controller, where callbacks run, ends with the run) and sits on
the driver's node, which sees the run folder. It exports a checkpoint as soon as it is complete, before
``checkpointing.keep_last_k`` can delete it, and scores exports one after another in a thread of its own, so the
training never waits. When the training ends the driver waits at most ``wait_timeout_s`` for what is outstanding.

``<run dir>/checkpoint_eval/`` holds the exports (``exports/step_N``), the materialised benchmark, the result cache
and ``evaluated.json``, the steps evaluated with their means: a relaunch evaluates only the complete checkpoints
it does not list (those of a killed launch included). A failed evaluation is a warning and an MLflow tag
(``vipo.eval.failed.step_N``), never a training failure; the next launch tries it again if its checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ray.train import UserCallback

from evaluation.benchmark import BenchmarkConfig
from evaluation.config import EvaluateConfig
from evaluation.job import score_methods, scoring_hash
from evaluation.methods import METHOD_REGISTRY
from evaluation.scoring import ScoringConfig
from vipo.config import ConfigError, RayConfig, dump_config, validate_config
from vipo.tracking import init_ray, launch_tracking_uri, read_run_id
from vipo.train.checkpointing import PROGRESS_FILE, atomic_write_text, list_checkpoints
from vipo.train.config import TrainConfig

__all__ = ["EVAL_DIR", "RECORD_FILE", "CheckpointEvaluationPlan", "CheckpointEvaluator", "SubmitCheckpoints",
           "evaluating_checkpoints", "plan_checkpoint_evaluation"]

EVAL_DIR = "checkpoint_eval"
RECORD_FILE = "evaluated.json"
EXPORT_KINDS = ("diffueraser+lora", "checkpoint")  # method kinds that load an export folder
COMPLETE_TIMEOUT_S = 600.0  # how long a reported checkpoint may take to get its progress.json (every rank's part)


@dataclass(frozen=True)
class CheckpointEvaluationPlan:
    """The validated settings (paths absolute: the actor may run elsewhere), shipped to the evaluator actor."""

    run_dir: Path
    benchmark: dict
    method: dict
    """The method config without its export path; ``export_field`` gets each export folder."""
    export_field: str
    scoring: dict
    period: int
    """A checkpoint is evaluated when its step is a multiple of this, or the last step."""
    last_step: int
    keep_exports: bool
    wait_timeout_s: float
    ray: RayConfig
    tracking_uri: str | None

    @property
    def folder(self) -> Path:
        return self.run_dir / EVAL_DIR

    def due(self, step: int) -> bool:
        """Whether the checkpoint at ``step`` is evaluated (a preemption checkpoint off the period is not)."""
        return step % self.period == 0 or step == self.last_step

    def evaluate_config(self, step: int, export: Path) -> EvaluateConfig:
        """evaluation's config scoring the export of ``step`` (no MLflow runs of its own: the training's gets the
        means)."""
        return validate_config(EvaluateConfig, {
            "output_dir": str(self.folder), "benchmark": self.benchmark, "scoring": self.scoring,
            "methods": {f"step_{step}": {**self.method, self.export_field: str(export)}},
            "tracking": {"enabled": False},
        }, "<checkpoint evaluation>")


def plan_checkpoint_evaluation(cfg: TrainConfig, source: str = "<train config>") -> CheckpointEvaluationPlan | None:
    """The checkpoint evaluation ``cfg.evaluation`` asks for (None when ``benchmark`` is null); a bad key or value
    is a one-line ``ConfigError`` here, before Ray or a model starts.

    The method's ``weights`` default to the run's ``model.weights_root``, the layout its exports complete. The
    recipe's ``prepare`` runs first, since the demo's tiny weights it writes are those weights.
    """
    from vipo.train.recipes import get_recipe

    settings = cfg.evaluation
    if settings.benchmark is None:
        return None
    where = f"{source} evaluation"
    benchmark = validate_config(BenchmarkConfig, settings.benchmark, f"{where}.benchmark")
    scoring = validate_config(ScoringConfig, settings.scoring, f"{where}.scoring")
    scoring.identity()  # missing LPIPS/RAFT/I3D/CLIP weights fail here
    kind = settings.method.get("kind")
    if kind not in EXPORT_KINDS:
        raise ConfigError(f"{source}: evaluation.method.kind: {kind!r} does not load an export; use one of "
                          f"{', '.join(EXPORT_KINDS)}")
    method_class = METHOD_REGISTRY[kind]
    export_field = method_class.checkpoint_field
    if export_field in settings.method:
        raise ConfigError(f"{source}: evaluation.method.{export_field}: leave it out; each checkpoint's export goes "
                          "there")
    method = dict(settings.method)
    weights_root = getattr(getattr(cfg, "model", None), "weights_root", None)
    if "weights" not in method and weights_root is not None:
        method["weights"] = str(weights_root)
    get_recipe(cfg.recipe).prepare(cfg)
    # Any existing folder stands in for the export, which does not exist yet.
    checked = validate_config(method_class, {**method, export_field: tempfile.gettempdir()}, f"{where}.method")
    return CheckpointEvaluationPlan(
        run_dir=cfg.run_dir, benchmark=dump_config(benchmark),
        method={k: v for k, v in dump_config(checked).items() if k != export_field}, export_field=export_field,
        scoring=dump_config(scoring), period=cfg.checkpointing.every_n_steps * settings.every_n_checkpoints,
        last_step=cfg.optim.max_steps, keep_exports=settings.keep_exports, wait_timeout_s=settings.wait_timeout_s,
        ray=cfg.ray, tracking_uri=launch_tracking_uri(cfg.tracking, cfg.output_dir),
    )


def _load_record(path: Path) -> dict[int, dict]:
    if not path.is_file():
        return {}
    try:
        return {int(step): entry for step, entry in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError) as err:
        raise RuntimeError(f"{path}: unreadable record of evaluated checkpoints ({err}); delete it to evaluate "
                           "every kept checkpoint again") from None


def _wait_complete(checkpoint: Path) -> None:
    # Ray Train reports a checkpoint before rank 0 marks it complete (every rank's part is in by then).
    deadline = time.monotonic() + COMPLETE_TIMEOUT_S
    while not (checkpoint / PROGRESS_FILE).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{checkpoint}: still no {PROGRESS_FILE} after {COMPLETE_TIMEOUT_S:.0f} s (incomplete)")
        time.sleep(0.5)


class CheckpointEvaluator:
    """The Ray actor that exports and scores checkpoints (see the module doc). ``submit`` is idempotent: a step
    evaluated, failed in this launch or under way is not taken again."""

    def __init__(self, plan: CheckpointEvaluationPlan):
        self.plan = plan
        self.evaluated = _load_record(plan.folder / RECORD_FILE)
        self.failed: dict[int, str] = {}
        self.outstanding: set[int] = set()
        self._changed = threading.Condition()
        # diffusers builds models under accelerate's process-wide meta-device patch: one export at a time.
        self._exporting = threading.Lock()
        self._exports: queue.Queue = queue.Queue()
        threading.Thread(target=self._score_exports, name="checkpoint-evaluation", daemon=True).start()
        self.sweep()

    def sweep(self) -> None:
        """Submit every complete checkpoint in the run folder (those a previous launch left unevaluated, and a
        last report that may reach this actor after the driver's :meth:`wait`)."""
        for step, checkpoint in list_checkpoints(self.plan.run_dir).items():
            self.submit(step, str(checkpoint))

    def submit(self, step: int, checkpoint: str) -> None:
        """Export the checkpoint of ``step`` now and queue its scoring (when due and not taken yet)."""
        with self._changed:
            if not self.plan.due(step) or step in self.evaluated or step in self.failed or step in self.outstanding:
                return
            self.outstanding.add(step)
        from vipo.train.export import export

        run_id = read_run_id(checkpoint) or read_run_id(self.plan.run_dir)  # the run that wrote the checkpoint
        try:
            _wait_complete(Path(checkpoint))
            with self._exporting:
                folder = export(self.plan.run_dir, step, out_dir=self.plan.folder / "exports" / f"step_{step:08d}")
        except Exception as err:  # a failed evaluation never stops the training
            self._fail(step, run_id, f"export failed: {type(err).__name__}: {err}")
            return
        self._exports.put((step, folder, run_id))

    def _score_exports(self) -> None:
        while True:
            step, folder, run_id = self._exports.get()
            try:
                config = self.plan.evaluate_config(step, folder)
                benchmark, (result,) = score_methods(config, scoring_hash(config.scoring))
                means = result.means(list(config.scoring.metrics))
                self._log(run_id, step, means, f"{benchmark.name} {benchmark.hash}")
            except Exception as err:  # a failed evaluation never stops the training
                self._fail(step, run_id, f"{type(err).__name__}: {err}")
                continue
            with self._changed:
                self.evaluated[step] = {"metrics": means, "benchmark": benchmark.name,
                                        "benchmark_hash": benchmark.hash, "export": str(folder)}
                atomic_write_text(json.dumps({str(s): e for s, e in sorted(self.evaluated.items())}, indent=1),
                                  self.plan.folder / RECORD_FILE)
                self.outstanding.discard(step)
                self._changed.notify_all()
            if not self.plan.keep_exports:
                shutil.rmtree(folder, ignore_errors=True)

    def _client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.plan.tracking_uri)

    def _log(self, run_id: str | None, step: int, means: dict[str, float], benchmark: str) -> None:
        if self.plan.tracking_uri is None or run_id is None:
            return
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self._client().log_batch(run_id, metrics=[Metric(f"eval/{name}", value, now, step)
                                                  for name, value in means.items()],
                                 tags=[RunTag("vipo.eval.benchmark", benchmark)])

    def _fail(self, step: int, run_id: str | None, message: str) -> None:
        print(f"warning: checkpoint evaluation of step {step} failed: {message}", file=sys.stderr, flush=True)
        if self.plan.tracking_uri is not None and run_id is not None:
            try:
                self._client().set_tag(run_id, f"vipo.eval.failed.step_{step:08d}", message[:5000])
            except Exception as err:  # the warning above stands without the tag
                print(f"warning: could not tag the failure in MLflow: {err}", file=sys.stderr, flush=True)
        with self._changed:
            self.failed[step] = message
            self.outstanding.discard(step)
            self._changed.notify_all()

    def wait(self, timeout_s: float) -> dict:
        """Sweep the run folder, then wait until nothing is outstanding or ``timeout_s`` passed → ``evaluated``
        (step → means and export, earlier launches' included), ``failed`` (step → message), ``outstanding``."""
        self.sweep()
        with self._changed:
            self._changed.wait_for(lambda: not self.outstanding, timeout=timeout_s)
            return {"evaluated": dict(self.evaluated), "failed": dict(self.failed),
                    "outstanding": sorted(self.outstanding)}


class SubmitCheckpoints(UserCallback):
    """Ray Train callback (it runs in the controller): hands every reported checkpoint to the evaluator actor."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None and metrics and "step" in metrics[0]:
            self.evaluator.submit.remote(int(metrics[0]["step"]), checkpoint.path)


def _print_summary(plan: CheckpointEvaluationPlan, summary: dict) -> None:
    for step, entry in sorted(summary["evaluated"].items()):
        means = ", ".join(f"{name} {value:.4g}" for name, value in entry["metrics"].items())
        print(f"checkpoint evaluation, step {step} on {entry['benchmark']}: {means} (eval/<metric> in MLflow; "
              f"export {entry['export']})")
    for step, message in sorted(summary["failed"].items()):
        print(f"warning: checkpoint evaluation of step {step} failed: {message}", file=sys.stderr)
    if summary["outstanding"]:
        print(f"warning: checkpoint evaluation of steps {summary['outstanding']} still running after "
              f"{plan.wait_timeout_s:.0f} s (evaluation.wait_timeout_s); relaunch the same command to evaluate them",
              file=sys.stderr)


@contextlib.contextmanager
def evaluating_checkpoints(plan: CheckpointEvaluationPlan | None) -> Iterator[list[UserCallback]]:
    """Yield the Ray Train callbacks for ``fit`` ([] without a plan). On a clean exit wait for the outstanding
    evaluations (bounded) and print their results; when the training raises, stop them (a relaunch resumes them)."""
    if plan is None:
        yield []
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    init_ray(plan.ray, plan.tracking_uri)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    evaluator = ray.remote(CheckpointEvaluator).options(num_cpus=0, max_concurrency=2,
                                                        scheduling_strategy=here).remote(plan)
    try:
        yield [SubmitCheckpoints(evaluator)]
    except BaseException:
        ray.kill(evaluator)
        print("checkpoint evaluation stopped with the training; a relaunch evaluates the checkpoints left",
              file=sys.stderr)
        raise
    try:
        summary = ray.get(evaluator.wait.remote(plan.wait_timeout_s), timeout=plan.wait_timeout_s + COMPLETE_TIMEOUT_S)
    except ray.exceptions.RayError as err:
        print(f"warning: checkpoint evaluation stopped: {err}", file=sys.stderr)
    else:
        _print_summary(plan, summary)
    finally:
        ray.kill(evaluator)
