"""Two-player training: a generator and a discriminator, each with its own optimiser, schedule and grad scaler.

:class:`AdversarialEngine` presents the generator to :class:`vipo.train.loop.TrainLoop` as an ordinary
:class:`~vipo.train.engine.Engine` (``micro_step`` updates the generator) and adds :meth:`discriminator_step`,
which the recipe calls inside its ``compute_loss`` *before* building the generator's adversarial term, so every
step updates D on (real, detached fake) first and then G against the updated D, as upstream ProPainter does. The
checkpoint holds both optimisers, both schedules and both scalers (``recipe_state.pt`` for G, ``discriminator/``
for D); the recipe saves both networks' weights. Each network is wrapped in DDP on its own when the group has
more than one rank (upstream's single-GPU ``.module`` crash cannot happen: nothing reaches through a wrapper).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn

from vipo.train.config import OptimSettings, TrainConfig
from vipo.train.engine import TorchEngine, WorkerContext

__all__ = ["AdversarialEngine", "GeneratorDiscriminator", "frozen"]

DISCRIMINATOR_STATE_DIR = "discriminator"


class GeneratorDiscriminator(nn.Module):
    """Both networks under one module, so the loop's ``model.eval()``/``model.train()`` reach both."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with ``requires_grad`` off for the duration, so a generator loss leaves no gradient in it."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags):
            parameter.requires_grad_(flag)


class AdversarialEngine:
    """Generator engine + discriminator engine (plain torch / DDP, the same precision and accumulation)."""

    shards_parameters = False

    def __init__(self, generator: nn.Module, discriminator: nn.Module, cfg: TrainConfig,
                 discriminator_optim: OptimSettings, ctx: WorkerContext):
        self.generator = TorchEngine(generator, cfg, ctx)
        self.discriminator = TorchEngine(discriminator, cfg.model_copy(update={"optim": discriminator_optim}), ctx)
        self.module = self.generator.module
        self.model = GeneratorDiscriminator(self.generator.model, self.discriminator.model)
        self.input_dtype = self.generator.input_dtype
        self.last_discriminator_grad_norm: float | None = None

    @property
    def lr(self) -> float:
        return self.generator.lr

    @property
    def discriminator_lr(self) -> float:
        return self.discriminator.lr

    def discriminator_step(self, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Backpropagate the discriminator loss ``loss_fn()`` (which calls :attr:`discriminator.module`) and, at the
        accumulation boundary, update D and its schedule. Returns the detached loss."""
        loss, grad_norm = self.discriminator.micro_step(loss_fn)
        if grad_norm is not None:
            self.last_discriminator_grad_norm = grad_norm
        return loss

    def micro_step(self, loss_fn: Callable[[], torch.Tensor], *args, **kwargs) -> tuple[torch.Tensor, float | None]:
        """The generator's micro-step (see :meth:`TorchEngine.micro_step`; extra arguments such as a step guard's
        judge are passed through unchanged, so the loop's guard judges the generator's step)."""
        return self.generator.micro_step(loss_fn, *args, **kwargs)

    def full_weights(self) -> ContextManager:
        return contextlib.nullcontext()

    def save_state(self, directory: Path, ctx: WorkerContext) -> None:
        self.generator.save_state(directory, ctx)
        self.discriminator.save_state(Path(directory) / DISCRIMINATOR_STATE_DIR, ctx)

    def load_state(self, directory: Path) -> None:
        self.generator.load_state(directory)
        self.discriminator.load_state(Path(directory) / DISCRIMINATOR_STATE_DIR)
