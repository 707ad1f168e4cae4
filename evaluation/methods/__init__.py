"""Evaluation methods, one registered config class per file: ``propainter``, ``diffueraser`` (stage-2 weights),
``diffueraser+lora`` (a stage-3 export or a peft adapter), ``checkpoint`` (any exported folder) and
``propainter_checkpoint`` (a ProPainter training checkpoint).

``MethodSpec`` is the config union of every registered kind, chosen by the ``kind:`` field.
"""

from typing import Annotated, Union

from pydantic import Field

from evaluation.methods.base import (
    METHOD_REGISTRY,
    ActorConfig,
    Inpaint,
    MethodConfig,
    content_hash,
    register_method,
)
from evaluation.methods.checkpoint import CheckpointMethod
from evaluation.methods.diffueraser import DiffuEraserMethod, export_model_paths
from evaluation.methods.lora import DiffuEraserLoraMethod, apply_lora, find_adapter
from evaluation.methods.propainter import ProPainterMethod
from evaluation.methods.propainter_checkpoint import ProPainterCheckpointMethod

MethodSpec = Annotated[Union[tuple(METHOD_REGISTRY.values())], Field(discriminator="kind")]  # type: ignore[valid-type]
"""A method config; ``kind`` picks the class from :data:`METHOD_REGISTRY`."""

__all__ = [
    "METHOD_REGISTRY",
    "ActorConfig",
    "CheckpointMethod",
    "DiffuEraserLoraMethod",
    "DiffuEraserMethod",
    "Inpaint",
    "MethodConfig",
    "MethodSpec",
    "ProPainterCheckpointMethod",
    "ProPainterMethod",
    "apply_lora",
    "content_hash",
    "export_model_paths",
    "find_adapter",
    "register_method",
]
