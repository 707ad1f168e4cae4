"""Training configs: what every recipe shares, plus the recipe choice.

``TrainConfig`` holds the knobs of the runner (scaling, optimisation, precision, DeepSpeed, checkpointing,
failures, validation cadence). A recipe subclasses it with ``recipe: Literal["<name>"]`` and its own blocks
(``model``, ``data``, ...), so an unknown key is still a one-line error. :func:`load_train_config` reads the
``recipe:`` field first and then validates the whole file against that recipe's config class.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from vipo.config import Config, ExistingPath, JobConfig, load_config, validate_config

__all__ = [
    "CheckpointEvaluationSettings",
    "CheckpointSettings",
    "DeepSpeedSettings",
    "DiffuEraserModelSettings",
    "FailureSettings",
    "GuardSettings",
    "ModelSettings",
    "OptimSettings",
    "ScalingSettings",
    "TrainConfig",
    "ValidationSettings",
    "load_train_config",
    "train_config_from_dict",
]

Precision = Literal["fp32", "bf16", "fp16"]


class ScalingSettings(Config):
    """Ray Train workers. ``num_workers: 0`` is Ray Train's local mode: the launching process trains as the only
    rank (no actors to start; a Tune trial then trains in its own, reusable, process), checkpoints go straight to
    the run folder."""

    num_workers: int = Field(default=2, ge=0)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None


class OptimSettings(Config):
    """AdamW (Adam when ``weight_decay: 0``) + an LR schedule. ``max_steps`` counts optimiser steps (after
    accumulation). ``multistep`` multiplies the rate by ``gamma`` at each of ``milestones`` (torch's MultiStepLR)
    after a linear warm-up from ``warmup_start_lr`` over ``warmup_steps``; the others are diffusers schedules."""

    lr: float = Field(default=5e-6, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=1e-2, ge=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "multistep"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    warmup_start_lr: float = Field(default=0.0, ge=0, description="multistep: the warm-up's first rate.")
    milestones: list[int] = Field(default_factory=list, description="multistep: steps where the rate decays.")
    gamma: float = Field(default=0.1, gt=0, description="multistep: decay factor at each milestone.")
    max_steps: int = Field(default=1000, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="Gradient clipping; null disables it.")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("each beta must be in [0, 1)")
        return betas


class DeepSpeedSettings(Config):
    """DeepSpeed ZeRO on GPU workers; the generated DeepSpeed config comes from these fields only."""

    enabled: bool = False
    zero_stage: int = Field(default=2, ge=1, le=3)
    offload_optimizer: bool = True
    bucket_size: int = Field(default=200_000_000, ge=1_000_000, description="ZeRO reduce/allgather bucket (elements).")


class CheckpointSettings(Config):
    every_n_steps: int = Field(default=500, ge=1)
    keep_last_k: int = Field(default=3, ge=1)


class FailureSettings(Config):
    """``max_failures`` worker-group restarts per launch (-1: unlimited); each resumes from the newest complete
    checkpoint. ``preemption_grace_s``: after SIGTERM, how long the driver waits for the workers to checkpoint at
    their next step boundary before it exits anyway (:mod:`vipo.train.preemption`).

    ``inject_at_step`` is a fault-tolerance drill: the workers crash once when they reach that step (a marker
    in the run folder keeps the relaunch from crashing again), so a cluster's resume path can be checked.
    """

    max_failures: int = Field(default=0, ge=-1)
    preemption_grace_s: float = Field(default=120.0, gt=0)
    inject_at_step: int | None = Field(default=None, ge=1)


class GuardSettings(Config):
    """The step guard (:class:`vipo.train.guard.StepGuard`): which optimiser steps are skipped rather than taken.

    A non-finite loss or gradient norm always skips the step. ``spike_factor`` (null: off) also skips a step whose
    loss exceeds ``spike_factor`` × the mean of the last ``spike_window`` taken steps' losses (seed 004's rule,
    5×), once that many are known and their mean is positive. ``max_consecutive_skips`` skipped steps in a row
    stop the run with an error naming the reasons.
    """

    max_consecutive_skips: int = Field(default=5, ge=1)
    spike_factor: float | None = Field(default=None, gt=1)
    spike_window: int = Field(default=50, ge=1)


class ValidationSettings(Config):
    """Inpaint fixed clips with fixed masks every ``every_n_steps`` (and at the last step); null disables it.

    Clips are the first frames of ``videos`` (video ids or bare names from the training sources; empty: the
    first ``num_videos``), at the training clip size and length; masks are random moving masks drawn from
    ``seed`` (+ the clip's position), identical at every validation. Validation also runs at every checkpoint and
    judges the clips against the start weights' outputs (:mod:`vipo.train.validation`).
    """

    every_n_steps: int | None = Field(default=None, ge=1)
    videos: list[str] = Field(default_factory=list)
    num_videos: int = Field(default=2, ge=1)
    num_inference_steps: int = Field(default=20, ge=1)
    seed: int = Field(default=0, ge=0)
    scoring: dict[str, Any] = Field(
        default_factory=dict,
        description="The scorer's settings: evaluation's ScoringConfig (metrics, LPIPS/RAFT weights). The metrics live "
        "a layer above vipo, so the job that launches the run validates these and injects the scorer.",
    )


class CheckpointEvaluationSettings(Config):
    """Score checkpoints on a benchmark while training runs (off while ``benchmark`` is null).

    Every ``every_n_checkpoints``-th checkpoint (step a multiple of ``checkpointing.every_n_steps`` ×
    ``every_n_checkpoints``) and the last one are exported and scored beside the training, and the training's
    MLflow run gets ``eval/<metric>`` at that step: early checkpoints can score best. ``benchmark``, ``method`` and
    ``scoring`` are evaluation's configs (``BenchmarkConfig``, a method of a kind that loads an export, without its
    export path, and ``ScoringConfig``); they live a layer above vipo, so the ``vipo train`` job validates them and
    runs the evaluation (``evaluation.checkpoints``). The end of training waits at most ``wait_timeout_s`` for
    outstanding evaluations; ``keep_exports: false`` deletes each export once scored.
    """

    benchmark: dict[str, Any] | None = None
    method: dict[str, Any] = Field(default_factory=dict)
    scoring: dict[str, Any] = Field(default_factory=dict)
    every_n_checkpoints: int = Field(default=1, ge=1)
    wait_timeout_s: float = Field(default=3600.0, gt=0)
    keep_exports: bool = True

    @model_validator(mode="after")
    def _method_with_benchmark(self) -> "CheckpointEvaluationSettings":
        if self.benchmark is not None and not self.method:
            raise ValueError("benchmark is set but method is empty; give the method that loads each export (e.g. "
                             "kind: diffueraser+lora and the base weights)")
        return self


class ModelSettings(Config):
    """Switches every diffusers model supports."""

    gradient_checkpointing: bool = False
    attention: Literal["sdpa", "xformers"] = "sdpa"


def _existing(path: Path | None, what: str) -> None:
    if path is not None and not path.exists():
        raise ValueError(f"{what} does not exist: {path}")


class DiffuEraserModelSettings(ModelSettings):
    """Weights in the seed-002 layout (``stable-diffusion-v1-5/``, ``sd-vae-ft-mse/``, ``diffuEraser/``, ...).

    ``pretrained_stage1_path`` is a folder with ``unet_main/`` and ``brushnet/`` (a stage-1 export): stage 1
    starts from it when given, stage 2 builds on it (default: the layout's released ``diffuEraser/`` folders).
    ``tiny_weights_seed`` (demo and tests) lets ``weights_root`` not exist yet: the launcher writes tiny random
    weights there first (``vipo.models.tiny.write_tiny_weights``).
    """

    weights_root: Annotated[Path, AfterValidator(lambda p: Path(p).expanduser().resolve())]
    pretrained_stage1_path: ExistingPath | None = None
    tiny_weights_seed: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _weights_exist(self) -> "DiffuEraserModelSettings":
        if self.tiny_weights_seed is None:
            _existing(self.weights_root, "weights_root")
        return self


def _known_recipe(recipe: str) -> str:
    from vipo.train.recipes import RECIPES

    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    return recipe


RecipeName = Annotated[str, AfterValidator(_known_recipe)]

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class TrainConfig(JobConfig):
    """Runner settings shared by every recipe. ``name`` is the Ray Train run name: ``output_dir/name`` is the
    run folder, and relaunching with the same ``output_dir`` and ``name`` resumes from its latest checkpoint."""

    recipe: RecipeName
    name: str | None = Field(default=None, description="Run name (default: the recipe name); no timestamps.")
    batch_size: int = Field(default=1, ge=1, description="Clips per worker per micro-step.")
    precision: Precision = "fp32"
    log_every_n_steps: int = Field(default=1, ge=1)
    loader_workers: int = Field(default=0, ge=0, description="DataLoader processes per training worker.")
    export_on_finish: bool = Field(
        default=True, description="Write <run>/export/step_N at the end and log it to MLflow as artifact 'model'."
    )
    scaling: ScalingSettings = ScalingSettings()
    optim: OptimSettings = OptimSettings()
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    checkpointing: CheckpointSettings = CheckpointSettings()
    failure: FailureSettings = FailureSettings()
    guard: GuardSettings = GuardSettings()
    validation: ValidationSettings = ValidationSettings()
    evaluation: CheckpointEvaluationSettings = CheckpointEvaluationSettings()

    @model_validator(mode="before")
    @classmethod
    def _data_seed_follows_seed(cls, data: Any) -> Any:
        # One `seed=` override should change everything random, masks and clip windows included.
        field = cls.model_fields.get("data")
        data_fields = getattr(field.annotation, "model_fields", {}) if field else {}
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and "seed" in data_fields:
            data["data"].setdefault("seed", data.get("seed", 0))
        return data

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and not _RUN_NAME.match(name):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names a folder)")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.deepspeed.enabled and not self.scaling.use_gpu:
            raise ValueError("deepspeed.enabled needs scaling.use_gpu: true (the CPU path is plain DDP/gloo)")
        if self.deepspeed.enabled and self.scaling.num_workers == 0:
            raise ValueError("deepspeed.enabled needs scaling.num_workers >= 1 (DeepSpeed runs in Ray Train's process "
                             "group; local mode has none)")
        if self.precision == "fp16" and not self.scaling.use_gpu:
            raise ValueError("precision fp16 needs GPUs; use fp32 or bf16 on CPU")
        return self

    @property
    def run_name(self) -> str:
        return self.name or self.recipe

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_name


class _RecipeChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    recipe: RecipeName


def _config_class(recipe: str) -> type[TrainConfig]:
    from vipo.train.recipes.configs import RECIPE_CONFIGS  # no model code: a bad config fails in seconds

    return RECIPE_CONFIGS[recipe]


def load_train_config(path: str | Path | None, overrides: Iterable[str] = ()) -> TrainConfig:
    """YAML + ``key=value`` overrides → the config class of the file's ``recipe:`` (one-line ConfigError)."""
    overrides = list(overrides)
    choice = load_config(_RecipeChoice, path, overrides)
    return load_config(_config_class(choice.recipe), path, overrides)


def train_config_from_dict(data: dict) -> TrainConfig:
    """Re-validate a dumped config (what Ray ships to workers, what a checkpoint stores)."""
    choice = validate_config(_RecipeChoice, data, "<train config>")
    return validate_config(_config_class(choice.recipe), data, "<train config>")
