"""Hallucination scorers: per clip → a score and a label (hallucinated or not); the rate is the share of labels.

A scorer is any object with ``setup(device)`` and ``__call__(frames, hole, composite, prior) → HallucinationScore``
(:class:`HallucinationScorer`); :data:`SCORERS` maps a config ``kind`` to its class. Two ship:

- ``prior_difference`` (default, detector-free): the share of hole pixels whose filled colour differs from the
  method's propagated prior (ProPainter's output, which DiffuEraser is conditioned on) by more than
  ``pixel_threshold``. Propagation only moves content that is visible elsewhere in the clip, so what a diffusion
  fill puts far from it has no source in the video: it was invented. The threshold sits above ProPainter's blur
  (a sharper copy of the same background moves pixels by a few levels, not by ``0.15``). It needs no extra
  weights, is deterministic and uses the same reference for every DiffuEraser-family method on a clip; methods
  without a prior (ProPainter itself) get NaN. Limitation: large legitimate corrections of a wrong prior count too.
- ``vlm`` (off by default): a local vision-language model (transformers, given by path) is shown a frame with the
  hole outlined and asked ``prompt``; the score is its probability of answering yes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Protocol

import numpy as np
import torch
from pydantic import Field

from vipo.config import Config, ExistingPath

__all__ = ["HallucinationConfig", "HallucinationScore", "HallucinationScorer", "PriorDifferenceConfig",
           "PriorDifferenceScorer", "SCORERS", "VlmConfig", "VlmScorer", "build_hallucination_scorer",
           "model_identity"]


@dataclass(frozen=True)
class HallucinationScore:
    """``score`` in [0, 1] (NaN when the clip cannot be judged) and ``label``: True = hallucinated."""

    score: float
    label: bool


class HallucinationScorer(Protocol):
    def setup(self, device: torch.device) -> None: ...

    def __call__(self, frames: np.ndarray, hole: np.ndarray, composite: np.ndarray,
                 prior: np.ndarray | None) -> HallucinationScore:
        """uint8 ``(F, H, W, 3)`` ground truth, bool ``(F, H, W)`` hole, the method's hard composite and its prior
        (uint8 ``(F, H, W, 3)`` or None)."""


class PriorDifferenceConfig(Config):
    kind: Literal["prior_difference"] = "prior_difference"
    pixel_threshold: float = Field(default=0.15, gt=0, lt=1)
    """A hole pixel counts when its largest channel difference to the prior exceeds this (colour range 0-1)."""
    share_threshold: float = Field(default=0.1, gt=0, lt=1)
    """A clip is labelled hallucinated when more than this share of its hole pixels count."""


class VlmConfig(Config):
    kind: Literal["vlm"]
    model_path: ExistingPath
    """A local transformers image-text-to-text model folder (processor files included)."""
    prompt: str = ("The region outlined in red was filled in by a video inpainting model. Does it contain an "
                   "object or structure that does not belong to the scene? Answer yes or no.")
    frames: int = Field(default=3, ge=1)
    """Frames shown per clip (evenly spaced); the score is their mean."""
    yes_threshold: float = Field(default=0.5, gt=0, lt=1)


HallucinationConfig = Annotated[PriorDifferenceConfig | VlmConfig, Field(discriminator="kind")]


class PriorDifferenceScorer:
    def __init__(self, config: PriorDifferenceConfig):
        self.config = config

    def setup(self, device: torch.device) -> None:
        """Nothing to load: the comparison is a few array operations."""

    def __call__(self, frames, hole, composite, prior) -> HallucinationScore:
        if prior is None or not hole.any():
            return HallucinationScore(math.nan, False)
        difference = np.abs(composite.astype(np.int16) - prior.astype(np.int16)).max(axis=-1)
        share = float((difference[hole] > self.config.pixel_threshold * 255).mean())
        return HallucinationScore(share, share > self.config.share_threshold)


class VlmScorer:
    """Asks a local VLM whether the outlined fill holds something that does not belong; P(yes) is the score."""

    def __init__(self, config: VlmConfig):
        self.config = config

    def setup(self, device: torch.device) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = device
        self.processor = AutoProcessor.from_pretrained(self.config.model_path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(self.config.model_path, local_files_only=True)
        self.model.to(device).eval()
        tokenizer = self.processor.tokenizer
        self.answer_ids = [tokenizer.encode(word, add_special_tokens=False)[0] for word in ("yes", "no")]

    @torch.no_grad()
    def _p_yes(self, image: np.ndarray) -> float:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.config.prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=[image], text=text, return_tensors="pt").to(self.device)
        logits = self.model(**inputs).logits[0, -1, self.answer_ids]
        return float(torch.softmax(logits.float(), dim=0)[0])

    def __call__(self, frames, hole, composite, prior) -> HallucinationScore:
        scored = [i for i in range(len(hole)) if hole[i].any()]
        if not scored:
            return HallucinationScore(math.nan, False)
        picks = [scored[round(i)] for i in np.linspace(0, len(scored) - 1, min(self.config.frames, len(scored)))]
        score = float(np.mean([self._p_yes(_outline(composite[i], hole[i])) for i in picks]))
        return HallucinationScore(score, score > self.config.yes_threshold)


def _outline(frame: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The frame with the hole's edge drawn in red, so the model knows where to look."""
    import cv2

    edge = cv2.morphologyEx(hole.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    outlined = frame.copy()
    outlined[edge] = (255, 0, 0)
    return outlined


SCORERS: dict[str, type] = {"prior_difference": PriorDifferenceScorer, "vlm": VlmScorer}


def build_hallucination_scorer(config: PriorDifferenceConfig | VlmConfig) -> HallucinationScorer:
    return SCORERS[config.kind](config)


def model_identity(config: PriorDifferenceConfig | VlmConfig) -> dict:
    """What determines the scores, for the scoring hash: the settings, and the VLM folder's name (not its path)."""
    data = config.model_dump(mode="json", exclude={"model_path"})
    if isinstance(config, VlmConfig):
        data["model"] = Path(config.model_path).name
    return data
