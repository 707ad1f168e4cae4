"""The step guard under DeepSpeed ZeRO-2 and ZeRO-3: a step with a non-finite loss or gradient norm is skipped
through DeepSpeed's own overflow path, so weights, the optimiser's fp32 partitions and moments, the LR schedule and
the loss scale stay bitwise as they were, the accumulated gradients are dropped, and the run continues exactly as
one that never saw the poisoned micro-batches; N skips in a row stop it.

DeepSpeed runs on the CPU here: one rank in a gloo process group, fp32 or bf16, torch's AdamW (``torch_adam``) and no
shared-memory all-reduce kernel: DeepSpeed compiles its fused/CPU Adam and that CPU-only kernel on first use, which
a test should not wait for, and the guard touches neither. A tiny MLP stands in for a recipe's model: the skip
logic is the engine's, not the model's.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from servers import free_port
from test_train_guard import poisoned_recipe, weights_root  # noqa: F401 (a fixture)
from torch import nn

import vipo.train.deepspeed as deepspeed_module
from vipo.train.checkpointing import list_checkpoints
from vipo.train.config import GuardSettings, load_train_config
from vipo.train.engine import WorkerContext, build_engine
from vipo.train.guard import SKIPPED_STEPS, SkippedStepsError, StepGuard

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "stage1_demo.yaml"
GRAD_ACCUM = 2


@pytest.fixture(scope="module")
def gloo_group():
    """A one-rank process group, as Ray Train sets up for each worker (DeepSpeed joins it)."""
    # deepspeed.comm imports torch under the same name, so its torch backend is reached through importlib.
    torch_backend = importlib.import_module("deepspeed.comm.torch")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
            patch.setenv(key, value)
        patch.setattr(torch_backend, "build_shm_op", lambda: None)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


@pytest.fixture
def torch_adam(monkeypatch):
    """The generated DeepSpeed config with ``torch_adam`` set (see the module docstring)."""
    generate = deepspeed_module.deepspeed_config

    def with_torch_adam(cfg):
        config = generate(cfg)
        config["optimizer"]["params"]["torch_adam"] = True
        return config

    monkeypatch.setattr(deepspeed_module, "deepspeed_config", with_torch_adam)


class Judge:
    """The loop's judge (:meth:`vipo.train.loop.TrainLoop._train`) for one rank: the step's mean micro-batch loss."""

    def __init__(self, guard: StepGuard):
        self.guard, self.losses = guard, []

    def __call__(self, grad_norm: float | None, record: bool = True) -> str | None:
        reason = self.guard.check(torch.stack(self.losses).mean(), grad_norm, record=record)
        if record:
            self.losses.clear()
        return reason


def make_engine(tmp_path: Path, zero_stage: int, precision: str):
    cfg = load_train_config(DEMO, [
        f"output_dir={tmp_path}", f"model.weights_root={tmp_path / 'w'}", "scaling.use_gpu=true",
        f"precision={precision}", "deepspeed.enabled=true", f"deepspeed.zero_stage={zero_stage}",
        "deepspeed.offload_optimizer=false", f"optim.grad_accum={GRAD_ACCUM}", "optim.lr=1e-2",
        "optim.warmup_steps=0", "optim.max_grad_norm=1.0",
    ])
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():  # the same start weights for every run, whatever ran before
        generator = torch.Generator().manual_seed(0)
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return build_engine(model, cfg, WorkerContext())


def batch(index: int) -> torch.Tensor:
    return torch.randn(2, 4, generator=torch.Generator().manual_seed(1000 + index))


def micro_step(engine, judge: Judge, index: int, poison: str | None = None) -> float | None:
    """Micro-batch ``index``; ``poison``: ``loss`` (a NaN loss whose gradients are finite: only the guard can stop
    this step) or ``grad`` (a finite loss whose gradients are NaN, through a hook on the model's output)."""

    def loss_fn() -> torch.Tensor:
        out = engine.module(batch(index).to(engine.input_dtype))
        if poison == "grad":
            out.register_hook(lambda grad: grad * math.nan)
        loss = out.float().pow(2).mean()
        if poison == "loss":
            loss = loss + math.nan
        judge.losses.append(loss.detach())
        return loss

    return engine.micro_step(loss_fn, judge)[1]


def window(engine, judge: Judge, first: int, poison: dict[int, str] | None = None) -> float:
    """One optimiser step: micro-batches ``first``, ``first + 1`` (``poison``: position in the window → kind).
    Returns the step's gradient norm."""
    poison = poison or {}
    assert micro_step(engine, judge, first, poison.get(0)) is None  # between boundaries: no step, no norm
    return micro_step(engine, judge, first + 1, poison.get(1))


def engine_state(engine) -> dict:
    """Whole weights, the optimiser's fp32 partitions and Adam moments, the schedule's position and loss scale."""
    with engine.full_weights():
        weights = {name: p.detach().clone() for name, p in engine.model.named_parameters()}
    zero = engine.optimizer
    # The fp32 master partitions the torch AdamW inside steps on (ZeRO-3 hands them to it one group at a time).
    masters = zero.fp32_partitioned_groups_flat if engine.shards_parameters else zero.single_partition_of_fp32_groups
    return {
        "weights": weights,
        "partitions": [p.detach().clone() for p in masters],
        "moments": [{k: v.clone() if torch.is_tensor(v) else v for k, v in zero.optimizer.state[p].items()}
                    for p in masters],
        "schedule": engine.scheduler.last_epoch,
        "lr": engine.lr,
        "loss_scale": engine.optimizer.loss_scale,
    }


def assert_same_state(a: dict, b: dict) -> None:
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][n], b["weights"][n]) for n in a["weights"])
    assert len(a["partitions"]) == len(b["partitions"])
    assert all(torch.equal(x, y) for x, y in zip(a["partitions"], b["partitions"]))
    assert [m.keys() for m in a["moments"]] == [m.keys() for m in b["moments"]]
    for x, y in zip(a["moments"], b["moments"]):
        assert all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in x)
    assert (a["schedule"], a["lr"], a["loss_scale"]) == (b["schedule"], b["lr"], b["loss_scale"])


@pytest.mark.parametrize(("zero_stage", "precision"), [(2, "fp32"), (3, "fp32"), (2, "bf16")])
def test_deepspeed_skips_nonfinite_steps_leaves_state_bitwise_and_matches_a_clean_run(
        gloo_group, torch_adam, tmp_path, zero_stage, precision):
    clean = make_engine(tmp_path / "clean", zero_stage, precision)
    clean_judge = Judge(StepGuard(GuardSettings()))
    clean_states = []
    for first in (0, 4, 8):  # the poisoned run's steps that are taken, on the same micro-batches
        assert math.isfinite(window(clean, clean_judge, first))
        clean_states.append(engine_state(clean))

    engine = make_engine(tmp_path / "poisoned", zero_stage, precision)
    guard = StepGuard(GuardSettings(max_consecutive_skips=2))
    judge = Judge(guard)
    assert math.isfinite(window(engine, judge, 0))
    after_first = engine_state(engine)
    assert_same_state(after_first, clean_states[0])
    assert after_first["moments"] and all("exp_avg_sq" in m for m in after_first["moments"])
    # A NaN loss on the window's first micro-batch: its gradients are already accumulated when the step is judged.
    assert math.isnan(window(engine, judge, 2, {0: "loss"}))
    assert_same_state(engine_state(engine), after_first)
    assert math.isfinite(window(engine, judge, 4))
    assert_same_state(engine_state(engine), clean_states[1])  # the poisoned window left no trace
    before_grad_skip = engine_state(engine)
    assert window(engine, judge, 6, {1: "grad"}) == math.inf  # DeepSpeed's overflow check sees the NaN gradients
    assert_same_state(engine_state(engine), before_grad_skip)
    assert math.isfinite(window(engine, judge, 8))
    after_last = engine_state(engine)
    assert_same_state(after_last, clean_states[2])
    assert not torch.equal(after_last["partitions"][0], after_first["partitions"][0])  # the taken steps did move
    assert guard.metrics() == {SKIPPED_STEPS: 2.0, f"{SKIPPED_STEPS}/nonfinite_grad_norm": 1.0,
                               f"{SKIPPED_STEPS}/nonfinite_loss": 1.0}
    assert engine.module.skipped_steps == 2  # DeepSpeed counted the same two skips
    assert engine.module.micro_steps == clean.module.micro_steps + 4  # boundaries never drifted

    # Two skips in a row (a NaN loss on the boundary micro-batch, then NaN gradients) stop the run, state intact.
    assert math.isnan(window(engine, judge, 10, {1: "loss"}))
    with pytest.raises(SkippedStepsError, match=r"2 consecutive optimiser steps skipped.*last: nonfinite_grad_norm"
                                                r".*nonfinite_grad_norm: 2, nonfinite_loss: 2"):
        window(engine, judge, 12, {0: "grad"})
    assert_same_state(engine_state(engine), after_last)


def test_the_loop_under_deepspeed_counts_a_skipped_step_and_checkpoints_finite_weights(
        gloo_group, torch_adam, weights_root, tmp_path):
    """The shared loop and a real recipe (tiny stage 1) on the DeepSpeed engine: the judge's two calls per step."""
    recipe, snapshots = poisoned_recipe(weights_root, tmp_path, {2: "loss"}, "optim.max_steps=2",
                                        "checkpointing.every_n_steps=2", "scaling.use_gpu=true",
                                        "deepspeed.enabled=true", "deepspeed.offload_optimizer=false",
                                        snapshot=engine_state)
    recipe.loop.run()
    assert len(snapshots) == 3 and recipe.loop.progress.step == 2 and recipe.engine.module.skipped_steps == 1
    assert not torch.equal(snapshots[0]["partitions"][0], snapshots[1]["partitions"][0])  # step 1 moved them
    assert_same_state(snapshots[1], snapshots[2])  # the poisoned step (2nd micro-batch) changed nothing
    metrics = recipe.loop.logger.metrics
    assert metrics[SKIPPED_STEPS] == [(1, 0.0), (2, 1.0)]
    assert metrics[f"{SKIPPED_STEPS}/nonfinite_loss"] == [(2, 1.0)]
    assert all(math.isfinite(v) for _, v in metrics["loss"] + metrics["grad_norm"])
    checkpoint = list_checkpoints(recipe.cfg.run_dir)[2]
    for module in ("unet_main", "brushnet"):
        state = load_file(checkpoint / "weights" / module / "diffusion_pytorch_model.safetensors")
        assert all(torch.isfinite(t).all() for t in state.values())
