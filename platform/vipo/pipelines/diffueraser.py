"""DiffuEraser video inpainting: BrushNet + motion UNet, prior injection, sliding windows, feathered compositing.

Follows upstream ``diffueraser/diffueraser.py`` + ``pipeline_diffueraser.py`` (spec sections 4.1-4.7):

1. masks are binarised, eroded ``mask_erosion_iter`` times (upstream once) and dilated ``mask_dilation_iter`` times
   (3x3); holes are blacked out. With ``mask_dilation_iter=0`` the erosion is not undone: the model is given the
   ground truth of a 1-px ring inside the caller's hole (upstream's quirk, kept as the default);
2. BrushNet's conditioning is the VAE latent of the masked frames plus the known-pixel mask (1 = known);
3. the prior (e.g. ProPainter output) is VAE-encoded and forward-diffused to the first sampling timestep --
   what upstream's ``add_noise`` call effectively does (t = 999 for the 2-step PCM schedule); ``prior=None``
   starts from pure noise (the hallucination negative);
4. the noise is one window of Gaussian noise tiled over the video;
5. videos longer than two windows first inpaint 22 evenly spaced keyframes as one clip; those frames then enter
   the main pass as fully-known BrushNet anchors;
6. the main pass denoises 22-frame windows overlapping by 5, alternating two window sets per step; each window is
   stepped from the scheduler state ``set_timesteps`` left (as upstream, so multistep samplers run first order)
   and the stepped windows are cross-faded linearly over the overlaps, the last overlapped frame overwritten;
7. frames are decoded in batches and composited with a feathered mask (dilated mask union its Gaussian blur).

A sequence of seeds splits the video into that many equal segments that are inpainted independently and spliced
(the flicker negative). Sampling uses no classifier-free guidance and the empty prompt, as upstream.

The helpers at module level (mask preprocessing, VAE encode/decode, conditioning, prompt embedding, windows) are
the ones trainers reuse.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    TCDScheduler,
    UNet2DConditionModel,
    UNetMotionModel,
    UniPCMultistepScheduler,
)
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from vipo.models.brushnet import BrushNetModel
from vipo.models.diffueraser_weights import (
    DiffuEraserWeights,
    load_diffueraser_components,
    require_path,
)
from vipo.models.unet_brushnet import BrushNetUNet

WINDOW_SIZE = 22
WINDOW_OVERLAP = WINDOW_SIZE // 4
MASK_DILATION_ITER = 8
MASK_EROSION_ITER = 1
# cv2.GaussianBlur kernel of upstream's feathered compositing (sigma derived from the size: 3.5 px).
BLEND_KERNEL_SIZE = 21


@dataclass
class DiffuEraserPipelineOutput(BaseOutput):
    """Result at the input resolution.

    Attributes:
        frames: ``(F, H, W, 3)`` uint8 RGB, generated content composited into the input frames.
        raw_frames: ``(F, H, W, 3)`` uint8 RGB, the decoded generation before compositing.
    """

    frames: np.ndarray
    raw_frames: np.ndarray


# --------------------------------------------------------------------------------------------------------------
# Pieces shared with training
# --------------------------------------------------------------------------------------------------------------


def dilate_hole_masks(
    hole_masks: np.ndarray, iterations: int = MASK_DILATION_ITER, erosion: int = MASK_EROSION_ITER
) -> np.ndarray:
    """Upstream mask preprocessing: erode ``erosion`` times (upstream once), then dilate ``iterations`` times, both
    with a 3x3 square.

    Args:
        hole_masks: ``(F, H, W)``, True / non-zero = hole.

    Returns:
        ``(F, H, W)`` bool, True = hole.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    dilated = []
    for mask in np.asarray(hole_masks):
        mask = (mask > 0).astype(np.uint8)
        mask = cv2.erode(mask, kernel, iterations=erosion) if erosion > 0 else mask
        dilated.append(cv2.dilate(mask, kernel, iterations=iterations) if iterations > 0 else mask)
    return np.stack(dilated).astype(bool)


def feathered_blend_masks(hole_masks: np.ndarray) -> np.ndarray:
    """Compositing weights ``1 - (1 - m)(1 - blur(m))``: the hard mask united with its blur, feathering outward only.

    Args:
        hole_masks: ``(F, H, W)`` bool, True = hole (already dilated).

    Returns:
        ``(F, H, W)`` float32 multiples of 1/255 in [0, 1]; 1 on the hole, 0 farther than ``BLEND_KERNEL_SIZE // 2``
        px from it.
    """
    hard = hole_masks.astype(np.uint8) * 255
    # Blurring the uint8 image, as upstream does, rounds the far tail of the kernel to exactly zero.
    blurred = np.stack([cv2.GaussianBlur(mask, (BLEND_KERNEL_SIZE, BLEND_KERNEL_SIZE), 0) for mask in hard])
    weights = 1.0 - (1.0 - hard / 255.0) * (1.0 - blurred / 255.0)
    # Upstream stores the weights as a uint8 image, truncating them to multiples of 1/255.
    return (weights * 255).astype(np.uint8).astype(np.float32) / 255.0


def composite(generated: np.ndarray, original: np.ndarray, blend: np.ndarray) -> np.ndarray:
    """``generated * blend + original * (1 - blend)`` for uint8 ``(F, H, W, 3)`` frames and ``(F, H, W)`` weights,
    truncated to uint8 as upstream's ``astype(np.uint8)``."""
    weight = blend[..., None]
    mixed = generated.astype(np.float32) * weight + original.astype(np.float32) * (1.0 - weight)
    return np.clip(mixed, 0, 255).astype(np.uint8)


def frames_to_tensor(frames: np.ndarray, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB ``(F, H, W, 3)`` -> ``(F, 3, H, W)`` in [-1, 1]."""
    images = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)
    return (images.float() / 127.5 - 1.0).to(dtype)


def tensor_to_frames(images: torch.Tensor) -> np.ndarray:
    """``(F, 3, H, W)`` in [-1, 1] -> uint8 RGB ``(F, H, W, 3)``."""
    images = ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def encode_frames(
    vae: AutoencoderKL,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    chunk_size: int = 8,
) -> torch.Tensor:
    """VAE latents ``(F, 4, H/8, W/8)``, sampled from the posterior and multiplied by the scaling factor.

    Args:
        images: ``(F, 3, H, W)`` in [-1, 1].
        generator: makes the posterior sample reproducible (a CPU generator gives the same draw on any device).
    """
    latents = [
        vae.encode(chunk.to(vae.dtype)).latent_dist.sample(generator) for chunk in images.split(chunk_size)
    ]
    return torch.cat(latents) * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """Decode scaled latents ``(F, 4, h, w)`` in batches of ``chunk_size`` -> ``(F, 3, 8h, 8w)`` in [-1, 1]."""
    latents = latents / vae.config.scaling_factor
    return torch.cat([vae.decode(chunk.to(vae.dtype)).sample for chunk in latents.split(chunk_size)])


def build_conditioning(
    vae: AutoencoderKL,
    masked_images: torch.Tensor,
    known: torch.Tensor,
    generator: torch.Generator | None = None,
    chunk_size: int = 8,
) -> torch.Tensor:
    """BrushNet conditioning ``(F, 5, h, w)``: masked-image latent (4) + known mask (1 = known, 0 = hole).

    BrushNet puts the noisy latent in front, making its 9 input channels.

    Args:
        masked_images: ``(F, 3, H, W)`` in [-1, 1], holes black (-1).
        known: ``(F, 1, H, W)`` float, 1 = known pixel, 0 = hole; nearest-resized to the latent grid as upstream.
    """
    latents = encode_frames(vae, masked_images, generator, chunk_size)
    mask = torch.nn.functional.interpolate(known.float(), size=latents.shape[-2:], mode="nearest")
    return torch.cat([latents, mask.to(latents.dtype)], dim=1)


def encode_prompt(
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    prompts: str | Sequence[str],
    device: torch.device | str,
) -> torch.Tensor:
    """CLIP text embeddings ``(B, 77, D)`` (last hidden state, padded to the tokenizer's maximum length)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    token_ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(token_ids.to(device))[0]


def window_starts(num_frames: int, window: int, overlap: int, shifted: bool) -> list[int]:
    """Start frames of the sliding windows for one denoising step.

    Windows of ``window`` frames advance by ``window - overlap``. The unshifted set starts at 0; the shifted set
    (odd steps) is ``[0, window)`` followed by windows from ``window // 2``, so the seams move between steps. Both
    end with a window aligned to the last frame. A video no longer than ``window`` is one window.
    """
    if num_frames <= window:
        return [0]
    stride = window - overlap
    last = num_frames - window
    starts = [0, *range(window // 2, last + 1, stride)] if shifted else list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def blend_windows(starts: Sequence[int], predictions: Sequence[torch.Tensor], num_frames: int) -> torch.Tensor:
    """Stitch per-window results ``(window, ...)`` into ``(num_frames, ...)`` as upstream does.

    Windows are taken in order; where a window overlaps ``k`` frames already written, its first ``k - 1`` of them
    are cross-faded in with weights ``1/(k+1) .. (k-1)/(k+1)`` and the window overwrites from its ``k``-th frame
    on (upstream's ``pipeline_diffueraser.py`` overwrites the last overlapped frame rather than giving it
    ``k/(k+1)``).
    """
    stitched = predictions[0].new_empty((num_frames, *predictions[0].shape[1:]))
    written = 0
    for start, prediction in zip(starts, predictions):
        faded = max(written - start - 1, 0)
        if faded:
            ramp = torch.linspace(0, 1, faded + 3, device=prediction.device)[1:-2]
            ramp = ramp.to(prediction.dtype).view(-1, *([1] * (prediction.ndim - 1)))
            region = slice(start, start + faded)
            stitched[region] = stitched[region] * (1 - ramp) + prediction[:faded] * ramp
        stitched[start + faded : start + len(prediction)] = prediction[faded:]
        written = max(written, start + len(prediction))
    return stitched


def keyframe_indices(num_frames: int, count: int) -> list[int]:
    """``count`` evenly spaced frames, ``floor(i * num_frames / count)``."""
    return [i * num_frames // count for i in range(count)]


def processing_size(height: int, width: int, max_image_size: int | None) -> tuple[int, int]:
    """Size the models run at: downscaled so the longer side fits ``max_image_size``, floored to multiples of 8."""
    scale = min(1.0, max_image_size / max(height, width)) if max_image_size else 1.0
    return int(height * scale) // 8 * 8, int(width * scale) // 8 * 8


def _resize(frames: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    height, width = size
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([cv2.resize(frame, (width, height), interpolation=interpolation) for frame in frames])


# --------------------------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------------------------


class DiffuEraserPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """DiffuEraser inference on one video (see the module docstring for the steps).

    Components are those of ``load_diffueraser_components``; ``unet`` is a ``UNetMotionModel`` (stage 2) or a 2-D
    ``UNet2DConditionModel`` (stage 1, frames then independent). ``scheduler`` is the sampler: ``TCDScheduler``
    after ``use_pcm_lora``, any diffusers sampler otherwise.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel | UNetMotionModel,
        brushnet: BrushNetModel,
        scheduler: SchedulerMixin,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, brushnet=brushnet, scheduler=scheduler
        )

    @classmethod
    def from_weights(
        cls,
        weights_root: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        pcm_steps: int | None = 2,
        unet_path: str | Path | None = None,
        brushnet_path: str | Path | None = None,
    ) -> DiffuEraserPipeline:
        """Stage-2 pipeline from the upstream weights layout.

        Args:
            pcm_steps: load the PCM LoRA distilled for this many steps and sample with TCD (upstream default 2);
                ``None`` keeps the plain model and samples with UniPC (use ~20-50 steps).
            dtype: defaults to fp16 on GPU, fp32 on CPU.
            unet_path, brushnet_path: checkpoints replacing the released ``unet_main`` / ``brushnet``.
        """
        components = load_diffueraser_components(
            weights_root, stage=2, device=device, dtype=dtype, unet_path=unet_path, brushnet_path=brushnet_path
        )
        training_scheduler = components.pop("scheduler")
        pipeline = cls(**components, scheduler=UniPCMultistepScheduler.from_config(training_scheduler.config))
        if pcm_steps is not None:
            pipeline.use_pcm_lora(DiffuEraserWeights(Path(weights_root).expanduser()).pcm_lora(pcm_steps))
        return pipeline

    def use_pcm_lora(self, lora_file: str | Path, fuse: bool = True) -> None:
        """Load a PCM LoRA into the main UNet (peft, diffusers' loaders) and switch to the TCD sampler.

        With ``fuse`` the LoRA is merged into the UNet weights and every LoRA layer is removed, so the UNet is a
        plain model again (faster); add other adapters (e.g. a stage-3 LoRA) after this call, not before.
        BrushNet gets no LoRA, as upstream.
        """
        lora_file = require_path(Path(lora_file).expanduser(), "PCM LoRA")
        self.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name="pcm")
        if fuse:
            self.fuse_lora(components=["unet"], adapter_names=["pcm"])
            self.unload_lora_weights()
        config = self.scheduler.config
        # Upstream builds TCD from these four values (other arguments at their defaults): 2 steps -> [999, 499].
        self.scheduler = TCDScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            beta_schedule=config.beta_schedule,
            timestep_spacing="trailing",
        )

    def check_inputs(
        self,
        frames: np.ndarray,
        hole_masks: np.ndarray,
        prior: np.ndarray | None,
        seeds: list[int],
        num_inference_steps: int,
        mask_dilation_iter: int,
        mask_erosion_iter: int,
        window_size: int,
        window_overlap: int,
        windows_per_batch: int,
        decode_chunk_size: int,
        max_image_size: int | None,
        eta: float,
    ) -> None:
        """Raise a one-line ``ValueError`` for any bad argument."""
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be a uint8 (F, H, W, 3) RGB array, got {_describe(frames)}")
        if not isinstance(hole_masks, np.ndarray) or hole_masks.dtype != bool or hole_masks.shape != frames.shape[:3]:
            expected = f"a bool {frames.shape[:3]} array (True = hole)"
            raise ValueError(f"hole_masks must be {expected}, got {_describe(hole_masks)}")
        if prior is not None and (
            not isinstance(prior, np.ndarray) or prior.dtype != np.uint8 or prior.shape != frames.shape
        ):
            raise ValueError(f"prior must be None or a uint8 {frames.shape} array, got {_describe(prior)}")
        if min(processing_size(*frames.shape[1:3], max_image_size)) < 8:
            raise ValueError(f"frames of {frames.shape[1:3]} are too small: the models need at least 8x8 pixels")
        if not seeds or len(seeds) > len(frames) or any(not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
            raise ValueError(f"seed must be an int >= 0 or 1..{len(frames)} of them (one per segment), got {seeds}")
        max_window = self.unet.config.get("motion_max_seq_length")
        checks = {
            "num_inference_steps": num_inference_steps >= 1,
            "mask_dilation_iter": mask_dilation_iter >= 0,
            "mask_erosion_iter": mask_erosion_iter >= 0,
            "window_size": window_size >= 1 and (max_window is None or window_size <= max_window),
            "window_overlap": 0 <= window_overlap < window_size,
            "windows_per_batch": windows_per_batch >= 1,
            "decode_chunk_size": decode_chunk_size >= 1,
            "eta": 0.0 <= eta <= 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {', '.join(bad)} (window_size <= {max_window}, 0 <= eta <= 1, counts >= 1)")

    @torch.no_grad()
    def __call__(
        self,
        frames: np.ndarray,
        hole_masks: np.ndarray,
        prior: np.ndarray | None = None,
        *,
        seed: int | Sequence[int] = 0,
        num_inference_steps: int = 2,
        mask_dilation_iter: int = MASK_DILATION_ITER,
        mask_erosion_iter: int = MASK_EROSION_ITER,
        window_size: int = WINDOW_SIZE,
        window_overlap: int = WINDOW_OVERLAP,
        keyframe_pass: bool = True,
        blend: bool = True,
        max_image_size: int | None = None,
        windows_per_batch: int = 1,
        decode_chunk_size: int = 8,
        eta: float = 0.0,
    ) -> DiffuEraserPipelineOutput:
        """Inpaint a video.

        Args:
            frames: ``(F, H, W, 3)`` uint8 RGB.
            hole_masks: ``(F, H, W)`` bool, True = hole.
            prior: ``(F, H, W, 3)`` uint8 RGB prior (e.g. ProPainter), or ``None`` to start from pure noise.
            seed: one seed, or one per segment: the video is cut into that many equal segments, each inpainted
                independently with its seed, then spliced. Same seeds -> same output.
            num_inference_steps: 2 for the 2-step PCM LoRA; more for plain samplers.
            mask_dilation_iter: 3x3 dilations after the erosion (upstream 8).
            mask_erosion_iter: 3x3 erosions first (upstream 1; with no dilation the hole filled is that much
                smaller than ``hole_masks``).
            window_size, window_overlap: sliding windows (upstream 22 and 5).
            keyframe_pass: pre-inpaint keyframes of videos longer than ``2 * window_size`` (upstream on).
            blend: feathered compositing; ``False`` pastes the generation into the dilated hole only.
            max_image_size: downscale so the longer side fits (upstream's ``max_img_size``); output is always at
                the input size.
            windows_per_batch: windows denoised in one UNet call (speed only).
            decode_chunk_size: frames per VAE encode/decode call.
            eta: TCD/DDIM stochasticity (upstream 0).
        """
        seeds = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
        # 1. check inputs
        self.check_inputs(
            frames, hole_masks, prior, seeds, num_inference_steps, mask_dilation_iter, mask_erosion_iter, window_size,
            window_overlap, windows_per_batch, decode_chunk_size, max_image_size, eta,
        )  # fmt: skip
        device, dtype = self._execution_device, self.unet.dtype
        size = processing_size(*frames.shape[1:3], max_image_size)
        # 2. masks: preprocess at input size (compositing), resize for the models
        holes = dilate_hole_masks(hole_masks, mask_dilation_iter, mask_erosion_iter)
        model_holes = _resize(holes.astype(np.uint8), size, cv2.INTER_NEAREST).astype(bool)
        model_frames = _resize(frames, size, cv2.INTER_AREA)
        model_masked = model_frames * ~model_holes[..., None]
        model_prior = None if prior is None else _resize(prior, size, cv2.INTER_AREA)
        # 3. empty prompt, no classifier-free guidance
        prompt_embeds = encode_prompt(self.tokenizer, self.text_encoder, "", device).to(dtype)
        # 4. timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        sampler = _Sampler(self, prompt_embeds, num_inference_steps, window_overlap, windows_per_batch, eta)
        # 5. each segment: conditioning, prior injection, keyframes, windowed denoising, decode
        raw = []
        for segment, segment_seed in zip(np.array_split(np.arange(len(frames)), len(seeds)), seeds):
            latents = sampler.inpaint(
                frames_to_tensor(model_masked[segment], device, dtype),
                torch.from_numpy(~model_holes[segment]).to(device)[:, None],
                None if model_prior is None else frames_to_tensor(model_prior[segment], device, dtype),
                generator=torch.Generator("cpu").manual_seed(int(segment_seed)),
                window_size=window_size,
                keyframe_pass=keyframe_pass,
                chunk_size=decode_chunk_size,
            )
            raw.append(tensor_to_frames(decode_latents(self.vae, latents, decode_chunk_size)))
        # 6. back to the input size and composite
        raw_frames = _resize(np.concatenate(raw), frames.shape[1:3], cv2.INTER_LINEAR)
        weights = feathered_blend_masks(holes) if blend else holes.astype(np.float32)
        return DiffuEraserPipelineOutput(frames=composite(raw_frames, frames, weights), raw_frames=raw_frames)


class _Sampler:
    """The latent-space part of one ``DiffuEraserPipeline`` call (kept apart so ``__call__`` stays readable)."""

    def __init__(
        self,
        pipeline: DiffuEraserPipeline,
        prompt_embeds: torch.Tensor,
        num_inference_steps: int,
        window_overlap: int,
        windows_per_batch: int,
        eta: float,
    ):
        self.pipeline = pipeline
        self.denoiser = BrushNetUNet(pipeline.unet, pipeline.brushnet)
        self.prompt_embeds = prompt_embeds
        self.num_inference_steps = num_inference_steps
        self.window_overlap = window_overlap
        self.windows_per_batch = windows_per_batch
        self.eta = eta
        scheduler = pipeline.scheduler
        self.first_timestep = scheduler.timesteps[0]
        # Prior injection is plain forward diffusion q(x_t | z); DDPM's add_noise is exactly that for any sampler
        # sharing the beta schedule (UniPC's own add_noise depends on its step index -- upstream's pitfall).
        self.forward_diffusion = DDPMScheduler.from_config(scheduler.config)
        self.step_accepts = set(inspect.signature(scheduler.step).parameters)

    def noised(self, clean: torch.Tensor | None, noise: torch.Tensor) -> torch.Tensor:
        """Starting latents: ``clean`` diffused to the first sampling timestep, or pure noise if ``None``."""
        if clean is None:
            return noise * self.pipeline.scheduler.init_noise_sigma
        return self.forward_diffusion.add_noise(clean, noise, self.first_timestep.view(1).cpu()).to(noise.dtype)

    def inpaint(
        self,
        masked_images: torch.Tensor,
        known: torch.Tensor,
        prior_images: torch.Tensor | None,
        *,
        generator: torch.Generator,
        window_size: int,
        keyframe_pass: bool,
        chunk_size: int,
    ) -> torch.Tensor:
        """Clean latents ``(n, 4, h, w)`` for ``n`` frames.

        Args:
            masked_images: ``(n, 3, H, W)`` in [-1, 1], holes black.
            known: ``(n, 1, H, W)`` bool, True = known pixel.
            prior_images: ``(n, 3, H, W)`` in [-1, 1] or ``None``.
        """
        vae, dtype = self.pipeline.vae, masked_images.dtype
        num_frames = masked_images.shape[0]
        latent_shape = (4, masked_images.shape[2] // 8, masked_images.shape[3] // 8)
        # 1. one window of noise, tiled over the video
        clip_noise = randn_tensor((window_size, *latent_shape), generator=generator, device=masked_images.device)
        clip_noise = clip_noise.to(dtype)
        noise = clip_noise.repeat(-(-num_frames // window_size), 1, 1, 1)[:num_frames]
        # 2. BrushNet conditioning and the prior-initialised latents
        conditioning = build_conditioning(vae, masked_images, known, generator, chunk_size).to(dtype)
        prior_latents = None if prior_images is None else encode_frames(vae, prior_images, generator, chunk_size)
        latents = self.noised(prior_latents, noise)
        # 3. keyframe pre-pass: the keyframes become fully known anchors with their own clean latents
        if keyframe_pass and num_frames > 2 * window_size:
            keys = keyframe_indices(num_frames, window_size)
            key_prior = None if prior_latents is None else prior_latents[keys]
            key_latents = self.denoise(self.noised(key_prior, clip_noise), conditioning[keys], window_size, generator)
            key_images = decode_latents(vae, key_latents, chunk_size)
            all_known = torch.ones_like(known[keys])
            conditioning[keys] = build_conditioning(vae, key_images, all_known, generator, chunk_size).to(dtype)
            latents[keys] = self.noised(key_latents, noise[keys])
        # 4. main pass
        return self.denoise(latents, conditioning, window_size, generator)

    def denoise(
        self, latents: torch.Tensor, conditioning: torch.Tensor, window_size: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Run the full schedule over ``(n, 4, h, w)`` latents with sliding windows, per window as upstream.

        Upstream saves the scheduler's state after ``set_timesteps`` and restores it before every window of every
        step, steps each window's latents on their own and blends the stepped windows (:func:`blend_windows`).
        Every step therefore starts from an empty history: multistep samplers run first order without a
        corrector (UniPC is UniP-1, DPM-Solver++ is DPM-Solver-1); single-step ones (TCD, DDIM, Euler) are
        unaffected. Each restore is a fresh copy (upstream shares the saved history lists, which only samplers
        that append to them, such as PNDM, would read).
        """
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=latents.device)
        fresh_state = copy.deepcopy(scheduler.__dict__)
        num_frames = latents.shape[0]
        window = min(window_size, num_frames)
        extra = {key: value for key, value in (("eta", self.eta), ("generator", generator)) if key in self.step_accepts}
        for step, timestep in enumerate(self.pipeline.progress_bar(scheduler.timesteps)):
            starts = window_starts(num_frames, window, self.window_overlap, shifted=step % 2 == 1)
            stepped = []
            for first in range(0, len(starts), self.windows_per_batch):
                batch = starts[first : first + self.windows_per_batch]
                frames = torch.cat([torch.arange(start, start + window) for start in batch]).to(latents.device)
                scheduler.__dict__.update(copy.deepcopy(fresh_state))
                model_input = scheduler.scale_model_input(latents[frames], timestep)
                noise_pred = self.denoiser(
                    model_input, timestep, self.prompt_embeds, conditioning[frames], num_frames=window
                )
                for start, window_pred in zip(batch, noise_pred.split(window)):
                    scheduler.__dict__.update(copy.deepcopy(fresh_state))
                    window_latents = latents[start : start + window]
                    stepped.append(scheduler.step(window_pred, timestep, window_latents, **extra, return_dict=False)[0])
            latents = blend_windows(starts, stepped, num_frames)
        return latents


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
