"""``flicker``: DiffuEraser on a clip cut into segments, each inpainted independently with its own seed and
spliced back in time (the pipeline's per-segment seeds) — the temporal-discontinuity loser.

Segments are ``numpy.array_split`` of the frames into ``num_segments`` (as the pipeline cuts them): for 22
frames and 3 segments, frames 0-7, 8-14 and 15-21. Within a segment the content is temporally coherent; at each
seam — the first frame of every segment after the first — the content jumps, because neither the noise nor the
temporal attention crosses it. The row's ``meta`` records ``{"seams": [8, 15], "segment_seeds": [...]}``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from vipo.generate.kinds.base import Clip, KindOutput, NegativeKind, propainter_fill, register_kind

__all__ = ["FlickerKind", "segment_seams"]


def segment_seams(num_frames: int, num_segments: int) -> list[int]:
    """First frame of every segment but the first, for frames split like ``numpy.array_split``."""
    return [int(part[0]) for part in np.array_split(np.arange(num_frames), num_segments)[1:]]


@register_kind
class FlickerKind(NegativeKind):
    kind: Literal["flicker"] = "flicker"
    models: ClassVar[tuple[str, ...]] = ("propainter", "diffueraser")
    num_segments: int = Field(default=3, ge=2)
    """Segments per clip (the seed's v0 data spliced every 8 frames: 3 segments of a 22-frame clip)."""
    use_prior: bool = True
    """Condition every segment on the ProPainter prior (segments then differ in texture, not in layout)."""
    options: dict[str, Any] = {}
    """Extra keyword arguments of the DiffuEraser pipeline call (e.g. ``num_inference_steps``)."""

    def required_models(self) -> tuple[str, ...]:
        return self.models if self.use_prior else ("diffueraser",)

    def make(self, clip: Clip, hole: np.ndarray, seed: int) -> KindOutput:
        if len(clip.frames) < self.num_segments:
            raise ValueError(f"flicker: {len(clip.frames)} frames cannot make {self.num_segments} segments")
        prior = propainter_fill(self._models, clip, hole) if self.use_prior else None
        # Consecutive integers from the candidate seed: distinct per segment, reproducible per candidate.
        segment_seeds = [(seed + i) % 2**32 for i in range(self.num_segments)]
        output = self._models["diffueraser"](clip.frames, hole, prior=prior, seed=segment_seeds, **self.options)
        return KindOutput(output.raw_frames, prior="propainter" if self.use_prior else "none",
                          meta={"seams": segment_seams(len(clip.frames), self.num_segments),
                                "segment_seeds": segment_seeds})
