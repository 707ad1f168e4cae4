"""The ``vipo generate`` config: sources, clip sampling, holes, negative kinds, models, stages, selection.

A pipeline is a list of stages (model groups): each stage is one Ray actor pool whose actors load the stage's
models once and make the stage's kinds; the YAML lists them, nothing is chosen by ``if``. Without ``stages`` one
stage makes every kind (ProPainter runs once per hole and is shared by ``blur`` and the DiffuEraser kinds' prior,
so kinds that need it belong in the same stage).
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from vipo.config import Config, JobConfig, dump_config, validate_config
from vipo.data.images import FrameCodec
from vipo.data.sampling import ClipSamplingConfig
from vipo.data.sources import SourceConfig
from vipo.generate.candidates import QualityBand, QualityGate
from vipo.generate.kinds import KindConfig
from vipo.generate.models import MODEL_LOADERS, MODEL_OPTIONS, ModelSpec
from vipo.masks import MovingMaskConfig

__all__ = ["CONTENT_FIELDS", "GenerateConfig", "StageConfig", "WriterConfig"]

CONTENT_FIELDS = frozenset({
    "seed", "sources", "sampling", "max_videos", "clips_per_video", "masks_per_clip", "masks", "kinds", "models",
    "quality_band", "quality_gate", "frame_codec", "jpeg_quality",
})
"""Fields that decide the rows' content; resources, pool sizes and tracking may change between resumes."""


class StageConfig(Config):
    """One model group = one actor pool: which kinds its actors make and what each actor gets."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kinds: list[str] = Field(min_length=1)
    """Names (``name`` or ``kind``) of the configured kinds this stage makes."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per actor; fractional packs several actors on one GPU (e.g. 0.5)."""
    num_cpus: float = Field(default=1.0, gt=0)
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per actor (e.g. ``{"a100": 1}`` to pin the pool to such nodes)."""
    min_size: int = Field(default=1, ge=1)
    max_size: int = Field(default=1, ge=1)
    """The pool autoscales between ``min_size`` and ``max_size`` actors as the cluster has room and the stage has
    work (one actor per GPU is the usual upper bound); equal bounds give a fixed pool."""
    batch_size: int = Field(default=1, ge=1)
    """Clips per actor call; keep it small (1-4): each clip is tens of MB of frames inside the actor."""

    @model_validator(mode="after")
    def _bounds(self) -> "StageConfig":
        if self.min_size > self.max_size:
            raise ValueError(f"stages.{self.name}: min_size {self.min_size} > max_size {self.max_size}")
        return self


class WriterConfig(Config):
    """The write step after the stages: Ray tasks that encode nothing, only write rows into shards."""

    num_cpus: float = Field(default=0.25, gt=0)
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources per write task (e.g. to keep writes on the nodes that mount ``shard_storage``)."""


class GenerateConfig(JobConfig):
    """Preference-data generation. Shards and manifest go to ``<output_dir>/shards``."""

    sources: list[SourceConfig] = Field(min_length=1)
    sampling: ClipSamplingConfig = ClipSamplingConfig()
    """Window length ``nframes`` (22), ``resolution``, fps target and reversal probability."""
    max_videos: int | None = Field(default=None, ge=1)
    clips_per_video: int = Field(default=1, ge=1)
    masks_per_clip: int = Field(default=1, ge=1)
    """K: random moving holes per clip window, each a sample (row) of its own."""
    masks: MovingMaskConfig = MovingMaskConfig()
    kinds: list[KindConfig] = Field(min_length=1)
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    """Model name (``propainter``, ``diffueraser``) → weights; every model a kind needs must be here."""
    stages: list[StageConfig] = Field(default_factory=list)
    quality_band: QualityBand | None = None
    quality_gate: QualityGate = QualityGate()
    max_error_fraction: float = Field(default=0.1, ge=0, le=1)
    """The run stops once bad-input clips exceed this fraction of all planned clips."""
    frame_codec: FrameCodec = "png"
    """Frames in shards: ``png`` (lossless), ``zstd`` (lossless raw + Zstandard: ~1.6x PNG's size, decodes ~10x
    faster), ``jpeg`` (lossy, ``jpeg_quality``); masks are always PNG."""
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    rows_per_shard: int = Field(default=64, ge=1)
    """Target rows per shard; a shard holds whole clip windows (``masks_per_clip`` rows each), so it may hold up
    to ``masks_per_clip - 1`` rows more."""
    shard_storage: str | None = None
    """Where the workers write shard files: a path every node can reach (a shared mount) or a pyarrow filesystem
    URI (``s3://bucket/prefix``, ``gs://...``). Default: ``<output_dir>/shards``, next to the manifest."""
    writer: WriterConfig = WriterConfig()
    lease_stale_seconds: float = Field(default=120.0, gt=0)
    """A lease on the output folder whose heartbeat is older than this is taken over (its holder is dead)."""
    contact_sheet_clips: int = Field(default=4, ge=0)
    executor: Literal["ray", "local"] = "ray"
    """``ray``: actor pools on Ray Data; ``local``: the same stages in this process, one clip at a time."""

    @model_validator(mode="after")
    def _consistent(self) -> "GenerateConfig":
        labels = [kind.label for kind in self.kinds]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"kinds: names {duplicates} appear twice; give each instance a distinct `name`")
        unknown = sorted(set(self.models) - set(MODEL_LOADERS))
        if unknown:
            raise ValueError(f"models: unknown model(s) {unknown}; known: {sorted(MODEL_LOADERS)}")
        for name, spec in self.models.items():  # a typo here would otherwise surface in every actor
            validate_config(MODEL_OPTIONS[name], spec.options, f"models.{name}.options")
        for kind in self.kinds:
            missing = [m for m in kind.required_models() if m not in self.models]
            if missing:
                raise ValueError(f"kinds: {kind.label!r} needs models.{missing[0]}.weights")
        if self.stages:
            names = [stage.name for stage in self.stages]
            if len(set(names)) != len(names):
                raise ValueError(f"stages: stage names must be distinct, got {names}")
            assigned = [label for stage in self.stages for label in stage.kinds]
            for label in assigned:
                if label not in labels:
                    raise ValueError(f"stages: unknown kind {label!r}; configured kinds are {labels}")
            if sorted(assigned) != sorted(labels):
                raise ValueError(f"stages: each kind must be in exactly one stage; kinds {labels}, stages list "
                                 f"{assigned}")
        return self

    def stage_configs(self) -> list[StageConfig]:
        """The configured stages, or one CPU stage making every kind."""
        return self.stages or [StageConfig(name="generate", kinds=[kind.label for kind in self.kinds])]

    def content_hash(self) -> str:
        """Hash of the fields that decide row content (:data:`CONTENT_FIELDS`): the rows' ``config_hash``, and
        what a resume must match."""
        content = {key: value for key, value in dump_config(self).items() if key in CONTENT_FIELDS}
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
