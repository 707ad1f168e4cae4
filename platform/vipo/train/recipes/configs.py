"""The recipes' config classes, in a module that imports no model code.

``vipo train`` / ``vipo tune`` validate a config here and report a wrong key or value in a few seconds: the recipe
modules import diffusers and peft (~30 s on a small machine) and are imported only once the config is valid. Each
recipe module re-exports its config class (``Stage3Recipe.config_class`` is :class:`Stage3Config`);
:data:`RECIPE_CONFIGS` maps a config's ``recipe:`` value to its class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from vipo.config import Config, ExistingPath
from vipo.data.datasets import DPODataConfig, FinetuneDataConfig, VaeDataConfig
from vipo.data.propainter import ProPainterDataConfig
from vipo.losses.config import DPOLossConfig, RegionRegDPOLossConfig
from vipo.losses.propainter import FlowCompletionLossConfig, InpaintingLossConfig
from vipo.losses.vgg import VGGLossConfig
from vipo.train.config import (
    DiffuEraserModelSettings,
    GuardSettings,
    OptimSettings,
    TrainConfig,
    ValidationSettings,
)

__all__ = [
    "DiscriminatorSettings",
    "FinetuneTrainConfig",
    "FlowCompletionConfig",
    "LATENT_FACTOR",
    "LoRASettings",
    "ProPainterLossSettings",
    "ProPainterModelSettings",
    "ProPainterRecipeConfig",
    "ProPainterTrainConfig",
    "ProgressiveSettings",
    "RECIPE_CONFIGS",
    "ReferenceSettings",
    "Stage1Config",
    "Stage2Config",
    "Stage3Config",
    "Stage3ModelSettings",
    "TuningSettings",
    "WanVaeConfig",
    "WanVaeLossConfig",
    "WanVaeModelSettings",
]


# -- DiffuEraser stages 1-3 --------------------------------------------------------------------------------------

class FinetuneTrainConfig(TrainConfig):
    """Stages 1 and 2: DiffuEraser weights and on-the-fly masked clips (each stage adds its ``recipe:``)."""

    model: DiffuEraserModelSettings
    data: FinetuneDataConfig


class Stage1Config(FinetuneTrainConfig):
    recipe: Literal["stage1"] = "stage1"

    @model_validator(mode="before")
    @classmethod
    def _stage1_nframes(cls, data: Any) -> Any:
        # Stage 1 trains on 10-frame clips unless the config says otherwise (the data default is stage 2's 22).
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            data["data"].setdefault("clip", {})
            if isinstance(data["data"]["clip"], dict):
                data["data"]["clip"].setdefault("nframes", 10)
        return data


class Stage2Config(FinetuneTrainConfig):
    recipe: Literal["stage2"] = "stage2"


def _check_export_folder(path: Path, what: str, need_brushnet: bool) -> None:
    if any(path.glob("checkpoint-*")):
        raise ValueError(f"{what} {path} is a training run folder; export it first (vipo export {path}) and "
                         "point to the export folder")
    needed = ("unet_main", "brushnet") if need_brushnet else ("unet_main",)
    missing = [name for name in needed if not (path / name / "config.json").is_file()]
    if missing:
        raise ValueError(f"{what} {path} lacks {', '.join(f'{m}/' for m in missing)}: expected an export folder "
                         "(vipo export of a stage-1/2 run, or the layout's diffuEraser/ folder)")


class Stage3ModelSettings(DiffuEraserModelSettings):
    """Which DiffuEraser model stage 3 tunes and where it starts.

    ``stage``: 2 tunes the video model (``UNetMotionModel``), 1 the image model (2-D UNet; export it with
    ``vipo export --compose <stage-2 run>`` for the DPO-stage-1 + SFT-stage-2 hybrid). ``parent``: an export
    folder with ``unet_main/`` and ``brushnet/`` (a 2-D ``unet_main`` becomes a motion UNet with the layout's
    AnimateDiff adapter for stage 2); default, stage 2 only: the layout's released ``diffuEraser/`` folders.
    """

    stage: Literal[1, 2] = 2
    parent: ExistingPath | None = None

    @model_validator(mode="after")
    def _parent_usable(self) -> "Stage3ModelSettings":
        if self.pretrained_stage1_path is not None:
            raise ValueError("pretrained_stage1_path is a stage-1/2 setting; stage 3 starts from model.parent")
        if self.parent is not None:
            _check_export_folder(self.parent, "model.parent", need_brushnet=True)
        elif self.stage == 1:
            raise ValueError("model.stage 1 needs model.parent: a stage-1 export folder (2-D unet_main/ + brushnet/)")
        return self


class LoRASettings(Config):
    """peft LoRA on the spatial attention projections; alpha/rank scales the update (32/16 = 2)."""

    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)


class TuningSettings(Config):
    scope: Literal["lora", "full"] = "lora"
    lora: LoRASettings = LoRASettings()


class ReferenceSettings(Config):
    """``path``: an export folder whose ``unet_main/`` (and ``brushnet/``, if present) is the reference instead of
    the starting weights. ``offload``: keep a separate reference on CPU, moved to the device only for its pass."""

    path: ExistingPath | None = None
    offload: bool = False

    @model_validator(mode="after")
    def _usable(self) -> "ReferenceSettings":
        if self.path is not None:
            _check_export_folder(self.path, "reference.path", need_brushnet=False)
        return self


LATENT_FACTOR = 8


class Stage3Config(TrainConfig):
    recipe: Literal["stage3"] = "stage3"
    model: Stage3ModelSettings
    tuning: TuningSettings = TuningSettings()
    reference: ReferenceSettings = ReferenceSettings()
    loss: DPOLossConfig = RegionRegDPOLossConfig()
    data: DPODataConfig
    noise: Literal["forward", "inversion"] = "forward"
    """``forward``: one ε ~ N(0, I) per pair (Diffusion-DPO); ``inversion``: the ablation of the module docstring."""
    inversion_steps: int = Field(default=10, ge=1)
    """DDIM steps from 0 to the pair's t for ``noise: inversion`` (reference passes per training step)."""

    @model_validator(mode="before")
    @classmethod
    def _latent_regions(cls, data: Any) -> Any:
        # The loss compares latents, so its regions are at latent resolution unless the config says otherwise.
        if isinstance(data, dict) and isinstance(data.get("data"), dict):
            data["data"].setdefault("region_scale", LATENT_FACTOR)
        return data

    @model_validator(mode="after")
    def _consistent_stage3(self) -> "Stage3Config":
        if self.data.region_scale != LATENT_FACTOR:
            raise ValueError(f"data.region_scale must be {LATENT_FACTOR}: the DPO loss takes regions at latent "
                             "resolution")
        if self.reference.offload and self.tuning.scope == "lora" and self.reference.path is None:
            raise ValueError("reference.offload needs a separate reference (tuning.scope: full or reference.path); "
                             "the LoRA reference is the policy itself")
        if self.validation.videos:
            raise ValueError("stage 3 validates on the first validation.num_videos preference clips; "
                             "validation.videos is not supported")
        return self


# -- ProPainter: flow completion and the main network ---------------------------------------------------------

class ProPainterModelSettings(Config):
    """Where the released networks come from. ``weights_dir`` holds ``raft-things.pth``,
    ``recurrent_flow_completion.pth`` and ``ProPainter.pth`` (the inference layout); ``random_weights_seed``
    (demo and tests only) builds them with random weights instead — runs then say so in their outputs."""

    weights_dir: ExistingPath | None = None
    random_weights_seed: int | None = Field(default=None, ge=0)
    flow_completion_path: ExistingPath | None = None
    """A ``recurrent_flow_completion.pth`` to use instead of ``weights_dir``'s (e.g. a ``flowcomp`` export)."""
    init: Literal["scratch", "released"] = "scratch"
    """The trained network starts from random init (upstream trains from scratch) or the released weights."""
    raft_iterations: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> "ProPainterModelSettings":
        if (self.weights_dir is None) == (self.random_weights_seed is None):
            raise ValueError("give exactly one of weights_dir (released .pth files) and random_weights_seed (demo)")
        return self


class ProgressiveSettings(Config):
    """Progressive resolution: train at ``start_size`` and grow linearly to ``end_size`` (both (height, width)),
    one stage per entry of ``grow_steps``; null ``start_size`` trains at ``data.size`` throughout."""

    start_size: tuple[PositiveInt, PositiveInt] | None = None
    end_size: tuple[PositiveInt, PositiveInt] | None = None
    grow_steps: list[int] = Field(default_factory=list)

    def size_at(self, step: int, data_size: tuple[int, int]) -> tuple[int, int]:
        """Training size at optimiser step ``step`` (multiples of 8)."""
        if self.start_size is None:
            return tuple(data_size)
        end = self.end_size or data_size
        stages = len(self.grow_steps)
        reached = sum(step >= s for s in self.grow_steps)
        fraction = reached / stages if stages else 1.0
        return tuple(int(round((a + (b - a) * fraction) / 8)) * 8 for a, b in zip(self.start_size, end))


class ProPainterTrainConfig(TrainConfig):
    """Base of both recipes' configs: the model block, ProPainter clips and progressive resolution."""

    model: ProPainterModelSettings
    data: ProPainterDataConfig
    progressive: ProgressiveSettings = ProgressiveSettings()
    validation: ValidationSettings = ValidationSettings()


class FlowCompletionConfig(ProPainterTrainConfig):
    recipe: Literal["flowcomp"] = "flowcomp"
    loss: FlowCompletionLossConfig = FlowCompletionLossConfig()


class ProPainterLossSettings(InpaintingLossConfig):
    vgg: VGGLossConfig = VGGLossConfig()


class DiscriminatorSettings(Config):
    """The discriminator's optimiser (upstream: the generator's Adam settings and rate)."""

    optim: OptimSettings = Field(default_factory=lambda: OptimSettings(lr=1e-4, betas=(0.0, 0.99), weight_decay=0.0))


class ProPainterRecipeConfig(ProPainterTrainConfig):
    recipe: Literal["propainter"] = "propainter"
    loss: ProPainterLossSettings = ProPainterLossSettings()
    discriminator: DiscriminatorSettings = DiscriminatorSettings()


# -- Wan2.1 VAE ---------------------------------------------------------------------------------------------------

class WanVaeModelSettings(Config):
    """``weights``: a diffusers VAE folder or the original ``Wan2.1_VAE.pth`` (then ``config_dir``: a folder with
    the diffusers ``config.json``); null: the tiny random VAE drawn from ``tiny_seed`` (demo, tests)."""

    weights: ExistingPath | None = None
    config_dir: ExistingPath | None = None
    tiny_seed: int = Field(default=0, ge=0)
    gradient_checkpointing: bool = False
    decoder_only: bool = False
    encoder_lr_scale: float = Field(default=0.1, gt=0)
    ema_decay: float = Field(default=0.9999, ge=0, lt=1)


class WanVaeLossConfig(Config):
    """Seed-004 weights. ``lpips_backbone``: torchvision's VGG-16 state_dict (default: the torch hub cache's
    ``vgg16-397923af.pth``); ``allow_random_lpips`` lets demos run with a random trunk (then not LPIPS; the run
    says so in its tags and logs)."""

    l1: float = Field(default=1.0, ge=0)
    edge: float = Field(default=0.5, ge=0)
    lpips: float = Field(default=0.1, ge=0)
    lpips_start: int = Field(default=200, ge=0)
    lpips_end: int = Field(default=500, ge=0)
    kl: float = Field(default=1e-6, ge=0)
    kl_start: int = Field(default=500, ge=0)
    kl_end: int = Field(default=1000, ge=0)
    prox: float = Field(default=1e-4, ge=0)
    lpips_backbone: ExistingPath | None = None
    allow_random_lpips: bool = False

    @model_validator(mode="after")
    def _ramps_forward(self) -> "WanVaeLossConfig":
        for name in ("lpips", "kl"):
            if getattr(self, f"{name}_end") < getattr(self, f"{name}_start"):
                raise ValueError(f"loss.{name}_end must be >= loss.{name}_start")
        return self


class WanVaeConfig(TrainConfig):
    recipe: Literal["wan_vae"] = "wan_vae"
    model: WanVaeModelSettings = WanVaeModelSettings()
    loss: WanVaeLossConfig = WanVaeLossConfig()
    data: VaeDataConfig
    optim: OptimSettings = OptimSettings(lr=1e-5, lr_scheduler="cosine", warmup_steps=200, max_steps=5000,
                                         max_grad_norm=0.5)
    guard: GuardSettings = GuardSettings(spike_factor=5.0)


RECIPE_CONFIGS: dict[str, type[TrainConfig]] = {
    "flowcomp": FlowCompletionConfig,
    "propainter": ProPainterRecipeConfig,
    "stage1": Stage1Config,
    "stage2": Stage2Config,
    "stage3": Stage3Config,
    "wan_vae": WanVaeConfig,
}
