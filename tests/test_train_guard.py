"""The step guard: non-finite or spiking steps are skipped (nothing changes), counted, and stop the run when they
persist; non-finite weights are never checkpointed. Rules checked on hand cases, then through the shared loop
with a tiny stage-1 recipe in process (no Ray) whose loss is poisoned on chosen micro-batches."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vipo.models.tiny import write_tiny_weights
from vipo.train.checkpointing import list_checkpoints
from vipo.train.config import GuardSettings, load_train_config
from vipo.train.engine import WorkerContext
from vipo.train.guard import SKIPPED_STEPS, SkippedStepsError, StepGuard, nonfinite_parameters
from vipo.train.recipes import get_recipe

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "stage1_demo.yaml"


def test_guard_skips_nonfinite_and_spikes_counts_them_and_stops_after_n_in_a_row():
    guard = StepGuard(GuardSettings(max_consecutive_skips=3, spike_factor=5.0, spike_window=3))
    assert guard.check(1.0, 0.5) is None and guard.check(2.0, 0.5) is None
    assert guard.check(20.0, 0.5) is None  # window not full yet (2 of 3): no spike rule
    assert guard.check(1.0, 0.5) is None  # window now [1, 2, 20] → mean 23/3
    assert guard.check(5 * 23 / 3 + 0.01, 0.5) == "loss_spike"  # just above 5 × mean
    assert guard.check(5 * 23 / 3 - 0.01, None) is None  # just below; unknown grad norm judged on the loss only
    assert guard.check(math.nan, 0.5) == "nonfinite_loss"
    assert guard.check(1.0, math.inf) == "nonfinite_grad_norm"
    state = copy.deepcopy(guard.state_dict())
    with pytest.raises(SkippedStepsError, match=r"3 consecutive.*last: nonfinite_loss.*nonfinite_grad_norm: 1"):
        guard.check(math.inf, 0.5)
    assert guard.metrics() == {SKIPPED_STEPS: 4.0, f"{SKIPPED_STEPS}/loss_spike": 1.0,
                               f"{SKIPPED_STEPS}/nonfinite_grad_norm": 1.0, f"{SKIPPED_STEPS}/nonfinite_loss": 2.0}

    resumed = StepGuard(GuardSettings(max_consecutive_skips=3, spike_factor=5.0, spike_window=3))
    resumed.load_state_dict(state)  # a resumed run judges exactly as the uninterrupted one
    assert resumed.consecutive == 2 and list(resumed.recent_losses) == [20.0, 1.0, 5 * 23 / 3 - 0.01]
    with pytest.raises(SkippedStepsError):
        resumed.check(math.nan)

    negative = StepGuard(GuardSettings(spike_factor=2.0, spike_window=1))
    assert negative.check(-1.0) is None and negative.check(10.0) is None  # no spike rule on a non-positive mean
    assert StepGuard(GuardSettings(spike_window=1)).check(1.0) is None
    off = StepGuard(GuardSettings(spike_window=1))
    assert off.check(1.0) is None and off.check(1e9) is None  # spike_factor null: only non-finite values skip


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guard_weights")
    write_tiny_weights(root, seed=0)
    return root


def torch_engine_state(engine) -> tuple:
    """The trainable weights, the optimiser's state and the schedule's position."""
    return ({n: p.detach().clone() for n, p in engine.model.named_parameters() if p.requires_grad},
            copy.deepcopy(engine.optimizer.state_dict()), engine.scheduler.last_epoch)


def poisoned_recipe(weights_root: Path, output_dir: Path, poison: dict[int, str], *overrides: str,
                    snapshot=torch_engine_state):
    """A stage-1 recipe whose ``n``-th loss (1-based) is made non-finite as ``poison[n]`` says: ``loss`` (a NaN
    loss) or ``grad`` (a finite loss whose gradients are NaN). ``snapshot(engine)`` is taken before every call."""
    cfg = load_train_config(DEMO, [
        f"output_dir={output_dir}", f"model.weights_root={weights_root}", "model.tiny_weights_seed=null",
        "tracking.enabled=false", "validation.every_n_steps=null", "data.clip.nframes=2", "export_on_finish=false",
        "optim.lr=1e-3", "checkpointing.every_n_steps=1", "checkpointing.keep_last_k=10", *overrides,
    ])
    recipe = get_recipe(cfg.recipe)(cfg, WorkerContext())
    recipe.setup(None)
    compute_loss, snapshots = recipe.compute_loss, []

    def compute(batch):
        engine = recipe.engine
        snapshots.append(snapshot(engine))
        loss, extras = compute_loss(batch)
        kind = poison.get(len(snapshots))
        if kind == "loss":
            loss = loss * math.nan
        elif kind == "grad":  # sqrt'(0) = inf, times d(0·w)/dw = 0: NaN gradients, loss unchanged
            weight = next(p for p in engine.model.parameters() if p.requires_grad)
            loss = loss + torch.sqrt(0 * weight.sum())
        return loss, extras

    recipe.compute_loss = compute
    return recipe, snapshots


def same_state(a, b) -> bool:
    weights_a, optim_a, epoch_a = a
    weights_b, optim_b, epoch_b = b
    states_a, states_b = optim_a["state"], optim_b["state"]
    return (epoch_a == epoch_b and all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
            and states_a.keys() == states_b.keys()
            and all(torch.equal(states_a[k][s], states_b[k][s]) for k in states_a for s in states_a[k]))


def test_nonfinite_steps_are_skipped_counted_and_leave_weights_and_optimiser_unchanged(weights_root, tmp_path):
    recipe, snapshots = poisoned_recipe(weights_root, tmp_path, {2: "loss", 3: "grad"}, "optim.max_steps=2",
                                        "guard.max_consecutive_skips=3")
    recipe.loop.run()
    assert len(snapshots) == 4 and recipe.loop.progress.step == 2  # 2 steps taken from 4 micro-batches
    assert not same_state(snapshots[0], snapshots[1])  # step 1 moved the weights and Adam's moments
    assert same_state(snapshots[1], snapshots[2]) and same_state(snapshots[1], snapshots[3])  # the skips did not
    assert recipe.loop.progress.samples_seen == 4  # the poisoned batches were consumed, not retried

    metrics = recipe.loop.logger.metrics
    assert metrics[SKIPPED_STEPS] == [(1, 0.0), (2, 2.0)]
    assert metrics[f"{SKIPPED_STEPS}/nonfinite_loss"] == [(2, 1.0)]
    assert metrics[f"{SKIPPED_STEPS}/nonfinite_grad_norm"] == [(2, 1.0)]
    assert all(math.isfinite(v) for _, v in metrics["loss"] + metrics["grad_norm"])
    checkpoints = list_checkpoints(recipe.cfg.run_dir)
    assert list(checkpoints) == [1, 2]
    for folder in checkpoints.values():
        for module in ("unet_main", "brushnet"):
            state = load_file(folder / "weights" / module / "diffusion_pytorch_model.safetensors")
            assert all(torch.isfinite(t).all() for t in state.values())


def test_consecutive_skips_stop_the_run_and_nan_weights_are_never_checkpointed(weights_root, tmp_path):
    recipe, snapshots = poisoned_recipe(weights_root, tmp_path, {n: "loss" for n in range(2, 10)},
                                        "optim.max_steps=5", "guard.max_consecutive_skips=2")
    with pytest.raises(SkippedStepsError, match="2 consecutive optimiser steps skipped.*nonfinite_loss: 2"):
        recipe.loop.run()
    assert len(snapshots) == 3 and same_state(snapshots[1], snapshots[2])
    assert list(list_checkpoints(recipe.cfg.run_dir)) == [1]
    assert not nonfinite_parameters(recipe.engine.model.named_parameters())

    with torch.no_grad():
        next(p for p in recipe.engine.model.parameters() if p.requires_grad).view(-1)[0] = math.nan
    recipe.loop.progress.step = 2
    with pytest.raises(RuntimeError, match="step 2: non-finite weights.*no checkpoint written"):
        recipe.loop.save({"loss": 0.0})
    assert list(list_checkpoints(recipe.cfg.run_dir)) == [1]
