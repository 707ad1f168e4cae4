"""The runner through the real Ray Train ``TorchTrainer`` (2 CPU workers, DDP over gloo): kill and relaunch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vipo.models.tiny import write_tiny_weights
from vipo.train.checkpointing import TrainingProgress, list_checkpoints
from vipo.train.config import load_train_config
from vipo.train.loop import DRILL_MARKER, InjectedFailure
from vipo.train.runner import fit

pytestmark = pytest.mark.ray

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "stage1_demo.yaml"


def _config(tmp_path: Path, weights: Path, name: str, *overrides: str):
    return load_train_config(DEMO, [
        f"output_dir={tmp_path}", f"name={name}", f"model.weights_root={weights}", "model.tiny_weights_seed=null",
        "optim.max_steps=4", "checkpointing.every_n_steps=2", "checkpointing.keep_last_k=2",
        "validation.every_n_steps=null", "data.clip.nframes=2", "tracking.enabled=false", "export_on_finish=false",
        *overrides,
    ])


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for module in ("unet_main", "brushnet"):
        state = load_file(checkpoint / "weights" / module / "diffusion_pytorch_model.safetensors")
        tensors.update({f"{module}.{key}": value for key, value in state.items()})
    return tensors


@pytest.mark.timeout(1500)  # three trainings with 2 Ray Train workers each: ~10 min on a busy 2-core machine
def test_killed_run_relaunched_ends_bitwise_equal_to_an_uninterrupted_run(ray_local, tmp_path):
    from ray.train import TrainingFailedError

    weights = tmp_path / "weights"
    write_tiny_weights(weights, seed=0)

    reference = fit(_config(tmp_path, weights, "uninterrupted"))
    assert reference.error is None

    tracked = ("tracking.enabled=true", "export_on_finish=true", "failure.inject_at_step=3",
               "validation.every_n_steps=4", "validation.num_inference_steps=1")
    with pytest.raises(TrainingFailedError, match="inject_at_step=3"):
        fit(_config(tmp_path, weights, "killed", *tracked))
    run_dir = tmp_path / "killed"
    assert (run_dir / DRILL_MARKER).is_file()
    assert list(list_checkpoints(run_dir)) == [2]

    resumed = fit(_config(tmp_path, weights, "killed", *tracked))  # the same command again
    assert resumed.error is None
    checkpoints = list_checkpoints(run_dir)
    assert list(checkpoints) == [2, 4]  # keep_last_k=2
    progress = TrainingProgress.from_file(checkpoints[4] / "progress.json")
    assert progress.step == 4 and progress.samples_seen == 4 * 2  # batch 1 × 2 workers per step, none repeated

    expected = _weights(list_checkpoints(tmp_path / "uninterrupted")[4])
    got = _weights(checkpoints[4])
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed weights differ from uninterrupted"
    assert not all(torch.equal(expected[k], _weights(checkpoints[2])[k]) for k in expected)  # training moved them

    # One MLflow run across the kill and the relaunch, named after the Ray Train run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("vipo").experiment_id])
    assert run.info.run_name == "killed" and run.info.status == "FINISHED"
    assert run.data.params["recipe"] == "stage1" and run.data.params["optim.max_steps"] == "4"
    assert run.data.tags["vipo.config_hash"] and run.data.tags["vipo.git_commit"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4]  # step 3, redone after the relaunch, is not logged twice
    for metric in ("lr", "grad_norm", "step_time_s", "samples_per_s"):
        assert client.get_metric_history(run.info.run_id, metric)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/brushnet", "model/unet_main"]
    # Validation runs at every checkpoint too: step 2 before the kill, step 4 after the relaunch, once each.
    assert [a.path for a in client.list_artifacts(run.info.run_id, "validation")] == [
        "validation/davis_bunny_step0000002.gif", "validation/davis_bunny_step0000004.gif"]
    assert client.list_artifacts(run.info.run_id, "images/davis_bunny")


def test_local_mode_keeps_the_run_folder_itself_and_hands_every_report_to_on_report(ray_local, tmp_path):
    """``scaling.num_workers: 0`` (Ray Train's local mode keeps neither checkpoints nor reports, nor calls
    callbacks): the loop writes complete checkpoints into the run folder, prunes them to ``keep_last_k``, passes
    each report with its ``checkpoint_path`` to ``on_report`` and the callbacks, and a relaunch resumes there,
    ending where an uninterrupted run ends."""
    from ray.train import UserCallback

    class Recorder(UserCallback):  # what Ray Train's controller would call with a worker group's reports
        def __init__(self):
            self.calls = []

        def after_report(self, run_context, metrics, checkpoint):
            self.calls.append((metrics[0]["step"], checkpoint.path if checkpoint else None))

    weights = tmp_path / "weights"
    write_tiny_weights(weights, seed=0)
    local = ("scaling.num_workers=0", "checkpointing.every_n_steps=1")
    straight: list[dict] = []
    recorder = Recorder()
    fit(_config(tmp_path, weights, "straight", *local), callbacks=[recorder], on_report=straight.append)
    run_dir = tmp_path / "straight"
    assert recorder.calls == [(r["step"], r["checkpoint_path"]) for r in straight]
    assert [r["step"] for r in straight] == [1, 2, 3, 4]
    assert [Path(r["checkpoint_path"]).name for r in straight] == [f"checkpoint-{s:08d}" for s in (1, 2, 3, 4)]
    assert all(r["checkpoint_path"].startswith(str(run_dir)) and "loss" in r for r in straight)
    checkpoints = list_checkpoints(run_dir)  # complete ones only (progress.json written)
    assert list(checkpoints) == [3, 4]  # keep_last_k=2
    assert TrainingProgress.from_file(checkpoints[4] / "progress.json").samples_seen == 4  # one rank, batch 1

    first: list[dict] = []
    crashing = _config(tmp_path, weights, "relaunched", *local, "failure.inject_at_step=3")
    with pytest.raises(InjectedFailure):  # local mode: the recipe's own exception, no Ray Train wrapper
        fit(crashing, on_report=first.append)
    again: list[dict] = []
    fit(crashing, on_report=again.append)  # the same command again
    assert [r["step"] for r in first] == [1, 2, 3] and [r["step"] for r in again] == [4]
    expected, got = _weights(checkpoints[4]), _weights(list_checkpoints(tmp_path / "relaunched")[4])
    assert all(torch.equal(expected[k], got[k]) for k in expected), "resumed local-mode weights differ"
