"""One Region-Reg-DPO forward: preference inputs from a ``DPODataset`` batch, then policy and reference predictions.

What Diffusion-DPO training asks (Wallace et al. 2023, and its official trainer), and how it is met here:

- one t and one ε per pair (clip), shared by winner and loser and by policy and reference
  (:func:`preference_inputs` draws them once per clip from the clip's own generator);
- the BrushNet conditioning is the masked *source* clip (``conditioning_pos``) for both: it is what the model sees
  at inference. ``conditioning_neg`` differs from it only outside the hole of a raw (not composited) negative,
  which would hand the model the answer; it is never used;
- the policy runs once on [winner; loser] (2B clips), the reference once on the same batch under ``no_grad``
  (the LoRA reference is the unwrapped policy with its adapter disabled);
- a frozen BrushNet shared by both passes runs once and its residuals feed both.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from diffusers import UNetMotionModel
from torch import nn

from vipo.models.brushnet import BrushNetOutput
from vipo.models.lora import adapter_disabled
from vipo.models.unet_brushnet import BrushNetUNet, unet_forward_with_brushnet
from vipo.pipelines.diffueraser import build_conditioning, encode_frames
from vipo.train.diffueraser import FrozenEncoders, clip_generators

__all__ = ["PairDenoiser", "PairPredictions", "PreferenceInputs", "Reference", "inversion_noise",
           "pair_predictions", "preference_inputs"]

REGION_KEYS = ("mask_hole", "mask_boundary", "mask_context")


@dataclass
class PreferenceInputs:
    """B preference pairs of F-frame clips, N = B·F frames, latent size (h, w).

    ``latents_win``/``latents_lose``: (N, 4, h, w) VAE-scaled clean latents of the winner (ground truth) and
    loser; ``conditioning``: (N, 5, h, w) masked-source latent + known mask (1 = known); ``text``: (B, L, D);
    ``timesteps``: (B,) int64; ``noise``: (N, 4, h, w) ε; ``regions``: (hole, boundary, context), each
    (B, F, 1, h, w) 0/1 at latent resolution.
    """

    latents_win: torch.Tensor
    latents_lose: torch.Tensor
    conditioning: torch.Tensor
    text: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor
    regions: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    num_clips: int
    num_frames: int

    def per_pair(self, frames: torch.Tensor) -> torch.Tensor:
        """(k·F, ...) frame-major → (k, F, ...): one row per clip, the per-pair layout the losses reduce over."""
        return frames.reshape(-1, self.num_frames, *frames.shape[1:])


@torch.no_grad()
def preference_inputs(batch: dict, frozen: FrozenEncoders, device: torch.device,
                      generator: torch.Generator) -> PreferenceInputs:
    """A ``DPODataset`` batch (``pixel_values_pos``/``_neg``, ``conditioning_pos`` (B, F, 3, H, W) in [-1, 1],
    ``masks`` (B, F, 1, H, W) 1 = known, ``mask_*`` regions at H/8, ``input_ids``) → :class:`PreferenceInputs`.

    Each clip's VAE posterior samples, timestep and noise come from its own generator (see
    :func:`vipo.train.diffueraser.clip_generators`), so accumulation reproduces a full batch."""
    num_clips, num_frames = batch["pixel_values_pos"].shape[:2]
    num_train_timesteps = frozen.scheduler.config.num_train_timesteps
    win, lose, conditioning, timesteps, noise = [], [], [], [], []
    for clip, rng in enumerate(clip_generators(num_clips, generator)):
        win.append(encode_frames(frozen.vae, batch["pixel_values_pos"][clip].to(device), rng).float())
        lose.append(encode_frames(frozen.vae, batch["pixel_values_neg"][clip].to(device), rng).float())
        conditioning.append(build_conditioning(
            frozen.vae, batch["conditioning_pos"][clip].to(device), batch["masks"][clip].to(device), rng,
        ).float())
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=rng))
        noise.append(torch.randn(win[-1].shape, generator=rng))
    regions = tuple(batch[key].to(device).float() for key in REGION_KEYS)
    latent_size = tuple(win[0].shape[-2:])
    if tuple(regions[0].shape[-2:]) != latent_size:
        raise ValueError(f"region masks are {tuple(regions[0].shape[-2:])}, latents {latent_size}: the loss needs "
                         "regions at latent resolution (data.region_scale: 8)")
    return PreferenceInputs(
        latents_win=torch.cat(win), latents_lose=torch.cat(lose), conditioning=torch.cat(conditioning),
        text=frozen.text_encoder(batch["input_ids"].to(device))[0].float(),
        timesteps=torch.cat(timesteps).to(device), noise=torch.cat(noise).to(device), regions=regions,
        num_clips=num_clips, num_frames=num_frames,
    )


class PairDenoiser(BrushNetUNet):
    """:class:`BrushNetUNet` whose forward can take BrushNet residuals computed beforehand, so a frozen BrushNet
    shared by the policy and reference passes runs once."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                conditioning: torch.Tensor, num_frames: int | None = None,
                residuals: BrushNetOutput | None = None) -> torch.Tensor:
        """As :meth:`BrushNetUNet.forward`; with ``residuals`` BrushNet is skipped (``conditioning`` unused)."""
        if residuals is None:
            return super().forward(sample, timestep, encoder_hidden_states, conditioning, num_frames)
        return unet_forward_with_brushnet(self.unet, sample, timestep, encoder_hidden_states, residuals,
                                          num_frames=num_frames, motion_mid_block=self.motion_mid_block)


@dataclass
class Reference:
    """The frozen reference ε-predictor.

    ``adapter_off``: ``denoiser`` is the (unwrapped) policy itself, run with its LoRA disabled. Otherwise it is a
    separate frozen model; ``offload`` keeps ``own_modules`` (its weights not shared with the policy) on CPU
    except during its pass.
    """

    denoiser: PairDenoiser
    adapter_off: bool
    offload: bool = False
    own_modules: list[nn.Module] = field(default_factory=list)

    @contextlib.contextmanager
    def active(self, device: torch.device):
        """The reference ready to run on ``device`` (adapter disabled / weights moved in), restored on exit."""
        if self.adapter_off:
            with adapter_disabled(self.denoiser.unet):
                yield self.denoiser
            return
        if self.offload:
            for module in self.own_modules:
                module.to(device)
        try:
            yield self.denoiser
        finally:
            if self.offload:
                for module in self.own_modules:
                    module.to("cpu")


@dataclass
class PairPredictions:
    """ε-predictions, each (B, F, 4, h, w): policy (with graph) and reference (constant) on winner and loser."""

    policy_win: torch.Tensor
    policy_lose: torch.Tensor
    ref_win: torch.Tensor
    ref_lose: torch.Tensor


def pair_predictions(policy: nn.Module, model: PairDenoiser, reference: Reference, inputs: PreferenceInputs,
                     scheduler, input_dtype: torch.dtype) -> PairPredictions:
    """Noise winner and loser with the shared (t, ε), run the reference once and the policy once on both.

    ``policy`` is what to call for the gradient pass (``model`` possibly DDP/DeepSpeed-wrapped); ``model`` is the
    unwrapped module (BrushNet, the motion check, the LoRA reference).
    """
    frame_timesteps = inputs.timesteps.repeat_interleave(inputs.num_frames)
    noisy = torch.cat([scheduler.add_noise(inputs.latents_win, inputs.noise, frame_timesteps),
                       scheduler.add_noise(inputs.latents_lose, inputs.noise, frame_timesteps)])
    call = {
        "sample": noisy.to(input_dtype),
        "timestep": inputs.timesteps.repeat(2),
        "encoder_hidden_states": inputs.text.repeat(2, 1, 1).to(input_dtype),
        "conditioning": inputs.conditioning.repeat(2, 1, 1, 1).to(input_dtype),
        "num_frames": inputs.num_frames if isinstance(model.unet, UNetMotionModel) else None,
    }
    brushnet_frozen = not any(p.requires_grad for p in model.brushnet.parameters())
    shared = brushnet_frozen and reference.denoiser.brushnet is model.brushnet
    residuals = None
    if shared:
        with torch.no_grad():
            residuals = model.brushnet(call["sample"], call["timestep"], call["encoder_hidden_states"],
                                       call["conditioning"])
    with torch.no_grad(), reference.active(noisy.device) as denoiser:
        ref_win, ref_lose = inputs.per_pair(denoiser(**call, residuals=residuals)).chunk(2)
    policy_win, policy_lose = inputs.per_pair(policy(**call, residuals=residuals)).chunk(2)
    return PairPredictions(policy_win, policy_lose, ref_win, ref_lose)


@torch.no_grad()
def inversion_noise(reference: Reference, inputs: PreferenceInputs, scheduler, num_steps: int,
                    input_dtype: torch.dtype) -> torch.Tensor:
    """ε of the ``noise: inversion`` ablation → (N, 4, h, w): the winner DDIM-inverted (η = 0) by the reference from
    t = 0 to each pair's t in ``num_steps`` equal steps, as the noise that forward-diffuses the winner onto that
    latent, ``ε̂ = (x_t - √ᾱ_t z_win) / √(1 - ᾱ_t)``. Like the drawn ε it is shared by winner and loser (and by
    policy and reference), so :func:`pair_predictions` and the loss take it unchanged."""
    device = inputs.latents_win.device
    alphas = scheduler.alphas_cumprod.to(device, torch.float64)

    def per_frame(values: torch.Tensor) -> torch.Tensor:
        return values.repeat_interleave(inputs.num_frames).view(-1, 1, 1, 1)

    latents = inputs.latents_win.double()
    with reference.active(device) as denoiser:
        num_frames = inputs.num_frames if isinstance(denoiser.unet, UNetMotionModel) else None
        for step in range(num_steps):
            current = inputs.timesteps * step // num_steps
            following = inputs.timesteps * (step + 1) // num_steps
            eps = denoiser(latents.to(input_dtype), current, inputs.text.to(input_dtype),
                           inputs.conditioning.to(input_dtype), num_frames).double()
            alpha, alpha_next = per_frame(alphas[current]), per_frame(alphas[following])
            clean = (latents - (1 - alpha).sqrt() * eps) / alpha.sqrt()
            latents = alpha_next.sqrt() * clean + (1 - alpha_next).sqrt() * eps
    alpha_t = per_frame(alphas[inputs.timesteps])
    return ((latents - alpha_t.sqrt() * inputs.latents_win.double()) / (1 - alpha_t).sqrt()).float()
