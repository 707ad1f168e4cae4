"""Where a recipe's trained module runs: plain torch (single process or DDP) or DeepSpeed ZeRO.

Both engines expose the same small surface, so a recipe never branches on the backend:
``engine.module`` (call it for the forward pass), ``engine.model`` (the unwrapped module, for ``save_pretrained``
and validation), ``engine.input_dtype`` (cast model inputs to it), ``engine.micro_step(loss_fn, judge)`` (forward +
backward + clipping + optimiser/scheduler step at the accumulation boundary, unless ``judge`` — the loop's
:class:`vipo.train.guard.StepGuard` — names a reason to skip it: then weights, optimiser state, schedule and grad
scale stay as they were and the step's gradients are dropped, on both engines), ``engine.lr``,
``engine.full_weights()`` (a context in which every rank sees whole tensors: ZeRO-3 gathers; entered by all
ranks), ``engine.shards_parameters`` (ZeRO-3), and
``save_state``/``load_state`` for the optimiser side of a checkpoint.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Protocol

import torch
from torch import nn

from vipo.train.checkpointing import RECIPE_STATE_FILE, atomic_save
from vipo.train.config import TrainConfig

__all__ = [
    "PRECISION_DTYPES",
    "StepJudge",
    "DeepSpeedEngine",
    "Engine",
    "MultiStepWarmup",
    "TorchEngine",
    "WorkerContext",
    "build_engine",
    "build_lr_scheduler",
]

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

class StepJudge(Protocol):
    """Called at the accumulation boundary with the gradient norm before clipping: None to take the optimiser
    step, else the reason it is skipped; the verdict is recorded. ``judge(None, record=False)``: the verdict on the
    step's loss alone, not recorded (asked before the step where the backend learns the norm inside it)."""

    def __call__(self, grad_norm: float | None, record: bool = True) -> str | None: ...


@dataclass(frozen=True)
class WorkerContext:
    """This process's place in the worker group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    in_ray: bool = False

    @classmethod
    def from_ray(cls) -> "WorkerContext":
        """Inside a Ray Train worker (the process group is already set up by ``TorchTrainer``)."""
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), ray.train.torch.get_device(),
                   in_ray=True)

    @classmethod
    def local(cls, use_gpu: bool) -> "WorkerContext":
        """Ray Train's local mode (``scaling.num_workers: 0``): the calling process is the only rank."""
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("scaling.use_gpu is true but this process sees no CUDA device; set scaling.use_gpu: "
                               "false or run where a GPU is visible")
        return cls(device=torch.device("cuda", 0) if use_gpu else torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Engine(Protocol):
    module: nn.Module
    model: nn.Module
    input_dtype: torch.dtype
    shards_parameters: bool  # ZeRO-3: no rank holds whole weights outside full_weights()

    @property
    def lr(self) -> float: ...
    def micro_step(self, loss_fn: Callable[[], torch.Tensor],
                   judge: StepJudge | None = None) -> tuple[torch.Tensor, float | None]: ...
    def full_weights(self) -> ContextManager: ...
    def save_state(self, directory: Path, ctx: WorkerContext) -> None: ...
    def load_state(self, directory: Path) -> None: ...


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the recipe's model has no trainable parameters")
    wrong = {p.dtype for p in params} - {torch.float32}
    if wrong:
        # Low-precision master weights silently stall training (updates round to zero); the engines cast.
        raise ValueError(f"trainable parameters must be float32, found {sorted(map(str, wrong))}")
    return params


@dataclass(frozen=True)
class MultiStepWarmup:
    """LR factor of the ``multistep`` schedule at a step: linear from ``start`` (a fraction of the base rate) to 1
    over ``warmup_steps``, then ``gamma`` to the number of ``milestones`` reached (a picklable LambdaLR lambda)."""

    warmup_steps: int
    start: float
    milestones: tuple[int, ...]
    gamma: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1 - self.start) * step / self.warmup_steps
        return self.gamma ** bisect.bisect_right(self.milestones, step)


def build_lr_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    from diffusers.optimization import get_scheduler

    optim = cfg.optim
    if optim.lr_scheduler == "multistep":
        factor = MultiStepWarmup(optim.warmup_steps, optim.warmup_start_lr / optim.lr, tuple(sorted(optim.milestones)),
                                 optim.gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return get_scheduler(
        cfg.optim.lr_scheduler, optimizer,
        num_warmup_steps=cfg.optim.warmup_steps, num_training_steps=cfg.optim.max_steps,
    )


class TorchEngine:
    """AdamW + diffusers LR schedule + clipping + accumulation (+ autocast), DDP when the group has >1 rank.
    ``param_groups`` (torch's optimiser groups, e.g. ``{"params": [...], "lr": ...}``): per-group rates, which
    the schedule scales alike; default one group at ``optim.lr``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: WorkerContext, param_groups: list[dict] | None = None):
        self.model = model.to(ctx.device)
        self.params = trainable_parameters(model)
        if ctx.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [ctx.device] if ctx.device.type == "cuda" else None
            self.module = DistributedDataParallel(model, device_ids=device_ids)
        else:
            self.module = model
        self.optimizer = torch.optim.AdamW(
            param_groups or self.params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if cfg.precision == "fp16" else None
        self.autocast_dtype = None if cfg.precision == "fp32" else PRECISION_DTYPES[cfg.precision]
        self.device_type = ctx.device.type
        self.input_dtype = torch.float32
        self.shards_parameters = False
        self.grad_accum = cfg.optim.grad_accum
        self.max_grad_norm = cfg.optim.max_grad_norm or math.inf
        self.micro = 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def micro_step(self, loss_fn: Callable[[], torch.Tensor],
                   judge: StepJudge | None = None) -> tuple[torch.Tensor, float | None]:
        """Run ``loss_fn`` (which calls ``self.module``), backpropagate ``loss / grad_accum`` and, at the
        accumulation boundary, clip, step and advance the schedule — unless ``judge(grad_norm)`` gives a reason
        to skip: then weights, optimiser state, schedule and grad scale stay as they were and the gradients are
        dropped. Returns (loss, grad norm or None between boundaries)."""
        boundary = (self.micro + 1) % self.grad_accum == 0
        # Between boundaries DDP must not all-reduce: gradients only accumulate locally.
        sync = contextlib.nullcontext() if boundary or self.module is self.model else self.module.no_sync()
        autocast = (
            torch.autocast(self.device_type, dtype=self.autocast_dtype)
            if self.autocast_dtype else contextlib.nullcontext()
        )
        with sync:
            with autocast:
                loss = loss_fn()
            scaled = loss / self.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self.micro += 1
        if not boundary:
            return loss.detach(), None
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if judge is None or judge(grad_norm) is None:
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.scheduler.step()
        elif self.scaler:
            # unscale_ must be followed by update() before the next step. A skip for the loss keeps the scale;
            # overflowing gradients are the scaler's cue to lower it, exactly as GradScaler.step would.
            kept = self.scaler.state_dict()
            self.scaler.update()
            if math.isfinite(grad_norm):
                self.scaler.load_state_dict(kept)
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), grad_norm

    def full_weights(self) -> ContextManager:
        return contextlib.nullcontext()

    def save_state(self, directory: Path, ctx: WorkerContext) -> None:
        # DDP keeps identical optimiser state on every rank, so rank 0's copy is the whole state.
        if ctx.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
            if self.scaler:
                state["scaler"] = self.scaler.state_dict()
            atomic_save(state, Path(directory) / RECIPE_STATE_FILE)

    def load_state(self, directory: Path) -> None:
        path = Path(directory) / RECIPE_STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing optimiser state (was this checkpoint written by DeepSpeed?)")
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


class DeepSpeedEngine:
    """DeepSpeed ZeRO 1-3 with the config from :func:`vipo.train.deepspeed.deepspeed_config`."""

    _TAG = "state"

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: WorkerContext, param_groups: list[dict] | None = None):
        import deepspeed

        from vipo.train.deepspeed import deepspeed_config

        params = trainable_parameters(model)
        self.zero_stage = cfg.deepspeed.zero_stage
        self.shards_parameters = self.zero_stage == 3
        self.module, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model.to(ctx.device), model_parameters=param_groups or params, config=deepspeed_config(cfg),
            lr_scheduler=lambda optimizer: build_lr_scheduler(cfg, optimizer),
        )
        self.model = self.module.module
        self.input_dtype = PRECISION_DTYPES[cfg.precision]  # DeepSpeed casts the module itself

    @property
    def lr(self) -> float:
        return self.module.get_lr()[0]

    def micro_step(self, loss_fn: Callable[[], torch.Tensor],
                   judge: StepJudge | None = None) -> tuple[torch.Tensor, float | None]:
        """As :meth:`TorchEngine.micro_step`. Every micro-batch goes through DeepSpeed's ``backward`` and ``step``,
        so its micro-step count (hence its accumulation boundaries) never drifts; the skip is DeepSpeed's own.

        ZeRO 1-3 check the gradient norm inside ``step()`` and, when it is not finite (an overflow), drop the
        accumulated gradients and skip the update and the schedule on every rank (``was_step_applied()`` False);
        the judge then records ``nonfinite_grad_norm``. DeepSpeed has no call that skips a step from outside, so a
        skip for the loss (judged before the boundary's backward) goes down that same path: the boundary
        micro-batch backpropagates ``loss × NaN``, whose NaN gradients trip the overflow check; the fp16 loss
        scale is then put back, as the overflow was ours. The grad norm of a step skipped for its loss is NaN."""
        boundary = self.module.is_gradient_accumulation_boundary()  # counts micro-steps: read before step()
        loss = loss_fn()
        loss_reason = judge(None, record=False) if boundary and judge is not None else None
        scale_state = dict(vars(self.optimizer.loss_scaler)) if loss_reason else None
        self.module.backward(loss * math.nan if loss_reason else loss)
        self.module.step()
        if not boundary:
            return loss.detach(), None
        applied = self.module.was_step_applied()
        if loss_reason:
            if applied:
                raise RuntimeError(f"step guard: DeepSpeed applied an update skipped for {loss_reason}: its "
                                   "overflow check did not see the NaN gradients (bf16.check_grad_overflow off?)")
            vars(self.optimizer.loss_scaler).update(scale_state)
            judge(None)  # records the loss's verdict
            return loss.detach(), math.nan
        grad_norm = float(self.module.get_global_grad_norm()) if applied else math.inf
        if judge is not None:
            judge(grad_norm)
        return loss.detach(), grad_norm

    def full_weights(self) -> ContextManager:
        if not self.shards_parameters:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)

    def save_state(self, directory: Path, ctx: WorkerContext) -> None:
        # Every rank writes its optimiser shard; Ray merges the ranks' folders into one checkpoint.
        self.module.save_checkpoint(str(Path(directory) / "deepspeed"), tag=self._TAG, exclude_frozen_parameters=True)

    def load_state(self, directory: Path) -> None:
        path = Path(directory) / "deepspeed"
        if not (path / self._TAG).is_dir():
            raise FileNotFoundError(f"{path / self._TAG}: missing DeepSpeed state "
                                    "(was this checkpoint written by DDP?)")
        self.module.load_checkpoint(str(path), tag=self._TAG, load_module_strict=False)


def build_engine(model: nn.Module, cfg: TrainConfig, ctx: WorkerContext,
                 param_groups: list[dict] | None = None) -> Engine:
    engine = DeepSpeedEngine if cfg.deepspeed.enabled else TorchEngine
    return engine(model, cfg, ctx, param_groups)
