"""``hallucination``: DiffuEraser from pure noise (``prior=None``). Without ProPainter's propagated pixels to
start from, the diffusion model invents content the video never showed — the semantic-hallucination loser."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from vipo.generate.kinds.base import Clip, KindOutput, NegativeKind, register_kind

__all__ = ["HallucinationKind"]


@register_kind
class HallucinationKind(NegativeKind):
    kind: Literal["hallucination"] = "hallucination"
    models: ClassVar[tuple[str, ...]] = ("diffueraser",)
    options: dict[str, Any] = {}
    """Extra keyword arguments of the DiffuEraser pipeline call (e.g. ``num_inference_steps``)."""

    def make(self, clip: Clip, hole: np.ndarray, seed: int) -> KindOutput:
        output = self._models["diffueraser"](clip.frames, hole, prior=None, seed=seed, **self.options)
        return KindOutput(output.raw_frames)
