"""``blur``: ProPainter alone. Flow propagation plus a transformer fill the hole with plausible but smooth,
texture-poor content — the "blur" loser of the seed's v0 data (ProPainter is deterministic, so ``seeds`` only
multiplies identical candidates; keep the default single seed)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from vipo.generate.kinds.base import Clip, KindOutput, NegativeKind, propainter_fill, register_kind

__all__ = ["BlurKind"]


@register_kind
class BlurKind(NegativeKind):
    kind: Literal["blur"] = "blur"
    models: ClassVar[tuple[str, ...]] = ("propainter",)

    def make(self, clip: Clip, hole: np.ndarray, seed: int) -> KindOutput:
        return KindOutput(propainter_fill(self._models, clip, hole))
