"""Stage 3 (Region-Reg-DPO with LoRA): the LoRA target set, the shared-ε forward, what trains and what never moves,
a 20-step preference fit, the step-0 health check, export (merged vs adapter) and the hybrid composition.

The end-to-end recipe run through Ray Train lives in ``test_stage3_recipe.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from diffusers import DDPMScheduler, UNetMotionModel
from peft.tuners.lora import LoraLayer

from vipo.losses import DPOHealthError, DPOHealthMonitor, RegionRegDPOLossConfig, compute_dpo_loss
from vipo.models.lora import SPATIAL_ATTENTION_TARGETS, add_spatial_lora
from vipo.models.tiny import SD15_SCHEDULER_CONFIG, TINY_UNET_CONFIG, tiny_brushnet, tiny_motion_adapter, tiny_unet
from vipo.regions import decompose
from vipo.train.dpo_step import PairDenoiser, PreferenceInputs, Reference, inversion_noise, pair_predictions

NUM_PAIRS, NUM_FRAMES, LATENT = 2, 2, 4  # 2 pairs of 2-frame clips at 32×32 px = 4×4 latents
LOSS = RegionRegDPOLossConfig(beta=500.0, alpha=(1.0, 1.5, 0.05), rho=(0.0, 0.0, 0.0))


def lora_targets(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def expected_spatial_projections(config: dict) -> int:
    """From the UNet config, not from module names: every CrossAttn down block has ``layers_per_block``
    transformers, every CrossAttn up block one more, the mid block one; each has self- and cross-attention with
    four projections (q, k, v, out)."""
    down = sum(config["layers_per_block"] for kind in config["down_block_types"] if kind.startswith("CrossAttn"))
    up = sum(config["layers_per_block"] + 1 for kind in config["up_block_types"] if kind.startswith("CrossAttn"))
    return (down + up + 1) * 2 * 4


def build_policy(motion: bool = True) -> PairDenoiser:
    """A tiny DiffuEraser, stage 2 (motion UNet + BrushNet) or stage 1 (2-D UNet), frozen, with a fresh
    spatial-attention LoRA (rank 4, alpha 8; B = 0)."""
    torch.manual_seed(0)
    unet_2d = tiny_unet()
    unet = UNetMotionModel.from_unet2d(unet_2d, tiny_motion_adapter()) if motion else unet_2d
    policy = PairDenoiser(unet, tiny_brushnet(unet_2d))
    policy.requires_grad_(False)
    add_spatial_lora(policy.unet, rank=4, alpha=8, seed=0)
    return policy


@pytest.fixture(scope="module")
def stage2_policy() -> PairDenoiser:
    return build_policy()


@pytest.fixture
def policy(stage2_policy) -> PairDenoiser:
    """A fresh copy per test (building one costs seconds on a loaded machine)."""
    return copy.deepcopy(stage2_policy)


def synthetic_pairs(seed: int = 0) -> PreferenceInputs:
    """A fixed tiny preference set: latents, conditioning, text, one t and one ε per pair, moving-box regions."""
    gen = torch.Generator().manual_seed(seed)
    frames = NUM_PAIRS * NUM_FRAMES
    latents = torch.randn(frames, 4, LATENT, LATENT, generator=gen)
    hole = torch.zeros(NUM_PAIRS, NUM_FRAMES, 1, LATENT, LATENT)
    hole[:, :, :, 1:3, 1:3] = 1
    hole[1, 1, :, 0, 0] = 1
    regions = tuple(mask.float() for mask in decompose(hole, 7, latent_factor=8))
    known = 1 - hole.reshape(frames, 1, LATENT, LATENT)
    return PreferenceInputs(
        latents_win=latents,
        latents_lose=latents + 0.5 * torch.randn(latents.shape, generator=gen),
        conditioning=torch.cat([latents * known, known], dim=1),
        text=torch.randn(NUM_PAIRS, 77, TINY_UNET_CONFIG["cross_attention_dim"], generator=gen),
        timesteps=torch.tensor([300, 700]),
        noise=torch.randn(latents.shape, generator=gen),
        regions=regions, num_clips=NUM_PAIRS, num_frames=NUM_FRAMES,
    )


SCHEDULER = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)


def dpo_loss(predictions, inputs: PreferenceInputs):
    return compute_dpo_loss(LOSS, inputs.per_pair(inputs.noise), predictions.policy_win, predictions.policy_lose,
                            predictions.ref_win, predictions.ref_lose, inputs.regions)


def assert_same_prediction(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    """Equal up to kernel-choice noise (SDPA differs with and without autograd); not bit-equality."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def test_lora_targets_exactly_the_spatial_attention_projections(policy):
    names = lora_targets(policy)
    assert len(names) == expected_spatial_projections(TINY_UNET_CONFIG) == 128
    assert all(".attentions." in n and n.rsplit(".", 1)[-1] in {"to_q", "to_k", "to_v"} or n.endswith("to_out.0")
               for n in names)
    assert not [n for n in names if "motion_modules" in n or n.startswith("brushnet")]
    assert not [m for m in policy.modules() if isinstance(m, LoraLayer) and isinstance(m.base_layer, torch.nn.Conv2d)]
    # The motion UNet has the same spatial projections as the 2-D UNet it was built from, plus 4 per motion attention.
    motion_attention = sum(1 for n, _ in policy.unet.named_modules() if "motion_modules" in n and n.endswith(".to_q"))
    assert motion_attention > 0
    unet_2d = tiny_unet()
    add_spatial_lora(unet_2d, rank=2, alpha=2, seed=0)
    assert len(lora_targets(unet_2d)) == 128
    assert all(p.requires_grad == ("lora_" in n) for n, p in policy.named_parameters())


def test_brushnet_runs_once_and_policy_equals_reference_at_start(policy):
    inputs = synthetic_pairs()
    calls, unet_calls = [], []
    hooks = [policy.brushnet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0])),
             # The UNet runs block by block (BrushNet residuals injected), so count passes at its conv_in.
             policy.unet.conv_in.register_forward_hook(lambda module, args, out: unet_calls.append(args[0].shape[0]))]
    predictions = pair_predictions(policy, policy, Reference(policy, adapter_off=True), inputs, SCHEDULER,
                                   torch.float32)
    for hook in hooks:
        hook.remove()
    assert calls == [2 * NUM_PAIRS * NUM_FRAMES]  # once, on [winner; loser]
    assert unet_calls == [2 * NUM_PAIRS * NUM_FRAMES] * 2  # the reference once, the policy once, each batched
    assert predictions.policy_win.shape == (NUM_PAIRS, NUM_FRAMES, 4, LATENT, LATENT)
    assert predictions.policy_win.requires_grad and not predictions.ref_win.requires_grad
    # LoRA B = 0: the policy pass equals the adapter-disabled reference pass, up to the fp32 noise of SDPA picking
    # another kernel with autograd on (~5e-7); a live adapter or unshared noise is off by far more.
    assert_same_prediction(predictions.policy_win, predictions.ref_win)
    assert_same_prediction(predictions.policy_lose, predictions.ref_lose)
    assert not torch.allclose(predictions.policy_win, predictions.policy_lose, atol=1e-2)
    loss, stats = dpo_loss(predictions, inputs)
    assert stats["s"].abs().max() < 1e-4 and float(stats["implicit_acc"]) == 0.5
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert DPOHealthMonitor().check(0, stats) == []


def test_bf16_autocast_keeps_policy_and_reference_identical_and_the_loss_in_fp32(policy):
    inputs = synthetic_pairs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predictions = pair_predictions(policy, policy, Reference(policy, adapter_off=True), inputs, SCHEDULER,
                                       torch.float32)
        with torch.autocast("cpu", enabled=False):  # what the recipe does around the loss
            loss, stats = dpo_loss(predictions, inputs)
    assert predictions.policy_win.dtype == torch.bfloat16
    assert_same_prediction(predictions.policy_win.float(), predictions.ref_win.float(), atol=2e-2)  # bf16 ulp
    assert loss.dtype == torch.float32 and stats["s"].dtype == torch.float32 and stats["s"].abs().max() < 1e-2


def test_step0_health_check_raises_when_noise_is_not_shared(policy):
    inputs = synthetic_pairs()
    reference = Reference(policy, adapter_off=True)
    shared = pair_predictions(policy, policy, reference, inputs, SCHEDULER, torch.float32)
    # The classic bug: the reference pass draws its own ε (here for the same latents and t).
    other_noise = dataclasses.replace(inputs, noise=torch.randn(inputs.noise.shape))
    unshared = pair_predictions(policy, policy, reference, other_noise, SCHEDULER, torch.float32)
    broken = dataclasses.replace(shared, ref_win=unshared.ref_win, ref_lose=unshared.ref_lose)
    _, stats = dpo_loss(broken, inputs)
    with pytest.raises(DPOHealthError, match="step 0: the policy and the reference disagree"):
        DPOHealthMonitor().check(0, stats)


class StandIn:
    """A reference ε-predictor ``a·x + b`` (no UNet), recording the timesteps it is called at."""

    unet = None

    def __init__(self, scale: float, offset: float):
        self.scale, self.offset, self.timesteps = scale, offset, []

    def __call__(self, sample, timestep, text, conditioning, num_frames=None):
        self.timesteps.append(timestep.tolist())
        return self.scale * sample + self.offset


def test_inversion_noise_is_the_reference_ddim_inversion_of_the_winner():
    inputs = synthetic_pairs()
    alphas = SCHEDULER.alphas_cumprod.double()
    alpha_t = alphas[inputs.timesteps].repeat_interleave(NUM_FRAMES).view(-1, 1, 1, 1)
    alpha_0, winner = alphas[0], inputs.latents_win.double()
    # A constant prediction c: every DDIM step keeps x0 = (z - √(1-ᾱ_0) c) / √ᾱ_0, so x_t = √ᾱ_t x0 + √(1-ᾱ_t) c.
    constant = StandIn(0.0, 0.3)
    noise = inversion_noise(Reference(constant, adapter_off=False), inputs, SCHEDULER, 5, torch.float32)
    clean = (winner - (1 - alpha_0).sqrt() * 0.3) / alpha_0.sqrt()
    inverted = alpha_t.sqrt() * clean + (1 - alpha_t).sqrt() * 0.3
    torch.testing.assert_close(noise.double(), (inverted - alpha_t.sqrt() * winner) / (1 - alpha_t).sqrt(),
                               rtol=1e-5, atol=1e-5)
    assert constant.timesteps == [[300 * k // 5, 700 * k // 5] for k in range(5)]  # equal steps per pair from 0
    # One step with a prediction of the latents: ε = 0.5 z + 0.1 evaluated on the winner at t = 0.
    linear = StandIn(0.5, 0.1)
    noise = inversion_noise(Reference(linear, adapter_off=False), inputs, SCHEDULER, 1, torch.float32).double()
    eps = 0.5 * winner + 0.1
    inverted = alpha_t.sqrt() * (winner - (1 - alpha_0).sqrt() * eps) / alpha_0.sqrt() + (1 - alpha_t).sqrt() * eps
    torch.testing.assert_close(noise, (inverted - alpha_t.sqrt() * winner) / (1 - alpha_t).sqrt(),
                               rtol=1e-5, atol=1e-5)
    # Forward-diffusing the winner with it lands on the inverted latent; the loser gets the same ε.
    torch.testing.assert_close(SCHEDULER.add_noise(winner, noise, inputs.timesteps.repeat_interleave(NUM_FRAMES)),
                               inverted, rtol=1e-5, atol=1e-5)


def test_inversion_noise_with_the_tiny_reference_feeds_the_shared_forward(policy):
    inputs = synthetic_pairs()
    reference = Reference(policy, adapter_off=True)
    noise = inversion_noise(reference, inputs, SCHEDULER, 3, torch.float32)
    assert noise.shape == inputs.noise.shape and torch.isfinite(noise).all()
    inverted = dataclasses.replace(inputs, noise=noise)
    predictions = pair_predictions(policy, policy, reference, inverted, SCHEDULER, torch.float32)
    assert torch.equal(predictions.policy_win, predictions.ref_win)  # policy = reference at start, as ever
    _, stats = dpo_loss(predictions, inverted)
    assert stats["s"].eq(0).all()


@pytest.fixture(scope="module")
def fitted():
    """20 AdamW steps of the real forward + Region-Reg-DPO loss on a fixed tiny preference set (fixed t, ε); the
    stage-1 (2-D) model keeps it quick, the LoRA and reference mechanics are those of stage 2."""
    policy, inputs = build_policy(motion=False), synthetic_pairs()
    reference = Reference(policy, adapter_off=True)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    probe = {"sample": torch.randn(4, 4, LATENT, LATENT), "timestep": torch.tensor([500]),
             "encoder_hidden_states": inputs.text[:1], "conditioning": inputs.conditioning[:4]}
    with torch.no_grad(), reference.active(torch.device("cpu")) as ref:
        ref_before = ref(**probe)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(20):
        predictions = pair_predictions(policy, policy, reference, inputs, SCHEDULER, torch.float32)
        loss, stats = dpo_loss(predictions, inputs)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        history.append({k: stats[k].clone() for k in ("s", "implicit_acc", "dgr")})
    with torch.no_grad(), reference.active(torch.device("cpu")) as ref:
        ref_after = ref(**probe)
    return policy, before, history, ref_before, ref_after


def test_twenty_steps_drive_s_negative_and_implicit_accuracy_up(fitted):
    _, _, history, _, _ = fitted
    assert history[0]["s"].eq(0).all() and float(history[0]["implicit_acc"]) == 0.5
    assert history[0]["dgr"] == pytest.approx(torch.full((NUM_PAIRS,), LOSS.beta / 2))
    assert (history[-1]["s"] < 0).all()
    assert float(history[-1]["implicit_acc"]) == 1.0
    early = torch.stack([h["s"].mean() for h in history[1:6]]).mean()
    late = torch.stack([h["s"].mean() for h in history[-5:]]).mean()
    assert late < early < 0


def test_only_lora_parameters_change_and_the_reference_never_does(fitted):
    policy, before, _, ref_before, ref_after = fitted
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    assert torch.equal(ref_before, ref_after)


def test_reference_with_separate_weights_runs_on_its_own_brushnet_and_offloads(policy):
    frozen_copy = copy.deepcopy(policy)  # the policy's starting weights, as a full-tuning reference holds them
    frozen_copy.unet.unload_lora()
    reference = Reference(frozen_copy, adapter_off=False, offload=True,
                          own_modules=[frozen_copy.unet, frozen_copy.brushnet])
    calls = []
    for brushnet in (policy.brushnet, frozen_copy.brushnet):
        brushnet.register_forward_hook(lambda module, args, output: calls.append(module))
    predictions = pair_predictions(policy, policy, reference, synthetic_pairs(), SCHEDULER, torch.float32)
    assert_same_prediction(predictions.policy_win, predictions.ref_win)
    assert calls == [frozen_copy.brushnet, policy.brushnet]  # not shared: each pass runs its own
    assert next(frozen_copy.unet.parameters()).device.type == "cpu"


def test_lora_regex_is_a_full_match():
    import re

    pattern = re.compile(SPATIAL_ATTENTION_TARGETS)
    assert pattern.fullmatch("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0")
    assert pattern.fullmatch("mid_block.attentions.0.transformer_blocks.0.attn1.to_k")
    for name in ("down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q",
                 "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.1",
                 "down_blocks.0.attentions.0.proj_in", "down_blocks.0.resnets.0.conv1",
                 "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"):
        assert not pattern.fullmatch(name)
