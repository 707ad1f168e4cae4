"""What every evaluation method is: a registered config class that loads its model once per actor.

A method's fields are its config (weights, knobs, seed) plus ``actors``, the resources of the actor pool that runs
it; its label is its key in the evaluation config's ``methods:`` mapping. ``load(device)`` builds the model and
returns an :data:`Inpaint` function; the evaluation stage calls it once per actor (:mod:`evaluation.stage`).
Methods never import Ray.

Identity: ``method_hash()`` covers the content of the weight files the method loads (not their paths), every knob
that changes the output (the seed included), the prior's identity and the vipo version — the cache key of its
results. The label and the ``actors`` resources are not part of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import abstractmethod
from pathlib import Path
from typing import Callable, ClassVar, TypeVar

import numpy as np
from pydantic import Field

import vipo
from vipo.config import Config
from vipo.tracking import file_hash

__all__ = ["METHOD_REGISTRY", "ActorConfig", "Inpaint", "MethodConfig", "content_hash", "register_method"]

Inpaint = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]
"""``inpaint(frames, hole, prior) -> prediction``: frames uint8 ``(F, H, W, 3)`` RGB, hole bool ``(F, H, W)``
(True = hole), prior uint8 ``(F, H, W, 3)`` or None → the raw prediction, uint8 ``(F, H, W, 3)``."""


class ActorConfig(Config):
    """The actor pool that runs a method: one model per actor, ``num_gpus`` each (fractions pack several)."""

    num_gpus: float = Field(default=1.0, ge=0)
    num_cpus: float = Field(default=1.0, gt=0)
    pool_size: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1, ge=1)


@functools.cache
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    return file_hash(path)  # size and mtime are part of the cache key: an edited file is hashed again


def content_hash(paths: list[Path]) -> str:
    """sha256 over the files at ``paths`` (folders recursively): relative names and bytes. Missing → error."""
    digest = hashlib.sha256()
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{root}: weights not found")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            stat = file.stat()
            name = file.relative_to(root).as_posix() if root.is_dir() else file.name
            digest.update(f"{name}:{_file_digest(file, stat.st_size, stat.st_mtime_ns)}\n".encode())
    return digest.hexdigest()


class MethodConfig(Config):
    """Base of every method config; subclasses set ``kind`` and register with :func:`register_method`."""

    kind: str
    seed: int = Field(default=0, ge=0)
    """Fixed seed of every clip's sampling: same weights and seed → same output."""
    actors: ActorConfig = ActorConfig()

    weight_fields: ClassVar[tuple[str, ...]] = ()
    """Fields naming weights; the identity holds their content hash instead of their paths."""
    checkpoint_field: ClassVar[str] = "weights"
    """The field naming the weights that make this method what it is (recorded as the run's parent checkpoint)."""

    @property
    def checkpoint_path(self) -> Path:
        return getattr(self, self.checkpoint_field)

    @abstractmethod
    def weight_paths(self) -> list[Path]:
        """The files and folders the method loads (their content is part of its identity)."""

    @abstractmethod
    def load(self, device: str) -> Inpaint:
        """Build the model on ``device`` and return its :data:`Inpaint` function (once per actor)."""

    def prior_method(self) -> "MethodConfig | None":
        """The method whose prediction this one takes as its prior (DiffuEraser's ProPainter), or None."""
        return None

    def notes(self, label: str) -> list[str]:
        """Caveats the report must state about this method's numbers (``label`` names it there)."""
        return []

    def checkpoint_hash(self) -> str:
        """sha256 of the content of the weights this method loads (its own, not its prior's)."""
        return content_hash(self.weight_paths())

    def identity(self) -> dict:
        data = self.model_dump(mode="json", exclude={"actors", *self.weight_fields})
        data["weights_sha256"] = self.checkpoint_hash()
        prior = self.prior_method()
        data["prior"] = prior.identity() if prior is not None else None
        data["vipo_version"] = vipo.__version__
        return data

    def method_hash(self) -> str:
        """16 hex digits of the identity: the results cache key."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


METHOD_REGISTRY: dict[str, type[MethodConfig]] = {}
"""Method kind → config class; the evaluation config's ``methods:`` union is built from it."""

M = TypeVar("M", bound=type[MethodConfig])


def register_method(cls: M) -> M:
    """Class decorator: make a method selectable as ``kind: <tag>`` in evaluation configs."""
    tag = cls.model_fields["kind"].default
    if tag in METHOD_REGISTRY:
        raise ValueError(f"method kind {tag!r} registered twice ({METHOD_REGISTRY[tag].__name__}, {cls.__name__})")
    METHOD_REGISTRY[tag] = cls
    return cls
