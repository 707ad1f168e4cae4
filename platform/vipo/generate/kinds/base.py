"""The negative-kind plugin interface: a kind is a config class that knows which models it needs and how to make
one negative of a clip.

A kind's fields are its config (validated by pydantic, chosen in YAML by its ``kind:`` tag); ``setup(models)``
hands it the actor's loaded models once; ``make(clip, hole, seed)`` returns the model's raw output frames. A new
model (CoCoCo, MiniMax-Remover, VideoPainter, ...) is one new file with one class registered here, plus a loader
in :mod:`vipo.generate.models` — the stages, scoring and shards do not change.
"""

from __future__ import annotations

import hashlib
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, TypeVar

import numpy as np
from pydantic import Field, PrivateAttr, field_validator

from vipo.config import Config

__all__ = ["KIND_REGISTRY", "Clip", "KindOutput", "NegativeKind", "propainter_fill", "register_kind"]

KIND_REGISTRY: dict[str, type["NegativeKind"]] = {}
"""Kind tag → class. Filled by :func:`register_kind`; the config's ``kinds:`` union is built from it."""

K = TypeVar("K", bound=type["NegativeKind"])


def register_kind(cls: K) -> K:
    """Class decorator: make a kind selectable as ``kind: <tag>`` in generation configs."""
    tag = cls.model_fields["kind"].default
    if tag in KIND_REGISTRY:
        raise ValueError(f"negative kind {tag!r} registered twice ({KIND_REGISTRY[tag].__name__}, {cls.__name__})")
    KIND_REGISTRY[tag] = cls
    return cls


@dataclass
class Clip:
    """One ground-truth clip inside an actor, with a memo for work that several kinds share.

    ``frames``: uint8 (F,H,W,3) RGB. ``shared`` runs a computation once per key (e.g. ProPainter on one hole,
    which is both the blur negative and DiffuEraser's prior) and books its time under the key's name in
    ``shared_seconds``, so per-kind timings do not charge it to whichever kind happened to run first.
    """

    clip_id: str
    frames: np.ndarray
    _memo: dict = field(default_factory=dict, repr=False)
    shared_seconds: dict[str, float] = field(default_factory=dict)

    def shared(self, name: str, hole: np.ndarray, compute: Callable[[], np.ndarray]) -> np.ndarray:
        key = (name, hashlib.blake2b(np.packbits(hole).tobytes(), digest_size=16).digest())
        if key not in self._memo:
            start = time.perf_counter()
            self._memo[key] = compute()
            self.shared_seconds[name] = self.shared_seconds.get(name, 0.0) + time.perf_counter() - start
        return self._memo[key]

    def shared_total(self) -> float:
        return sum(self.shared_seconds.values())


@dataclass
class KindOutput:
    """A kind's result for one (hole, seed): ``frames`` uint8 (F,H,W,3), the model's raw output (known pixels
    not pasted back); ``prior`` names the prior it was conditioned on (``none`` if it had none); ``meta`` is kept
    in the row (JSON), e.g. the flicker seams."""

    frames: np.ndarray
    prior: str = "none"
    meta: dict[str, Any] = field(default_factory=dict)


class NegativeKind(Config):
    """Base of every negative kind. Subclasses set ``kind: Literal["<tag>"] = "<tag>"``, ``models`` and ``make``.

    ``name`` tells two configured instances of one kind apart (default: the tag). ``seeds`` lists the candidate
    seeds: each hole gets one candidate per seed, the per-candidate seed being derived from (run seed, clip id,
    name, this value), so candidates differ across clips and reruns reproduce them.
    """

    kind: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    seeds: list[int] = Field(default=[0], min_length=1)

    models: ClassVar[tuple[str, ...]] = ()
    """Names of the models this kind needs (keys of :data:`vipo.generate.models.MODEL_LOADERS`)."""

    _models: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds}")
        return seeds

    def required_models(self) -> tuple[str, ...]:
        """The models this configured instance needs (the class's ``models`` unless a knob changes them)."""
        return self.models

    @property
    def label(self) -> str:
        """The kind's name in rows, manifests and summaries."""
        return self.name or self.kind

    def setup(self, models: dict[str, Any]) -> None:
        """Receive the actor's loaded models (``name → pipeline``); called once per actor, before ``make``."""
        missing = [name for name in self.required_models() if name not in models]
        if missing:
            raise ValueError(f"kind {self.label!r} needs models {missing}, the stage loaded {sorted(models)}")
        self._models = {name: models[name] for name in self.required_models()}

    @abstractmethod
    def make(self, clip: Clip, hole: np.ndarray, seed: int) -> KindOutput:
        """One negative of ``clip`` for ``hole`` (bool (F,H,W), True = hole) with candidate ``seed``."""


def propainter_fill(models: dict[str, Any], clip: Clip, hole: np.ndarray) -> np.ndarray:
    """ProPainter's completion of ``clip`` for ``hole`` → uint8 (F,H,W,3), computed once per (clip, hole).

    It is the blur negative and the prior of every DiffuEraser kind that uses one.
    """
    return clip.shared("propainter", hole, lambda: models["propainter"](clip.frames, hole))
