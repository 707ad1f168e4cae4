"""DiffuEraser training pieces shared by the stage 1-3 recipes.

- :func:`load_models`: frozen encoders (VAE, CLIP text encoder, tokenizer, SD1.5 DDPM schedule) and the
  trainable UNet + BrushNet from the seed-002 weights layout, with the precision and switch settings applied.
- :func:`diffusion_inputs`: a ``FinetuneDataset`` batch → clean latents, 5-channel conditioning, text embeddings,
  one timestep per clip (shared by its frames, as upstream trains) and per-frame noise; each clip's randomness
  comes from its own generator (:func:`clip_generators`), so batch 2 draws exactly what two batches of 1 draw.
- :func:`epsilon_loss`: the DDPM ε-prediction MSE of stages 1 and 2.
- :class:`ValidationClips`: fixed clips + fixed masks, inpainted through ``DiffuEraserPipeline`` (judged by
  :class:`vipo.train.validation.ValidationGate`).
- :class:`DiffuEraserRecipe`: the recipe verbs every stage shares (prepare weights, train, validate, cleanup).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UniPCMultistepScheduler
from torch import nn

from vipo.data import BadSample, FinetuneDataset, resize_center_crop
from vipo.masks import random_moving_masks
from vipo.pipelines.diffueraser import DiffuEraserPipeline, build_conditioning, encode_frames
from vipo.train.config import DiffuEraserModelSettings, ModelSettings, TrainConfig, ValidationSettings
from vipo.train.engine import PRECISION_DTYPES, WorkerContext
from vipo.train.recipes.configs import FinetuneTrainConfig
from vipo.train.validation import ClipScorer

__all__ = [
    "DiffuEraserRecipe",
    "FinetuneTrainConfig",
    "DiffusionInputs",
    "FrozenEncoders",
    "apply_model_settings",
    "clip_generators",
    "diffusion_inputs",
    "epsilon_loss",
    "frozen_dtype",
    "load_models",
    "prepare_weights",
    "ValidationClips",
]


@dataclass
class FrozenEncoders:
    """Everything that turns pixels and prompts into model inputs; never trained."""

    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object  # diffusers DDPMScheduler (SD1.5: 1000 steps, scaled-linear betas, epsilon)


@dataclass
class DiffusionInputs:
    """A batch of B clips of F frames, N = B·F, at latent size (h, w) = (H/8, W/8).

    ``latents``: (N, 4, h, w) VAE-scaled clean latents; ``conditioning``: (N, 5, h, w) masked-clip latent + mask
    (1 = known, 0 = hole, nearest-downsampled); ``text``: (B, L, D) prompt embeddings (one row per clip);
    ``timesteps``: (B,) int64, one per clip (shared by its frames); ``noise``: (N, 4, h, w) ε, per frame.
    """

    latents: torch.Tensor
    conditioning: torch.Tensor
    text: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    num_clips: int
    num_frames: int


def prepare_weights(settings: DiffuEraserModelSettings) -> None:
    """Driver side, before workers start: write tiny random weights when the config asks for them (demo, tests)
    and ``weights_root`` does not hold them yet."""
    if settings.tiny_weights_seed is not None and not (settings.weights_root / "diffuEraser").is_dir():
        from vipo.models.tiny import write_tiny_weights

        write_tiny_weights(settings.weights_root, seed=settings.tiny_weights_seed)


def frozen_dtype(cfg: TrainConfig, ctx: WorkerContext) -> torch.dtype:
    """Frozen encoders run in the training precision on GPU and in fp32 on CPU (half precision is slow there)."""
    return PRECISION_DTYPES[cfg.precision] if ctx.device.type == "cuda" else torch.float32


def apply_model_settings(models: Iterable[nn.Module], settings: ModelSettings) -> None:
    """Gradient checkpointing and the attention backend (SDPA is diffusers' default on torch 2)."""
    for model in models:
        if settings.gradient_checkpointing and getattr(model, "_supports_gradient_checkpointing", False):
            model.enable_gradient_checkpointing()
        if settings.attention == "xformers":
            try:
                model.enable_xformers_memory_efficient_attention()
            except (ImportError, ModuleNotFoundError, ValueError) as err:
                raise RuntimeError(f"model.attention=xformers: {err}; install xformers or use sdpa") from None


def load_models(
    weights_root: Path,
    *,
    stage: Literal[1, 2],
    device: torch.device,
    frozen_dtype: torch.dtype,
    unet_path: Path | None = None,
    brushnet_path: Path | None = None,
) -> tuple[FrozenEncoders, nn.Module, nn.Module]:
    """Frozen encoders (eval mode, ``frozen_dtype``) and the main UNet + BrushNet (float32, train mode).

    ``stage=1`` gives a 2-D ``UNet2DConditionModel``, ``stage=2`` a ``UNetMotionModel`` (a 2-D ``unet_path`` is
    combined with the layout's AnimateDiff adapter); paths default to the layout's (see
    ``vipo.models.diffueraser_weights``).
    """
    from vipo.models.diffueraser_weights import load_diffueraser_components

    parts = load_diffueraser_components(
        weights_root, stage=stage, device=device, dtype=torch.float32, unet_path=unet_path,
        brushnet_path=brushnet_path,
    )
    frozen = FrozenEncoders(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler"])
    for model in (frozen.vae, frozen.text_encoder):
        model.requires_grad_(False).eval()
        if model.dtype != frozen_dtype:
            model.to(dtype=frozen_dtype)
    parts["unet"].train()
    parts["brushnet"].train()
    return frozen, parts["unet"], parts["brushnet"]


def clip_generators(num_clips: int, generator: torch.Generator) -> list[torch.Generator]:
    """One generator per clip, seeded by one draw each from ``generator``. All of a clip's randomness comes from
    its own stream, so a batch of 2 draws exactly what two batches of 1 draw (accumulation = full batch)."""
    return [torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            for _ in range(num_clips)]


@torch.no_grad()
def diffusion_inputs(batch: dict[str, torch.Tensor], frozen: FrozenEncoders, device: torch.device,
                     generator: torch.Generator) -> DiffusionInputs:
    """``pixel_values``/``conditioning_pixel_values`` (B, F, 3, H, W) in [-1, 1], ``masks`` (B, F, 1, H, W)
    with 1 = known, ``input_ids`` (B, L) → :class:`DiffusionInputs` with a timestep and noise per clip."""
    num_clips, num_frames = batch["pixel_values"].shape[:2]
    num_train_timesteps = frozen.scheduler.config.num_train_timesteps
    latents, conditioning, timesteps, noise = [], [], [], []
    for clip, clip_rng in enumerate(clip_generators(num_clips, generator)):
        latents.append(encode_frames(frozen.vae, batch["pixel_values"][clip].to(device), clip_rng).float())
        conditioning.append(build_conditioning(
            frozen.vae, batch["conditioning_pixel_values"][clip].to(device), batch["masks"][clip].to(device),
            clip_rng,
        ).float())
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=clip_rng))
        noise.append(torch.randn(latents[-1].shape, generator=clip_rng))
    text = frozen.text_encoder(batch["input_ids"].to(device))[0].float()
    return DiffusionInputs(
        latents=torch.cat(latents), conditioning=torch.cat(conditioning), text=text,
        timesteps=torch.cat(timesteps).to(device), noise=torch.cat(noise).to(device),
        num_clips=num_clips, num_frames=num_frames,
    )


def epsilon_loss(denoiser: nn.Module, inputs: DiffusionInputs, scheduler, input_dtype: torch.dtype,
                 temporal: bool) -> torch.Tensor:
    """MSE between the predicted and the true noise over all elements (upstream: no mask weighting).

    ``denoiser`` is a ``BrushNetUNet`` (possibly DDP/DeepSpeed-wrapped) called with one timestep per clip, which
    it repeats per frame for both BrushNet and the UNet; ``temporal`` passes ``num_frames`` so a motion UNet sees
    clips, while a 2-D UNet treats the frames as independent images."""
    noisy = scheduler.add_noise(inputs.latents, inputs.noise, inputs.timesteps.repeat_interleave(inputs.num_frames))
    prediction = denoiser(
        noisy.to(input_dtype), inputs.timesteps, inputs.text.to(input_dtype), inputs.conditioning.to(input_dtype),
        num_frames=inputs.num_frames if temporal else None,
    )
    return F.mse_loss(prediction.float(), inputs.noise.float())


class ValidationClips:
    """Fixed validation clips: the first F frames of chosen training videos, at the training clip size, with
    random moving masks drawn once from ``settings.seed`` (the same at every validation)."""

    def __init__(self, dataset: FinetuneDataset, settings: ValidationSettings):
        self.settings = settings
        videos = list({video.video_id: video for video in dataset.index}.values())
        if settings.videos:
            chosen = [v for v in videos
                      if v.video_id in settings.videos or v.video_id.split("/")[-1] in settings.videos]
            if len(chosen) != len(settings.videos):
                raise ValueError(f"validation.videos {settings.videos}: not all among the training videos "
                                 f"{[v.video_id for v in videos]}")
        else:
            chosen = videos[: settings.num_videos]
        nframes, size = dataset.config.clip.nframes, dataset.config.clip.size
        self.clips: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for position, video in enumerate(chosen):
            try:
                frames = video.read(list(range(nframes)))
            except BadSample as err:  # strict: the error with its fix; else counted with the training skips
                dataset.skips.handle(err, dataset.strict)
                continue
            hole = random_moving_masks(nframes, *frames.shape[1:3], settings.seed + position, dataset.config.masks)
            name = video.video_id.replace("/", "_")
            self.clips[name] = (resize_center_crop(frames, size), resize_center_crop(hole, size, "nearest"))

    def run(self, frozen: FrozenEncoders, denoiser: nn.Module) -> dict[str, np.ndarray]:
        """Inpaint every clip with ``denoiser``'s UNet and BrushNet (UniPC, no prior, as upstream validates; the same
        seed, hence the same initial noise, every time) → name → raw (F, H, W, 3) uint8 frames (the judging and
        the strips are :class:`vipo.train.validation.ValidationGate`'s)."""
        pipeline = DiffuEraserPipeline(
            vae=frozen.vae, text_encoder=frozen.text_encoder, tokenizer=frozen.tokenizer, unet=denoiser.unet,
            brushnet=denoiser.brushnet, scheduler=UniPCMultistepScheduler.from_config(frozen.scheduler.config),
        )
        pipeline.set_progress_bar_config(disable=True)
        # Masks are exact training-style holes: no extra dilation.
        return {
            name: pipeline(frames, hole, seed=self.settings.seed, num_inference_steps=self.settings.num_inference_steps,
                           mask_dilation_iter=0).raw_frames
            for name, (frames, hole) in self.clips.items()
        }


class DiffuEraserRecipe:
    """What the DiffuEraser recipes (stages 1-3) share; a stage adds ``config_class``, ``setup`` (which sets
    ``frozen``, ``engine``, ``validation`` and ``loop``), ``compute_loss``, ``save_checkpoint`` and ``export``."""

    manifest_path: Path | None = None
    #: Scores validation clips (injected by the jobs layer through ``run_recipe``); None: strips only.
    scorer: ClipScorer | None = None
    #: Its validation clips are judged by the loop's gate, so a launcher should build a scorer for it.
    uses_validation_gate = True
    # Attributes a finished or failed run lets go of, so a Ray worker frees its (GPU) memory at once.
    _released = ("loop", "engine", "reference", "frozen", "validation")

    def __init__(self, cfg: TrainConfig, ctx: WorkerContext):
        self.cfg, self.ctx = cfg, ctx

    @property
    def parent_checkpoint(self) -> Path | None:
        return self.cfg.model.pretrained_stage1_path

    @classmethod
    def prepare(cls, cfg: TrainConfig) -> None:
        prepare_weights(cfg.model)

    def train(self) -> None:
        self.loop.run()

    def validate(self, step: int) -> dict:
        return self.validation.run(self.frozen, self.engine.model)

    def cleanup(self) -> None:
        for name in self._released:
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
