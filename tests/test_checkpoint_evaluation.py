"""Checkpoint evaluation beside a stage-3 training (``evaluation:`` in the train config): the training's MLflow run
gets ``eval/<metric>`` at exactly the evaluated checkpoint steps, equal to an independent ``vipo evaluate`` of the
same exports, and a resumed run does not evaluate a checkpoint twice; bad settings are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_stage3_recipe import shards, weights_root  # noqa: F401 (the tiny shards and weights fixtures)

from evaluation.checkpoints import EVAL_DIR, RECORD_FILE, CheckpointEvaluator, plan_checkpoint_evaluation
from evaluation.config import EvaluateConfig
from evaluation.job import evaluate
from vipo.config import ConfigError, validate_config
from vipo.data import SAMPLE_DATA_ROOT
from vipo.train.config import load_train_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "stage3_dpo_demo.yaml"
METRICS = ["psnr", "ssim", "psnr_hole", "ssim_hole"]
BENCHMARK = {"name": "tiny", "source": {"kind": "davis", "root": str(SAMPLE_DATA_ROOT), "split": "train"},
             "masks": {"kind": "random", "seed": 0}, "max_videos": 1, "num_frames": 4, "height": 32, "width": 32}
METHOD = {"kind": "diffueraser+lora", "num_inference_steps": 1, "actors": {"num_gpus": 0}}


def demo_config(weights_root: Path, shards: Path, output_dir: Path, *overrides: str):
    return load_train_config(DEMO_CONFIG, [f"model.weights_root={weights_root}", f"data.shards={shards}",
                                           f"output_dir={output_dir}",
                                           f"evaluation.benchmark.source.root={SAMPLE_DATA_ROOT}", *overrides])


def test_the_stage3_demo_evaluates_every_checkpoint_on_the_sample_benchmark(tmp_path, weights_root, shards):
    plan = plan_checkpoint_evaluation(demo_config(weights_root, shards, tmp_path), str(DEMO_CONFIG))
    assert plan is not None and plan.method["kind"] == "diffueraser+lora"
    assert plan.method["weights"] == str(weights_root)  # the run's base layout, completed by each export
    assert "adapter" not in plan.method and plan.export_field == "adapter"
    # Demo: checkpoints every 3 of 6 steps, all evaluated.
    assert [step for step in range(1, 7) if plan.due(step)] == [3, 6]


def test_every_nth_checkpoint_and_the_last_are_due(tmp_path, weights_root, shards):
    cfg = demo_config(weights_root, shards, tmp_path, "checkpointing.every_n_steps=2",
                      "evaluation.every_n_checkpoints=2", "optim.max_steps=9")
    plan = plan_checkpoint_evaluation(cfg)
    assert [step for step in range(1, 10) if plan.due(step)] == [4, 8, 9]
    off = demo_config(weights_root, shards, tmp_path, "evaluation.benchmark=null")
    assert plan_checkpoint_evaluation(off) is None


@pytest.mark.parametrize(("override", "message"), [
    ("evaluation.every_n_checkpoint=2", "evaluation.every_n_checkpoint: unknown key; did you mean "
                                        "evaluation.every_n_checkpoints?"),
    ("evaluation.every_n_checkpoints=0", "evaluation.every_n_checkpoints: Input should be greater than or equal to 1"),
    ("evaluation.benchmark.num_frame=4", "evaluation.benchmark: num_frame: unknown key; did you mean num_frames?"),
    ("evaluation.scoring.metrics=[psnr,nope]", "evaluation.scoring: metrics.1:"),
    ("evaluation.method.kind=propainter", "evaluation.method.kind: 'propainter' does not load an export"),
    ("evaluation.method.adapter=/tmp", "evaluation.method.adapter: leave it out"),
    ("evaluation.method.num_inference_step=2", "evaluation.method: num_inference_step: unknown key"),
    ("evaluation.method={}", "evaluation: benchmark is set but method is empty"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(tmp_path, weights_root, shards, override, message):
    with pytest.raises(ConfigError) as err:
        plan_checkpoint_evaluation(demo_config(weights_root, shards, tmp_path, override), str(DEMO_CONFIG))
    text = str(err.value)
    assert "\n" not in text and message in text and text.startswith(str(DEMO_CONFIG))


def test_a_failed_evaluation_is_a_warning_and_a_tag_not_an_error(tmp_path, weights_root, shards, capsys):
    from mlflow.tracking import MlflowClient

    from vipo.tracking import write_run_id
    from vipo.train.checkpointing import TrainingProgress, mark_complete

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = demo_config(weights_root, shards, tmp_path, f"tracking.tracking_uri={tracking_uri}")
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("failing")).info.run_id
    checkpoint = cfg.run_dir / "checkpoint-00000003"  # complete, but without config.yaml: the export fails
    checkpoint.mkdir(parents=True)
    write_run_id(checkpoint, run_id, tracking_uri)
    mark_complete(checkpoint, TrainingProgress(step=3))

    summary = CheckpointEvaluator(plan_checkpoint_evaluation(cfg)).wait(timeout_s=60)
    assert summary["outstanding"] == [] and summary["evaluated"] == {}
    assert "export failed" in summary["failed"][3] and "config.yaml" in summary["failed"][3]
    assert "warning: checkpoint evaluation of step 3 failed" in capsys.readouterr().err
    assert "config.yaml" in client.get_run(run_id).data.tags["vipo.eval.failed.step_00000003"]
    assert not (cfg.run_dir / EVAL_DIR / RECORD_FILE).exists()  # nothing recorded: a relaunch tries again


@pytest.mark.slow
@pytest.mark.timeout(1800)  # local Ray, two short trainings and four evaluations on a shared machine
def test_checkpoints_are_evaluated_beside_training_logged_at_their_steps_and_not_again_on_resume(
        ray_local, tmp_path, weights_root, shards):
    from mlflow.tracking import MlflowClient

    from jobs import train

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {
        "recipe": "stage3", "name": "auto-eval", "output_dir": str(tmp_path / "train"), "seed": 0,
        "scaling": {"num_workers": 1}, "optim": {"lr": 1e-3, "max_steps": 2},
        "checkpointing": {"every_n_steps": 1, "keep_last_k": 5}, "export_on_finish": False,
        "model": {"weights_root": str(weights_root)}, "data": {"shards": str(shards)},
        "tuning": {"lora": {"rank": 4, "alpha": 8}},
        "tracking": {"tracking_uri": tracking_uri, "experiment": "auto-eval", "system_metrics": False},
        "evaluation": {"benchmark": BENCHMARK, "method": METHOD, "scoring": {"metrics": METRICS}},
    }
    config_file = tmp_path / "stage3.yaml"
    config_file.write_text(yaml.safe_dump(config))
    train.run(config_file, [])
    train.run(config_file, ["optim.max_steps=3"])  # resumes at step 2: only step 3 is new

    run_dir = tmp_path / "train" / "auto-eval"
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("auto-eval").experiment_id])
    assert not [tag for tag in run.data.tags if tag.startswith("vipo.eval.failed")]
    logged = {metric: {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"eval/{metric}")}
              for metric in METRICS}
    for metric in METRICS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, f"eval/{metric}")]
        assert sorted(steps) == [1, 2, 3], f"eval/{metric} logged at {steps}"  # once each, the resume added 3 only
    record = json.loads((run_dir / EVAL_DIR / RECORD_FILE).read_text())
    assert sorted(map(int, record)) == [1, 2, 3]

    # An independent evaluation of the same exports (its own output folder: nothing shared but the files).
    exports = {step: Path(record[str(step)]["export"]) for step in (1, 2, 3)}
    assert all(folder.parent == run_dir / EVAL_DIR / "exports" for folder in exports.values())
    independent = evaluate(validate_config(EvaluateConfig, {
        "output_dir": str(tmp_path / "independent"), "benchmark": BENCHMARK, "scoring": {"metrics": METRICS},
        "methods": {f"step{step}": {**METHOD, "weights": str(weights_root), "adapter": str(folder)}
                    for step, folder in exports.items()},
        "tracking": {"enabled": False}, "report": {"bootstrap_samples": 100},
    }))
    for result in independent.results:
        step = int(result.label.removeprefix("step"))
        for metric, value in result.means(METRICS).items():
            assert logged[metric][step] == pytest.approx(value, rel=1e-9, abs=1e-12), (step, metric)
    # Different checkpoints, different scores: the numbers are not the base model's three times.
    assert len({logged["psnr_hole"][step] for step in (1, 2, 3)}) == 3
