"""The step guard every recipe shares: bad optimiser steps are skipped, counted, and stop the run when they persist.

One NaN in a loss turns every weight NaN after a single AdamW step, and a checkpoint then preserves the damage. A
training loop asks :meth:`StepGuard.check` before each optimiser step, with the step's loss (mean over its
micro-batches and over ranks, so every rank reaches the same verdict) and the gradient norm before clipping::

    reason = guard.check(loss, grad_norm)     # None: take the step; else why it is skipped
    if reason is None:
        optimizer.step(); scheduler.step()
    optimizer.zero_grad(set_to_none=True)     # a skipped step leaves weights, optimiser state and schedule alone
    logger.log_metrics(guard.metrics(), step)

Reasons: ``nonfinite_loss``, ``nonfinite_grad_norm`` and, with ``spike_factor``, ``loss_spike`` (loss above
``spike_factor`` × the running mean of the last ``spike_window`` taken steps, seed 004's rule). After
``max_consecutive_skips`` skips in a row :class:`SkippedStepsError` stops the run. :meth:`state_dict` goes into
checkpoints so a resumed run judges its steps exactly as an uninterrupted one would.
:func:`nonfinite_parameters` is the check run before a checkpoint is written.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Any, Iterable

import torch
from torch import nn

from vipo.train.config import GuardSettings

__all__ = ["SKIPPED_STEPS", "SkipReason", "SkippedStepsError", "StepGuard", "nonfinite_parameters"]

SKIPPED_STEPS = "train/skipped_steps"
"""Metric: skipped optimiser steps so far; ``train/skipped_steps/<reason>`` counts each reason."""


class SkipReason:
    NONFINITE_LOSS = "nonfinite_loss"
    NONFINITE_GRAD_NORM = "nonfinite_grad_norm"
    LOSS_SPIKE = "loss_spike"


class SkippedStepsError(RuntimeError):
    """Too many consecutive optimiser steps were skipped: training is not recovering by itself."""


class StepGuard:
    """Decides, per optimiser step, whether to take it (see the module docstring)."""

    def __init__(self, settings: GuardSettings):
        self.settings = settings
        self.skipped: Counter[str] = Counter()
        self.consecutive = 0
        self.recent_losses: deque[float] = deque(maxlen=settings.spike_window)

    def check(self, loss: float, grad_norm: float | None = None, *, record: bool = True) -> str | None:
        """The reason to skip this step, or None to take it; counts the verdict. ``grad_norm`` None: only the loss
        is judged. ``record`` False: the verdict only, nothing counted (DeepSpeed asks the loss's verdict before
        its step, in which it learns the gradient norm, and records the step's verdict after it). Raises
        :class:`SkippedStepsError` on the ``max_consecutive_skips``-th recorded skip in a row."""
        loss = float(loss)
        reason = self._reason(loss, grad_norm)
        if not record:
            return reason
        if reason is None:
            self.consecutive = 0
            self.recent_losses.append(loss)
            return None
        self.skipped[reason] += 1
        self.consecutive += 1
        if self.consecutive >= self.settings.max_consecutive_skips:
            counts = ", ".join(f"{name}: {count}" for name, count in sorted(self.skipped.items()))
            raise SkippedStepsError(
                f"{self.consecutive} consecutive optimiser steps skipped (guard.max_consecutive_skips="
                f"{self.settings.max_consecutive_skips}); last: {reason} (loss {loss}, grad norm {grad_norm}); "
                f"skipped so far: {counts}. The weights are the last good ones: lower optim.lr, check the data, "
                "or resume from an earlier checkpoint"
            )
        return reason

    def _reason(self, loss: float, grad_norm: float | None) -> str | None:
        if not math.isfinite(loss):
            return SkipReason.NONFINITE_LOSS
        if grad_norm is not None and not math.isfinite(grad_norm):
            return SkipReason.NONFINITE_GRAD_NORM
        factor, window = self.settings.spike_factor, self.recent_losses
        if factor is not None and len(window) == window.maxlen:
            mean = sum(window) / len(window)
            if mean > 0 and loss > factor * mean:
                return SkipReason.LOSS_SPIKE
        return None

    def metrics(self) -> dict[str, float]:
        """``train/skipped_steps`` (total) and ``train/skipped_steps/<reason>`` for each reason seen."""
        return {SKIPPED_STEPS: float(sum(self.skipped.values())),
                **{f"{SKIPPED_STEPS}/{reason}": float(count) for reason, count in sorted(self.skipped.items())}}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped), "consecutive": self.consecutive,
                "recent_losses": list(self.recent_losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = Counter(state.get("skipped", {}))
        self.consecutive = int(state.get("consecutive", 0))
        self.recent_losses.clear()
        self.recent_losses.extend(float(v) for v in state.get("recent_losses", []))


def nonfinite_parameters(parameters: Iterable[tuple[str, nn.Parameter]]) -> list[str]:
    """Names of the (named) parameters holding a NaN or an infinity."""
    return [name for name, param in parameters if not bool(torch.isfinite(param.detach()).all())]
