"""Negative kinds, one file each, selected in YAML by ``kind:``. Importing this package registers them all."""

from typing import Annotated, Union

from pydantic import Field

from vipo.generate.kinds.base import KIND_REGISTRY, Clip, KindOutput, NegativeKind, propainter_fill, register_kind
from vipo.generate.kinds.blur import BlurKind
from vipo.generate.kinds.diffueraser import DiffuEraserKind
from vipo.generate.kinds.flicker import FlickerKind, segment_seams
from vipo.generate.kinds.hallucination import HallucinationKind

KindConfig = Annotated[Union[tuple(KIND_REGISTRY.values())], Field(discriminator="kind")]
"""One configured negative kind; the ``kind`` tag picks the class from :data:`KIND_REGISTRY`."""

__all__ = [
    "KIND_REGISTRY",
    "BlurKind",
    "Clip",
    "DiffuEraserKind",
    "FlickerKind",
    "HallucinationKind",
    "KindConfig",
    "KindOutput",
    "NegativeKind",
    "propainter_fill",
    "register_kind",
    "segment_seams",
]
