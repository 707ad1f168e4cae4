"""``diffueraser``: the on-policy loser — DiffuEraser with the ProPainter prior, as the model being trained
would inpaint, with its own seeds. The research group behind the seeds found the synthetic kinds "too
catastrophic" (implicit accuracy 1 at once) and trained on these hard-but-plausible losers instead, K masks per
clip, filtered by a quality band (the research group's finding: too-bad losers teach nothing)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from vipo.generate.kinds.base import Clip, KindOutput, NegativeKind, propainter_fill, register_kind

__all__ = ["DiffuEraserKind"]


@register_kind
class DiffuEraserKind(NegativeKind):
    kind: Literal["diffueraser"] = "diffueraser"
    models: ClassVar[tuple[str, ...]] = ("propainter", "diffueraser")
    options: dict[str, Any] = {}
    """Extra keyword arguments of the DiffuEraser pipeline call (e.g. ``num_inference_steps``)."""

    def make(self, clip: Clip, hole: np.ndarray, seed: int) -> KindOutput:
        prior = propainter_fill(self._models, clip, hole)
        output = self._models["diffueraser"](clip.frames, hole, prior=prior, seed=seed, **self.options)
        return KindOutput(output.raw_frames, prior="propainter")
