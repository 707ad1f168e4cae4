"""Models a generation actor loads, by name: a loader registry, the weights config, device choice.

A loader turns a :class:`ModelSpec` into a callable pipeline on a device. Kinds ask for models by these names
(``NegativeKind.models``), and each stage (actor class) loads the union its kinds need, once per actor.
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable

from pydantic import Field, model_validator

from vipo.config import Config, ExistingPath, validate_config
from vipo.pipelines.configs import DiffuEraserLoadConfig, ProPainterConfig

__all__ = ["MODEL_LOADERS", "MODEL_OPTIONS", "ModelLoadError", "ModelSpec", "load_models", "pick_device"]


class ModelSpec(Config):
    """Where a model's weights are (or which random ones to use) and how to build it."""

    weights: ExistingPath | None = None
    """Weights folder: ProPainter's ``propainter/`` folder, or DiffuEraser's weights root (seed-002 layout)."""
    random_init: int | None = Field(default=None, ge=0)
    """Instead of ``weights``, for demos and tests: untrained weights drawn from this seed (tiny models where the
    architecture has a tiny config; ProPainter's is fixed). Every actor draws the same weights. Outputs are noise."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the pipeline's constructor (e.g. ProPainter's ``subvideo_length``), checked against
    the model's :data:`MODEL_OPTIONS` when the generation config is validated."""

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.weights is None) == (self.random_init is None):
            raise ValueError("give exactly one of `weights` (a folder) and `random_init` (a seed)")
        return self

    def describe(self) -> str:
        return str(self.weights) if self.weights is not None else f"random weights (seed {self.random_init})"


class ModelLoadError(RuntimeError):
    """A model could not be built from its weights; the message names the model and the path."""


def _load_propainter(spec: ModelSpec, device: str) -> Any:
    from vipo.pipelines.propainter import ProPainterPipeline

    # The job shows one clips-done bar, not one per model call. ProPainter runs here as DiffuEraser's prior (the
    # blur negative reuses that output), so it runs as DiffuEraser does unless the options say otherwise.
    knobs = {"progress": False, "preset": "diffueraser_prior", **spec.options}
    if spec.weights is None:
        return ProPainterPipeline.from_random(device=device, seed=spec.random_init, **knobs)
    return ProPainterPipeline.from_pretrained(spec.weights, device=device, **knobs)


def _load_diffueraser(spec: ModelSpec, device: str) -> Any:
    from vipo.models.tiny import write_tiny_weights
    from vipo.pipelines.diffueraser import DiffuEraserPipeline

    options = validate_config(DiffuEraserLoadConfig, spec.options, "models.diffueraser.options").model_dump()
    if spec.weights is not None:
        pipeline = DiffuEraserPipeline.from_weights(spec.weights, device=device, **options)
    else:
        # Tiny random weights go through the same on-disk layout and loader as real ones; the copy is read fully.
        with tempfile.TemporaryDirectory(prefix="vipo-tiny-diffueraser-") as root:
            write_tiny_weights(root, seed=spec.random_init)
            pipeline = DiffuEraserPipeline.from_weights(root, device=device, **options)
    pipeline.set_progress_bar_config(disable=True)  # the job shows one clips-done bar
    return pipeline


ModelLoader = Callable[[ModelSpec, str], Any]

MODEL_LOADERS: dict[str, ModelLoader] = {
    "propainter": _load_propainter,
    "diffueraser": _load_diffueraser,
}
"""Model name → loader. ``propainter``: ``pipe(frames, hole) -> frames``; ``diffueraser``:
``pipe(frames, hole, prior=None|frames, seed=int, **options)`` → output with ``.raw_frames``."""

MODEL_OPTIONS: dict[str, type[Config]] = {
    "propainter": ProPainterConfig,
    "diffueraser": DiffuEraserLoadConfig,
}
"""Model name → the config its ``options`` must validate into (checked with the job config, before any actor)."""


def pick_device(num_gpus: float) -> str:
    """``cuda`` only when the actor was given a GPU *and* torch sees one: Ray may schedule on logical GPUs."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def load_models(names: list[str], specs: dict[str, ModelSpec], device: str) -> dict[str, Any]:
    """Build each named model on ``device``; a failure raises :class:`ModelLoadError` naming the weights path."""
    models = {}
    for name in names:
        spec = specs[name]
        try:
            models[name] = MODEL_LOADERS[name](spec, device)
        except Exception as err:
            raise ModelLoadError(
                f"cannot load model {name!r} from {spec.describe()}: {type(err).__name__}: {err}"
            ) from err
    return models
