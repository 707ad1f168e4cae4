"""DiffuEraserPipeline on tiny random weights (CPU), plus its window/mask/compositing pieces."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from safetensors.torch import load_file

from vipo.models.diffueraser_weights import load_diffueraser_components
from vipo.models.tiny import write_tiny_weights
from vipo.pipelines.diffueraser import (
    DiffuEraserPipeline,
    _Sampler,
    blend_windows,
    composite,
    dilate_hole_masks,
    feathered_blend_masks,
    window_starts,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def pipe(weights) -> DiffuEraserPipeline:
    pipeline = DiffuEraserPipeline.from_weights(weights.root)  # stage 2 + 2-step PCM LoRA, fp32 on CPU
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def video(num_frames: int, height: int = 32, width: int = 32, seed: int = 0):
    """Random frames and prior, and a 6x6 hole that drifts right by one pixel every 8 frames."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    prior = rng.integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)
    holes = np.zeros((num_frames, height, width), dtype=bool)
    for index in range(num_frames):
        shift = index // 8
        holes[index, 2:8, 2 + shift : 8 + shift] = True
    return frames, holes, prior


# ------------------------------------------------------------------------------------------------ pieces


def test_window_starts_follow_the_spec():
    """Spec §4.6: windows of 22, stride 17; odd steps [0:22] then 11, 28, ...; both end-aligned."""
    assert window_starts(48, 22, 5, shifted=False) == [0, 17, 26]
    assert window_starts(48, 22, 5, shifted=True) == [0, 11, 26]
    assert window_starts(60, 22, 5, shifted=False) == [0, 17, 34, 38]
    assert window_starts(60, 22, 5, shifted=True) == [0, 11, 28, 38]
    assert window_starts(56, 22, 5, shifted=False) == [0, 17, 34]
    assert window_starts(22, 22, 5, shifted=True) == [0]
    assert window_starts(9, 22, 5, shifted=False) == [0]


def test_blend_windows_cross_fades_overlaps_and_overwrites_the_last_overlapped_frame():
    # Upstream: overlap k = 5 -> weights 1/6 .. 4/6 on the first four overlapped frames, the fifth overwritten.
    first, second = torch.zeros(22, 1), torch.ones(22, 1)
    stitched = blend_windows([0, 17], [first, second], 39)[:, 0]
    expected = torch.cat([torch.zeros(17), torch.arange(1, 5) / 6, torch.ones(18)])
    torch.testing.assert_close(stitched, expected)
    # A one-frame overlap is a plain overwrite.
    torch.testing.assert_close(blend_windows([0, 3], [first[:4], second[:4]], 7)[:, 0],
                               torch.tensor([0.0] * 3 + [1.0] * 4))


def test_composite_truncates_to_uint8_as_upstream():
    generated, original = np.full((1, 1, 1, 3), 10, np.uint8), np.full((1, 1, 1, 3), 11, np.uint8)
    # 10 * 0.3 + 11 * 0.7 = 10.7: upstream's astype(np.uint8) gives 10 where rounding would give 11.
    assert composite(generated, original, np.full((1, 1, 1), 0.3, np.float32)).ravel().tolist() == [10, 10, 10]
    assert composite(generated, original, np.zeros((1, 1, 1), np.float32)).ravel().tolist() == [11, 11, 11]


def test_dilate_hole_masks_erodes_once_then_dilates():
    masks = np.zeros((1, 20, 20), dtype=bool)
    masks[0, 6:12, 6:12] = True  # 6x6 square -> eroded 4x4 -> dilated twice 8x8
    masks[0, 2, 16] = True  # a lone pixel vanishes in the erosion
    expected = np.zeros((1, 20, 20), dtype=bool)
    expected[0, 5:13, 5:13] = True
    assert np.array_equal(dilate_hole_masks(masks, iterations=2), expected)
    # No dilation: upstream's erosion is not undone (the quirk behind raw6's 1-px ring) unless it is switched off.
    eroded = np.zeros((1, 20, 20), dtype=bool)
    eroded[0, 7:11, 7:11] = True
    assert np.array_equal(dilate_hole_masks(masks, iterations=0), eroded)
    assert np.array_equal(dilate_hole_masks(masks, iterations=0, erosion=0), masks)


def test_feathered_blend_masks_match_the_gaussian_formula():
    """Half-plane hole: outside it the weight is the 21-tap Gaussian (sigma 3.5, OpenCV's rule) mass over the hole."""
    holes = np.zeros((1, 8, 48), dtype=bool)
    holes[0, :, :16] = True
    weights = feathered_blend_masks(holes)[0]
    taps = np.arange(-10, 11)
    kernel = np.exp(-(taps**2) / (2 * 3.5**2))
    kernel /= kernel.sum()
    assert np.all(weights[:, :16] == 1.0)
    for column in range(16, 48):
        expected = kernel[column + taps < 16].sum()
        np.testing.assert_allclose(weights[:, column], expected, atol=1.5 / 255)
    assert np.all(weights[:, 26:] == 0.0)  # beyond the kernel radius nothing is blended
    # Upstream keeps the weights as a uint8 image: multiples of 1/255.
    levels = weights * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def test_prior_is_forward_diffused_to_the_first_sampling_timestep(pipe):
    """Spec §4.5: x = sqrt(abar_999) z + sqrt(1 - abar_999) eps ~ 0.068 z + 0.998 eps (SD1.5 scaled-linear betas)."""
    pipe.scheduler.set_timesteps(2)
    sampler = _Sampler(pipe, None, num_inference_steps=2, window_overlap=5, windows_per_batch=1, eta=0.0)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)[999]
    clean, noise = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    expected = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * noise
    assert abs(alpha_bar.sqrt().item() - 0.068) < 1e-3
    torch.testing.assert_close(sampler.noised(clean, noise), expected.float())
    torch.testing.assert_close(sampler.noised(None, noise), noise)


def test_pcm_lora_is_fused_into_the_unet_and_tcd_samples_999_499(pipe, weights):
    assert isinstance(pipe.scheduler, TCDScheduler)
    pipe.scheduler.set_timesteps(2)
    assert pipe.scheduler.timesteps.tolist() == [999, 499]
    base = load_diffueraser_components(weights.root)["unet"].state_dict()
    lora = load_file(weights.pcm_lora(2))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    down, up = lora[f"unet.{name}.lora_A.weight"], lora[f"unet.{name}.lora_B.weight"]
    fused = pipe.unet.state_dict()
    torch.testing.assert_close(fused[f"{name}.weight"], base[f"{name}.weight"] + up @ down)  # alpha = rank
    motion = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(fused[motion], base[motion])  # temporal layers get no LoRA
    assert not any("lora" in key for key in fused)


# ---------------------------------------------------------------------------------------------- pipeline


def test_long_video_end_to_end(pipe):
    """49 frames (> 2 windows: keyframe pre-pass), 36x40 input (processed at 32x40), with a prior."""
    frames, holes, prior = video(49, height=36, width=40)
    window_calls = []
    hook = pipe.brushnet.register_forward_hook(lambda module, args, output: window_calls.append(args[0].shape[0]))
    try:
        output = pipe(frames, holes, prior, seed=0, mask_dilation_iter=2)
    finally:
        hook.remove()
    assert output.frames.shape == output.raw_frames.shape == frames.shape
    assert output.frames.dtype == np.uint8
    # keyframes: 2 steps x 1 window; main pass: 2 steps x 3 windows ([0, 17, 27] then [0, 11, 27])
    assert window_calls == [22] * 8
    # Holes (x <= 13 after drifting, dilated by 2) plus the 10-px blur radius stay below row/column 26.
    assert np.array_equal(output.frames[:, 26:], frames[:, 26:])
    assert np.array_equal(output.frames[:, :, 26:], frames[:, :, 26:])
    inside = dilate_hole_masks(holes, 2)
    assert np.array_equal(output.frames[inside], output.raw_frames[inside])
    assert np.abs(output.frames[inside].astype(int) - frames[inside]).mean() > 10


def test_seeds_per_segment_are_independent_and_reproducible(pipe):
    frames, holes, _ = video(30)
    first = pipe(frames, holes, seed=[3, 4]).raw_frames
    again = pipe(frames, holes, seed=[3, 4]).raw_frames
    changed = pipe(frames, holes, seed=[3, 5]).raw_frames
    alone = pipe(frames[:15], holes[:15], seed=3).raw_frames
    assert np.array_equal(first, again)
    assert np.array_equal(changed[:15], first[:15]) and np.array_equal(alone, first[:15])
    assert not np.array_equal(changed[15:], first[15:])


def test_prior_none_starts_from_noise_and_differs_from_prior_run(pipe):
    frames, holes, prior = video(10)
    with_prior = pipe(frames, holes, prior, seed=1).raw_frames
    without = pipe(frames, holes, None, seed=1).raw_frames
    # The tiny random decoder is nearly insensitive to its input latents, so only require a difference.
    assert not np.array_equal(with_prior, without)


def test_batched_windows_match_one_window_at_a_time(pipe):
    frames, holes, prior = video(30)
    single = pipe(frames, holes, prior, seed=2, windows_per_batch=1).raw_frames
    batched = pipe(frames, holes, prior, seed=2, windows_per_batch=3).raw_frames
    assert np.abs(single.astype(int) - batched).max() <= 1


def stand_in_denoiser(latents, timestep, prompt_embeds, conditioning, num_frames):
    """A fixed function of each window (its latents, their window mean, the conditioning, the timestep) standing in
    for BrushNet + UNet, so that window boundaries matter."""
    windows = latents.view(-1, num_frames, *latents.shape[1:])
    window_mean = windows.mean(dim=1, keepdim=True).expand_as(windows).reshape(latents.shape)
    return 0.6 * latents + 0.3 * window_mean + 0.2 * conditioning[:, :4] - 0.0004 * float(timestep)


def upstream_denoise(scheduler, latents, conditioning, steps, window, overlap):
    """Upstream's loop (``pipeline_diffueraser.py``), written independently: a brand-new scheduler for every window
    of every step, each window stepped alone, stepped windows merged with upstream's ``count`` / ``value`` rule."""
    num_frames = len(latents)
    scheduler.set_timesteps(steps)
    for index, timestep in enumerate(scheduler.timesteps):
        count, value = torch.zeros(num_frames), torch.zeros_like(latents)
        for order, start in enumerate(window_starts(num_frames, window, overlap, shifted=index % 2 == 1)):
            fresh = type(scheduler).from_config(scheduler.config)
            fresh.set_timesteps(steps)
            context = list(range(start, start + window))
            model_input = fresh.scale_model_input(latents[context], timestep)
            prediction = stand_in_denoiser(model_input, timestep, None, conditioning[context], window)
            # Upstream passes eta (0) to the samplers that take it.
            eta = {"eta": 0.0} if "eta" in inspect.signature(fresh.step).parameters else {}
            stepped = fresh.step(prediction, timestep, latents[context], **eta).prev_sample
            count[context] += 1
            if order == 0:
                value[context] += stepped
                continue
            overlapped = [i for i in range(window) if count[start + i] > 1]
            ratio = torch.linspace(0, 1, len(overlapped) + 2)[1:-1]
            for i in overlapped:
                value[start + i] = value[start + i] * (1 - ratio[i]) + stepped[i] * ratio[i]
            value[start + overlapped[-1] : start + window] = stepped[overlapped[-1] :]
        latents = value
    return latents


SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@pytest.mark.parametrize(
    "scheduler",
    [
        UniPCMultistepScheduler(**SD_BETAS),
        DPMSolverMultistepScheduler(**SD_BETAS),
        DDIMScheduler(**SD_BETAS),
        EulerDiscreteScheduler(**SD_BETAS),
        TCDScheduler(**SD_BETAS, timestep_spacing="trailing"),
    ],
    ids=lambda scheduler: type(scheduler).__name__,
)
def test_windows_are_sampled_per_window_as_upstream_for_every_scheduler(pipe, scheduler):
    # 6 steps (the "raw6" protocol) over 30 frames in windows of 10 overlapping by 3, two windows per UNet batch.
    generator = torch.Generator().manual_seed(0)
    latents, conditioning = torch.randn(30, 4, 4, 4, generator=generator), torch.randn(30, 5, 4, 4, generator=generator)
    latents = latents * scheduler.init_noise_sigma
    pipeline = DiffuEraserPipeline(**{**pipe.components, "scheduler": scheduler})
    pipeline.set_progress_bar_config(disable=True)
    sampler = _Sampler(pipeline, None, num_inference_steps=6, window_overlap=3, windows_per_batch=2, eta=0.0)
    sampler.denoiser = stand_in_denoiser
    result = sampler.denoise(latents.clone(), conditioning, 10, generator)
    expected = upstream_denoise(type(scheduler).from_config(scheduler.config), latents, conditioning, 6, 10, 3)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    if isinstance(scheduler, UniPCMultistepScheduler):
        # A scheduler keeping its history across steps (2nd-order UniPC with corrector) lands elsewhere.
        persistent = type(scheduler).from_config(scheduler.config)
        persistent.set_timesteps(6)
        whole = latents.clone()
        for timestep in persistent.timesteps:
            prediction = stand_in_denoiser(whole, timestep, None, conditioning, 30)
            whole = persistent.step(prediction, timestep, whole).prev_sample
        single = upstream_denoise(type(scheduler).from_config(scheduler.config), latents, conditioning, 6, 30, 3)
        assert (whole - single).abs().max() > 0.05


def test_stage1_unet_with_a_plain_sampler(weights):
    components = load_diffueraser_components(weights.root, stage=1)
    scheduler = UniPCMultistepScheduler.from_config(components.pop("scheduler").config)
    pipeline = DiffuEraserPipeline(**components, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    frames, holes, prior = video(5)
    output = pipeline(frames, holes, prior, num_inference_steps=3)
    assert output.frames.shape == frames.shape


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hole_masks": np.zeros((4, 32, 32), dtype=np.uint8)}, "hole_masks must be a bool"),
        ({"prior": np.zeros((4, 16, 16, 3), dtype=np.uint8)}, "prior must be None or"),
        ({"seed": [1, 2, 3, 4, 5]}, "seed must be"),
        ({"window_size": 40}, "invalid window_size"),
        ({"frames": np.zeros((4, 4, 4, 3), dtype=np.uint8), "hole_masks": np.zeros((4, 4, 4), bool)}, "too small"),
    ],
)
def test_bad_inputs_raise_one_line_errors(pipe, change, message):
    frames, holes, _ = video(4)
    arguments = {"frames": frames, "hole_masks": holes, **change}
    with pytest.raises(ValueError, match=message) as error:
        pipe(**arguments)
    assert "\n" not in str(error.value)
