"""An exponential moving average of a model's weights, kept on the CPU in float32 (off the accelerator).

After each optimiser step ``shadow ← decay·shadow + (1 − decay)·weights``; :meth:`WeightEMA.swapped_into` puts the
average into the model for saving or validation and restores the trained weights afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().to("cpu", torch.float32).clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if param.requires_grad:  # frozen weights never move: their average is themselves
                self.shadow[name].lerp_(param.detach().to("cpu", torch.float32), 1.0 - self.decay)

    def load_from(self, model: nn.Module) -> None:
        """Take ``model``'s weights as the average (a resumed run's saved EMA)."""
        self.shadow = {name: p.detach().to("cpu", torch.float32).clone() for name, p in model.named_parameters()}

    @contextlib.contextmanager
    def swapped_into(self, model: nn.Module) -> Iterator[nn.Module]:
        trained = {name: p.detach().clone() for name, p in model.named_parameters()}
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(trained[name])
