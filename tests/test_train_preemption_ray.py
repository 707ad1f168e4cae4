"""Kills and preemption through the real Ray Train ``TorchTrainer`` (stage 1, tiny models, 2 CPU workers): a kill
after a complete checkpoint but before Ray's snapshot update, and SIGTERM to ``vipo train``. Each relaunch resumes
at the step the kill left and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from vipo.models.tiny import write_tiny_weights
from vipo.train.checkpointing import PROGRESS_FILE, TrainingProgress, list_checkpoints
from vipo.train.config import load_train_config
from vipo.train.loop import DRILL_MARKER
from vipo.train.preemption import EXIT_PREEMPTED, STOP_REQUEST_FILE
from vipo.train.runner import fit

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1800)]  # five short trainings with 2 Ray Train workers each

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "stage1_demo.yaml"


def overrides(output_dir: Path, weights: Path, name: str, *extra: str) -> list[str]:
    return [f"output_dir={output_dir}", f"name={name}", f"model.weights_root={weights}", "model.tiny_weights_seed=null",
            "optim.max_steps=4", "checkpointing.keep_last_k=10", "validation.every_n_steps=null",
            "data.clip.nframes=2", "tracking.enabled=false", "export_on_finish=false", *extra]


def weights_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{module}.{key}": value for module in ("unet_main", "brushnet")
            for key, value in load_file(
                checkpoint / "weights" / module / "diffusion_pytorch_model.safetensors").items()}


def assert_same_weights(expected: Path, got: Path) -> None:
    a, b = weights_of(expected), weights_of(got)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{got} differs from {expected}"


def marker_identity(run_dir: Path, step: int) -> tuple[int, int]:
    stat = (run_dir / f"checkpoint-{step:08d}" / PROGRESS_FILE).stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny weights and the step-4 checkpoint of an uninterrupted run."""
    root = tmp_path_factory.mktemp("preemption")
    weights = root / "weights"
    write_tiny_weights(weights, seed=0)
    fit(load_train_config(DEMO, overrides(root, weights, "uninterrupted", "checkpointing.every_n_steps=2")))
    return weights, list_checkpoints(root / "uninterrupted")[4]


def test_kill_after_a_complete_checkpoint_before_rays_snapshot_resumes_at_that_step(uninterrupted, tmp_path):
    from ray.train import TrainingFailedError

    weights, reference = uninterrupted
    run_dir = tmp_path / "window"

    def launch(*extra: str):
        return fit(load_train_config(DEMO, overrides(tmp_path, weights, "window", "checkpointing.every_n_steps=1",
                                                     *extra)))

    with pytest.raises(TrainingFailedError, match="inject_at_step=2"):
        launch("failure.inject_at_step=2")
    snapshot = run_dir / "checkpoint_manager_snapshot.json"  # Ray's record: checkpoint 2 at most
    stale = snapshot.read_bytes() if snapshot.exists() else None
    (run_dir / DRILL_MARKER).unlink()
    with pytest.raises(TrainingFailedError, match="inject_at_step=3"):
        launch("failure.inject_at_step=3")
    assert list(list_checkpoints(run_dir)) == [1, 2, 3]
    # As if the kill landed after checkpoint 3 was complete, before Ray recorded it.
    if stale is None:
        snapshot.unlink()
    else:
        snapshot.write_bytes(stale)
    before = marker_identity(run_dir, 3)

    assert launch("failure.inject_at_step=3").error is None  # the same command again
    assert marker_identity(run_dir, 3) == before, "step 3 was trained again: the relaunch did not resume at 3"
    assert TrainingProgress.from_file(run_dir / "checkpoint-00000004" / PROGRESS_FILE).samples_seen == 4 * 2
    assert_same_weights(reference, run_dir / "checkpoint-00000004")


def test_sigterm_checkpoints_at_the_next_step_exits_75_and_the_relaunch_resumes_exactly(uninterrupted, tmp_path):
    from jobs.train import run

    weights, reference = uninterrupted
    run_dir = tmp_path / "preempted"
    args = overrides(tmp_path, weights, "preempted", "checkpointing.every_n_steps=3")
    original = signal.getsignal(signal.SIGTERM)

    def preempt() -> None:  # SIGTERM once `fit` listens for it, as a scheduler would send it mid-run
        while signal.getsignal(signal.SIGTERM) is original:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=preempt, daemon=True)
    sender.start()
    with pytest.raises(SystemExit) as stopped:
        run(DEMO, args)
    sender.join()
    assert stopped.value.code == EXIT_PREEMPTED
    assert signal.getsignal(signal.SIGTERM) is original and not (run_dir / STOP_REQUEST_FILE).exists()
    (step,) = list_checkpoints(run_dir)  # a checkpoint off the every-3 schedule: written because of the stop
    assert 1 <= step < 3
    before = marker_identity(run_dir, step)

    assert fit(load_train_config(DEMO, args)).error is None  # the relaunch
    assert marker_identity(run_dir, step) == before
    assert list(list_checkpoints(run_dir)) == [step, 3, 4]
    assert_same_weights(reference, run_dir / "checkpoint-00000004")
