"""vipo.losses against independent references: the diffusers / official Diffusion-DPO formulas, hand-derived
gradients (dpo.md §2), the SD1.5 SNR table (dpo.md §4) and the Exp11 log-ratio recipe (practice.md §3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from vipo.config import Config, ConfigError, validate_config
from vipo.losses import (
    DPOHealthError,
    DPOHealthMonitor,
    DPOLossConfig,
    LogRatioDPOLossConfig,
    RegionRegDPOLossConfig,
    compute_dpo_loss,
    log_ratio_dpo_loss,
    min_snr_weight,
    region_reg_dpo_loss,
    summarize_stats,
)

SHAPE = (3, 4, 2, 5, 6)  # (B, C, F, h, w): 3 pairs of tiny 4-channel, 2-frame latents
MASK_SHAPE = (3, 1, 2, 5, 6)  # masks broadcast over channels
LN2 = math.log(2.0)
FAST = settings(max_examples=25, deadline=None)


def make_batch(seed: int, spread: float = 0.3, dtype=torch.float64, shape=SHAPE):
    """ε and four predictions scattered around it: (noise, policy_win, policy_lose, ref_win, ref_lose)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=gen, dtype=dtype)
    return (noise, *(noise + spread * torch.randn(shape, generator=gen, dtype=dtype) for _ in range(4)))


def exclusive_regions(seed: int, dtype=torch.float64, shape=MASK_SHAPE):
    """Three disjoint binary masks that sum to one (a random label per latent pixel)."""
    labels = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(seed))
    return tuple((labels == r).to(dtype) for r in range(3))


def one_region(index: int, dtype=torch.float64):
    """Region ``index`` covers everything, the other two nothing."""
    return tuple(torch.full((1, 1, 1, 1, 1), float(r == index), dtype=dtype) for r in range(3))


def per_sample_mse(prediction, noise):
    # As the diffusers example: F.mse_loss(reduction="none") averaged over all non-batch dims.
    return F.mse_loss(prediction, noise, reduction="none").mean(dim=list(range(1, noise.ndim)))


def diffusers_dpo(noise, policy_win, policy_lose, ref_win, ref_lose, beta_dpo):
    """The diffusers train_diffusion_dpo.py loss and implicit accuracy (dpo.md §1)."""
    model_diff = per_sample_mse(policy_win, noise) - per_sample_mse(policy_lose, noise)
    ref_diff = per_sample_mse(ref_win, noise) - per_sample_mse(ref_lose, noise)
    logits = ref_diff - model_diff
    loss = -F.logsigmoid(beta_dpo * logits).mean()
    accuracy = (logits > 0).double().mean() + 0.5 * (logits == 0).double().mean()
    return loss, accuracy, model_diff - ref_diff


def official_dpo(noise, policy_win, policy_lose, ref_win, ref_lose, beta_dpo):
    """The official SalesforceAIResearch/DiffusionDPO train.py loss (the −0.5·β convention)."""
    model_diff = per_sample_mse(policy_win, noise) - per_sample_mse(policy_lose, noise)
    ref_diff = per_sample_mse(ref_win, noise) - per_sample_mse(ref_lose, noise)
    inside = -0.5 * beta_dpo * (model_diff - ref_diff)
    return -F.logsigmoid(inside).mean()


# --- Region-Reg-DPO: reductions to published losses ---------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**16), region=st.integers(0, 2), beta=st.floats(0.1, 200.0),
       other_alpha=st.floats(0.0, 3.0))
def test_one_region_equals_diffusers_and_official_dpo(seed, region, beta, other_alpha):
    batch = make_batch(seed)
    alpha = [other_alpha] * 3
    alpha[region] = 1.0  # the empty regions' α must not matter
    loss, stats = region_reg_dpo_loss(*batch, one_region(region), alpha=alpha, rho=(0, 0, 0), beta=beta)
    expected, accuracy, margin = diffusers_dpo(*batch, beta_dpo=beta)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, official_dpo(*batch, beta_dpo=2 * beta), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats["s"], margin, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(stats["implicit_acc"].double(), accuracy)


@FAST
@given(seed=st.integers(0, 2**16), level=st.floats(0.1, 3.0), rho=st.floats(0.0, 200.0))
def test_exclusive_regions_sum_to_plain_mse_and_reg_dpo(seed, level, rho):
    batch = make_batch(seed)
    noise, policy_win = batch[0], batch[1]
    regions = exclusive_regions(seed + 1)
    beta = 7.0
    loss, stats = region_reg_dpo_loss(*batch, regions, alpha=(level,) * 3, rho=(rho,) * 3, beta=beta)
    plain = per_sample_mse(policy_win, noise)
    region_sum = sum(stats[f"mse_win_{name}"] for name in ("hole", "boundary", "context"))
    torch.testing.assert_close(region_sum, plain, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stats["mse_win"], plain)
    areas = sum(stats[f"area_{name}"] for name in ("hole", "boundary", "context"))
    torch.testing.assert_close(areas, torch.ones_like(areas))
    # Uniform α and ρ over a partition of unity: Reg-DPO = Diffusion-DPO(β′·α) + ρ·MSE(winner).
    dpo, _, margin = diffusers_dpo(*batch, beta_dpo=beta * level)
    torch.testing.assert_close(stats["s"], level * margin, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loss, dpo + rho * plain.mean(), rtol=1e-10, atol=1e-10)


# --- step-0 values, gradient, precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 500.0, 1000.0])
def test_identical_policy_and_reference_gives_step0_values(beta):
    noise, policy_win, policy_lose, _, _ = make_batch(3)
    regions = exclusive_regions(4)
    rho = (0.5, 2.0, 0.1)
    loss, stats = region_reg_dpo_loss(
        noise, policy_win, policy_lose, policy_win.clone(), policy_lose.clone(), regions,
        alpha=(1.0, 1.5, 0.05), rho=rho, beta=beta,
    )
    assert torch.equal(stats["s"], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(stats["dgr"], torch.full((3,), beta / 2, dtype=torch.float64))
    assert stats["implicit_acc"].item() == 0.5
    assert stats["dpo_loss"].item() == pytest.approx(LN2, abs=1e-15)
    masked_mse = [(mask * (policy_win - noise) ** 2).flatten(1).mean(1) for mask in regions]
    sft = sum(weight * mse for weight, mse in zip(rho, masked_mse)).mean()
    torch.testing.assert_close(loss, LN2 + sft, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_timestep_weight", [False, True])
def test_gradient_matches_closed_form(with_timestep_weight):
    noise, policy_win, policy_lose, ref_win, ref_lose = make_batch(5)
    for tensor in (policy_win, policy_lose, ref_win, ref_lose):
        tensor.requires_grad_(True)
    regions = exclusive_regions(6)
    alpha, rho, beta = (1.0, 1.7, 0.05), (30.0, 80.0, 2.0), 40.0
    weight = torch.tensor([0.5, 1.0, 1.8], dtype=torch.float64) if with_timestep_weight else None
    loss, stats = region_reg_dpo_loss(
        noise, policy_win, policy_lose, ref_win, ref_lose, regions, alpha=alpha, rho=rho, beta=beta,
        timestep_weight=weight,
    )
    loss.backward()

    # Independent margin and DGR from the textbook masked MSEs, then dpo.md §2's per-element gradient.
    batch, numel = noise.shape[0], noise[0].numel()
    with torch.no_grad():
        def m(mask, prediction):
            return (mask * (noise - prediction) ** 2).flatten(1).sum(1) / numel

        s = sum(a * (m(M, policy_win) - m(M, ref_win) - m(M, policy_lose) + m(M, ref_lose))
                for a, M in zip(alpha, regions))
        scale = beta * (weight if weight is not None else torch.ones(batch, dtype=torch.float64))
        dgr = scale * torch.sigmoid(scale * s)
        assert (s.abs() > 1e-3).all()  # away from s = 0, where σ(x) = σ(−x) would hide a sign error
        torch.testing.assert_close(stats["dgr"], dgr, rtol=1e-12, atol=0)
        dgr = dgr.view(-1, 1, 1, 1, 1)
        grad_win = sum(M * (a * dgr + r) for a, r, M in zip(alpha, rho, regions)) * 2 / numel
        grad_lose = -sum(M * a * dgr for a, M in zip(alpha, regions)) * 2 / numel
        # The loss averages over pairs.
        expected_win = grad_win * (policy_win - noise) / batch
        expected_lose = grad_lose * (policy_lose - noise) / batch
    torch.testing.assert_close(policy_win.grad, expected_win, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(policy_lose.grad, expected_lose, rtol=1e-9, atol=1e-14)
    assert ref_win.grad is None and ref_lose.grad is None  # the reference is a constant even with a graph


def test_bf16_inputs_give_fp32_result():
    batch = make_batch(7, dtype=torch.float32)
    regions = exclusive_regions(8, dtype=torch.float32)
    kwargs = dict(alpha=(1.0, 1.5, 0.05), rho=(1.0, 2.0, 0.0), beta=50.0)
    half = [t.bfloat16() for t in batch]
    loss, stats = region_reg_dpo_loss(*half, tuple(m.bfloat16() for m in regions), **kwargs)
    assert loss.dtype == torch.float32 and stats["s"].dtype == torch.float32
    # No bf16 arithmetic: equal to an fp32 computation on the same (rounded) values ...
    exact, exact_stats = region_reg_dpo_loss(*(t.float() for t in half), regions, **kwargs)
    torch.testing.assert_close(loss, exact, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats["s"], exact_stats["s"], rtol=1e-6, atol=1e-8)
    # ... and within bf16's input rounding of the fp32 result.
    reference, reference_stats = region_reg_dpo_loss(*batch, regions, **kwargs)
    torch.testing.assert_close(loss, reference, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(stats["s"], reference_stats["s"], rtol=5e-2, atol=2e-4)


def test_difference_form_keeps_precision_when_policy_is_near_reference():
    noise, ref_win, ref_lose = make_batch(9, dtype=torch.float32)[::2]
    gen = torch.Generator().manual_seed(10)
    policy_win = ref_win + 1e-5 * torch.randn(SHAPE, generator=gen)
    policy_lose = ref_lose + 1e-5 * torch.randn(SHAPE, generator=gen)
    batch32 = (noise, policy_win, policy_lose, ref_win, ref_lose)
    _, stats = region_reg_dpo_loss(*batch32, one_region(0, torch.float32), alpha=(1, 0, 0), rho=(0, 0, 0), beta=1.0)
    _, _, truth = diffusers_dpo(*(t.double() for t in batch32), beta_dpo=1.0)
    # fp32 MSE differences lose most digits here (even element-wise (ε−a)² − (ε−b)² keeps only ~3); the
    # difference form keeps all but rounding.
    _, _, naive = diffusers_dpo(*batch32, beta_dpo=1.0)
    error = (stats["s"].double() - truth).abs().max().item()
    naive_error = (naive.double() - truth).abs().max().item()
    assert error < 1e-5 * truth.abs().max().item()
    assert error < naive_error / 100


@FAST
@given(log_beta=st.floats(-6.0, 6.0), spread=st.sampled_from([1e-3, 0.3, 3.0]), seed=st.integers(0, 2**16))
def test_extreme_beta_stays_finite(log_beta, spread, seed):
    beta = 10.0**log_beta
    noise, policy_win, policy_lose, ref_win, ref_lose = make_batch(seed, spread=spread, dtype=torch.float32)
    policy_win.requires_grad_(True)
    policy_lose.requires_grad_(True)
    loss, stats = region_reg_dpo_loss(
        noise, policy_win, policy_lose, ref_win, ref_lose, exclusive_regions(seed, torch.float32),
        alpha=(1.0, 1.5, 0.05), rho=(10.0, 20.0, 0.0), beta=beta,
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(policy_win.grad).all() and torch.isfinite(policy_lose.grad).all()
    assert all(torch.isfinite(value).all() for value in stats.values())
    assert ((stats["dgr"] >= 0) & (stats["dgr"] <= beta * (1 + 1e-6))).all()


def test_sft_only_control_is_a_config():
    noise, policy_win, policy_lose, ref_win, ref_lose = make_batch(11)
    policy_win.requires_grad_(True)
    policy_lose.requires_grad_(True)
    regions = exclusive_regions(12)
    config = RegionRegDPOLossConfig(alpha=(0, 0, 0), rho=(2.0, 3.0, 0.5))
    assert not config.has_dpo_term
    loss, stats = compute_dpo_loss(config, noise, policy_win, policy_lose, ref_win, ref_lose, regions)
    loss.backward()
    assert all(torch.isfinite(value).all() for value in stats.values())
    for name in ("hole", "boundary", "context"):
        assert torch.equal(stats[f"dpo_share_{name}"], torch.zeros(3, dtype=torch.float64))

    sft_win = policy_win.detach().clone().requires_grad_(True)
    sft = sum(r * (M * (sft_win - noise) ** 2).flatten(1).mean(1) for r, M in zip(config.rho, regions)).mean()
    sft.backward()
    torch.testing.assert_close(loss, LN2 + sft.detach(), rtol=1e-12, atol=1e-12)  # the constant softplus(0)
    torch.testing.assert_close(policy_win.grad, sft_win.grad)
    assert torch.equal(policy_lose.grad, torch.zeros_like(policy_lose))

    # A region with neither α nor ρ gets no gradient; its DPO share is 0, not NaN.
    _, stats = region_reg_dpo_loss(noise, policy_win, policy_lose, ref_win, ref_lose, regions,
                                   alpha=(0, 0, 0), rho=(0, 0, 0), beta=500.0)
    assert all(torch.isfinite(value).all() for value in stats.values())


def test_loser_dominant_and_region_stats():
    noise, policy_win, _, ref_win, ref_lose = make_batch(13)
    # Winner slightly worse than reference, loser much worse: ranked right only through the loser.
    policy_win = ref_win + 0.05 * (ref_win - noise)
    policy_lose = ref_lose + 0.5 * (ref_lose - noise)
    regions = exclusive_regions(14)
    _, stats = region_reg_dpo_loss(noise, policy_win, policy_lose, ref_win, ref_lose, regions,
                                   alpha=(1.0, 1.0, 1.0), rho=(0, 0, 0), beta=10.0)
    assert (stats["delta_win"] > 0).all() and (stats["s"] < 0).all()
    assert stats["loser_dominant"].item() == 1.0
    assert stats["implicit_acc"].item() == 1.0
    for name in ("hole", "boundary", "context"):
        assert stats[f"implicit_acc_{name}"].item() == 1.0
    torch.testing.assert_close(stats["reward_chosen"], -10.0 * stats["delta_win"])
    summary = summarize_stats(stats, prefix="dpo/")
    assert summary["dpo/loser_dominant"] == 1.0
    assert summary["dpo/dgr_min"] <= summary["dpo/dgr"] <= summary["dpo/dgr_max"]
    assert all(isinstance(value, float) for value in summary.values())


# --- timestep weighting ---------------------------------------------------------------------------------------------


def sd15_alphas_cumprod():
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod


def test_min_snr_weight_matches_sd15_table_and_has_mean_one():
    alphas_cumprod = sd15_alphas_cumprod()
    timesteps = torch.tensor([0, 50, 100, 250, 500, 750, 999])
    log_snr = torch.log(alphas_cumprod / (1 - alphas_cumprod))[timesteps]
    torch.testing.assert_close(log_snr, torch.tensor([7.07, 2.98, 2.14, 0.73, -0.96, -2.82, -5.36]),
                               atol=0.01, rtol=0)
    weight = min_snr_weight(timesteps, alphas_cumprod, gamma=5.0)
    # dpo.md §4: min-SNR-5 before normalisation is .004, .25, .59, 1, 1, 1, 1 (the last one is exactly 1).
    torch.testing.assert_close(weight / weight[-1], torch.tensor([0.004, 0.25, 0.59, 1, 1, 1, 1.0]),
                               atol=0.006, rtol=0)
    every_step = min_snr_weight(torch.arange(1000), alphas_cumprod, gamma=5.0)
    assert every_step.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert weight.dtype == torch.float32 and weight.shape == timesteps.shape


def test_min_snr_weight_handles_zero_and_infinite_snr():
    alphas_cumprod = torch.tensor([1.0, 0.9, 0.5, 0.0])
    weight = min_snr_weight(torch.arange(4), alphas_cumprod, gamma=1.0)
    assert torch.isfinite(weight).all()
    assert weight[0].item() == 0.0 and weight[-1].item() == weight[-2].item()
    with pytest.raises(ValueError, match="timesteps"):
        min_snr_weight(torch.tensor([4]), alphas_cumprod, gamma=1.0)


def test_min_snr_config_passes_timestep_weight():
    batch = make_batch(15)
    regions = exclusive_regions(16)
    alphas_cumprod = sd15_alphas_cumprod()
    timesteps = torch.tensor([10, 400, 900])
    config = RegionRegDPOLossConfig(beta=20.0, timestep_weighting="min_snr", min_snr_gamma=5.0)
    loss, stats = compute_dpo_loss(config, *batch, regions, timesteps=timesteps, alphas_cumprod=alphas_cumprod)
    weight = min_snr_weight(timesteps, alphas_cumprod, 5.0).double()
    expected, expected_stats = region_reg_dpo_loss(*batch, regions, alpha=config.alpha, rho=config.rho, beta=20.0,
                                                   timestep_weight=weight)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["logit"], 20.0 * weight * stats["s"])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        compute_dpo_loss(config, *batch, regions)


# --- log-ratio variant ----------------------------------------------------------------------------------------------

EXP11 = dict(region_weights=(1.0, 0.75, 0.05), beta=10.0, lose_weight=0.25, lose_clip=1.0,
             win_anchor_weight=0.05, win_gap_weight=1.0, eps=1e-6)


def weighted_mse(prediction, noise, regions, region_weights):
    """Σw·mse/Σw with the weight map w = Σ_r weight_r·M_r, written out element-wise."""
    weight = sum(r * M for r, M in zip(region_weights, regions)).expand_as(noise)
    return (weight * (prediction - noise) ** 2).flatten(1).sum(1) / weight.flatten(1).sum(1)


def log_ratios(batch, regions, region_weights, eps):
    noise, policy_win, policy_lose, ref_win, ref_lose = batch

    def g(policy, ref):
        m = weighted_mse(policy, noise, regions, region_weights)
        m_ref = weighted_mse(ref, noise, regions, region_weights)
        return torch.log((m + eps) / (m_ref + eps))

    return g(policy_win, ref_win), g(policy_lose, ref_lose)


@FAST
@given(seed=st.integers(0, 2**16), beta=st.floats(0.5, 100.0), clip=st.sampled_from([None, math.inf]))
def test_log_ratio_reduces_to_plain_form(seed, beta, clip):
    batch = make_batch(seed)
    regions = exclusive_regions(seed + 1)
    knobs = dict(EXP11, beta=beta, lose_weight=1.0, lose_clip=clip, win_anchor_weight=0.0, win_gap_weight=0.0)
    loss, stats = log_ratio_dpo_loss(*batch, regions, **knobs)
    g_win, g_lose = log_ratios(batch, regions, knobs["region_weights"], knobs["eps"])
    expected = -F.logsigmoid(-0.5 * beta * (g_win - g_lose)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(stats["g_win"], g_win, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(stats["s"], g_win - g_lose, rtol=1e-9, atol=1e-12)


def test_log_ratio_clip_caps_the_loser_gap():
    noise, policy_win, _, ref_win, ref_lose = make_batch(17)
    policy_lose = (ref_lose + 2.0 * (ref_lose - noise)).requires_grad_(True)  # loser far worse: g_l ≈ log 9
    regions = exclusive_regions(18)
    batch = (noise, policy_win, policy_lose, ref_win, ref_lose)
    knobs = dict(EXP11, win_anchor_weight=0.0, win_gap_weight=0.0, lose_clip=0.5)
    loss, stats = log_ratio_dpo_loss(*batch, regions, **knobs)
    loss.backward()
    g_win, g_lose = log_ratios(batch, regions, knobs["region_weights"], knobs["eps"])
    assert (g_lose > 0.5).all() and stats["lose_clipped"].item() == 1.0
    expected = -F.logsigmoid(-0.5 * 10.0 * (g_win - 0.25 * 0.5)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
    assert torch.equal(policy_lose.grad, torch.zeros_like(policy_lose))  # a clipped loser is not pushed further

    policy_lose.grad = None
    unclipped, _ = log_ratio_dpo_loss(*batch, regions, **dict(knobs, lose_clip=None))
    unclipped.backward()
    assert policy_lose.grad.abs().max() > 0


def test_log_ratio_winner_anchor_and_hinge():
    noise, _, policy_lose, ref_win, ref_lose = make_batch(19)
    regions = exclusive_regions(20)
    base = dict(EXP11, win_anchor_weight=0.0, win_gap_weight=0.0)
    worse_win = ref_win + 0.3 * (ref_win - noise)  # g_w > 0: the hinge acts
    better_win = noise + 0.5 * (ref_win - noise)  # g_w < 0: the hinge is silent
    for policy_win, hinge_active in ((worse_win, True), (better_win, False)):
        batch = (noise, policy_win, policy_lose, ref_win, ref_lose)
        g_win, _ = log_ratios(batch, regions, base["region_weights"], base["eps"])
        m_win = weighted_mse(policy_win, noise, regions, base["region_weights"])
        plain, _ = log_ratio_dpo_loss(*batch, regions, **base)
        anchored, stats = log_ratio_dpo_loss(*batch, regions, **dict(base, win_anchor_weight=0.3))
        torch.testing.assert_close(anchored - plain, 0.3 * m_win.mean(), rtol=1e-9, atol=1e-12)
        hinged, stats = log_ratio_dpo_loss(*batch, regions, **dict(base, win_gap_weight=2.0))
        expected_hinge = 2.0 * g_win.clamp(min=0).mean()
        torch.testing.assert_close(hinged - plain, expected_hinge, rtol=1e-9, atol=1e-12)
        assert (expected_hinge > 0).item() == hinge_active
        assert stats["win_gap_active"].item() == float(hinge_active)


def test_log_ratio_step0_values_and_extreme_beta():
    noise, policy_win, policy_lose, _, _ = make_batch(21)
    regions = exclusive_regions(22)
    batch = (noise, policy_win, policy_lose, policy_win.clone(), policy_lose.clone())
    loss, stats = log_ratio_dpo_loss(*batch, regions, **EXP11)
    assert torch.equal(stats["s"], torch.zeros(3, dtype=torch.float64))
    assert stats["implicit_acc"].item() == 0.5
    torch.testing.assert_close(stats["dgr"], torch.full((3,), 10.0 / 4, dtype=torch.float64))
    m_win = weighted_mse(policy_win, noise, regions, EXP11["region_weights"])
    torch.testing.assert_close(loss, LN2 + 0.05 * m_win.mean(), rtol=1e-12, atol=1e-12)
    for beta in (1e-6, 1e6):
        spread_batch = make_batch(23, spread=3.0, dtype=torch.float32)
        loss, stats = log_ratio_dpo_loss(*spread_batch, exclusive_regions(24, torch.float32),
                                         **dict(EXP11, beta=beta))
        assert torch.isfinite(loss) and all(torch.isfinite(value).all() for value in stats.values())


# --- config ---------------------------------------------------------------------------------------------------------


class TrainerStub(Config):
    loss: DPOLossConfig = RegionRegDPOLossConfig()


def test_config_selects_variant_by_kind():
    config = validate_config(TrainerStub, {"loss": {"kind": "log_ratio", "beta": 5, "lose_clip": None}})
    assert isinstance(config.loss, LogRatioDPOLossConfig) and config.loss.lose_clip is None
    config = validate_config(TrainerStub, {"loss": {"kind": "region_reg_dpo", "alpha": [1, 2, 0.1]}})
    assert isinstance(config.loss, RegionRegDPOLossConfig) and config.loss.alpha == (1.0, 2.0, 0.1)
    assert isinstance(TrainerStub().loss, RegionRegDPOLossConfig)

    batch = make_batch(25)
    regions = exclusive_regions(26)
    for loss_config, direct in (
        (RegionRegDPOLossConfig(beta=30.0, rho=(1, 2, 0)),
         lambda: region_reg_dpo_loss(*batch, regions, alpha=(1.0, 1.5, 0.05), rho=(1, 2, 0), beta=30.0)),
        (LogRatioDPOLossConfig(), lambda: log_ratio_dpo_loss(*batch, regions, **EXP11)),
    ):
        loss, stats = compute_dpo_loss(loss_config, *batch, regions)
        torch.testing.assert_close(loss, direct()[0])
        assert {"s", "logit", "dgr", "implicit_acc", "loser_dominant", "dpo_loss", "s_hole"} <= stats.keys()


@pytest.mark.parametrize(
    ("loss", "key"),
    [
        ({"kind": "ipo"}, "loss"),
        ({"beta": 500}, "loss"),
        ({"kind": "region_reg_dpo", "alpha": [1, -1, 0]}, "loss.alpha.1"),
        ({"kind": "region_reg_dpo", "alpha": [1, 1.5, 0]},
         r"loss: alpha \[1.0, 1.5, 0.0\]: alpha_c = 0 leaves the context out"),
        ({"kind": "region_reg_dpo", "rho": [1, 2]}, "loss.rho"),
        ({"kind": "region_reg_dpo", "beta": 0}, "loss.beta"),
        ({"kind": "region_reg_dpo", "timestep_weighting": "elbo"}, "loss.timestep_weighting"),
        ({"kind": "log_ratio", "region_weights": [0, 0, 0]}, "loss: "),
        ({"kind": "log_ratio", "eps": 0}, "loss.eps"),
        ({"kind": "log_ratio", "tau": 1.0}, "loss.tau"),
    ],
)
def test_config_rejects_bad_values(loss, key):
    """Keys as the user writes them: the union's tag (``kind``) is not part of the path."""
    with pytest.raises(ConfigError, match=f"job.yaml: {key}"):
        validate_config(TrainerStub, {"loss": loss}, source="job.yaml")


def test_boolean_masks_from_decompose_are_accepted():
    batch = make_batch(35)
    regions = exclusive_regions(36)
    kwargs = dict(alpha=(1.0, 1.5, 0.05), rho=(1.0, 2.0, 0.0), beta=5.0)
    as_bool, _ = region_reg_dpo_loss(*batch, tuple(mask.bool() for mask in regions), **kwargs)
    torch.testing.assert_close(as_bool, region_reg_dpo_loss(*batch, regions, **kwargs)[0])


def test_bad_inputs_name_the_problem():
    batch = list(make_batch(27))
    regions = exclusive_regions(28)
    kwargs = dict(alpha=(1, 1, 1), rho=(0, 0, 0), beta=1.0)
    with pytest.raises(ValueError, match="policy_lose has shape"):
        region_reg_dpo_loss(batch[0], batch[1], batch[2][:2], batch[3], batch[4], regions, **kwargs)
    with pytest.raises(ValueError, match="3 masks"):
        region_reg_dpo_loss(*batch, regions[:2], **kwargs)
    with pytest.raises(ValueError, match="boundary mask of shape"):
        region_reg_dpo_loss(*batch, (regions[0], torch.ones(3, 4, 2, 5, 7), regions[2]), **kwargs)
    with pytest.raises(ValueError, match="alpha values"):
        region_reg_dpo_loss(*batch, regions, **dict(kwargs, alpha=(1, -1, 1)))
    with pytest.raises(ValueError, match="beta"):
        region_reg_dpo_loss(*batch, regions, **dict(kwargs, beta=0.0))
    with pytest.raises(ValueError, match="timestep_weight"):
        region_reg_dpo_loss(*batch, regions, **kwargs, timestep_weight=torch.ones(2))


# --- health monitor -------------------------------------------------------------------------------------------------


def region_stats(policy_win, policy_lose, ref_win, ref_lose, noise, alpha=(1.0, 1.5, 0.05), beta=500.0):
    return region_reg_dpo_loss(noise, policy_win, policy_lose, ref_win, ref_lose, exclusive_regions(29),
                               alpha=alpha, rho=(0, 0, 0), beta=beta)[1]


def test_health_monitor_step0():
    noise, policy_win, policy_lose, _, _ = make_batch(30, dtype=torch.float32)
    identical = region_stats(policy_win, policy_lose, policy_win, policy_lose, noise)
    assert DPOHealthMonitor().check(0, identical) == []
    # A reference pass that is slightly off (as a different dtype or a dropout mask would make it).
    gen = torch.Generator().manual_seed(31)
    shifted = region_stats(policy_win, policy_lose, policy_win + 1e-2 * torch.randn(SHAPE, generator=gen),
                           policy_lose, noise)
    with pytest.raises(DPOHealthError, match="step 0") as failure:
        DPOHealthMonitor().check(0, shifted)
    assert all(word in str(failure.value) for word in ("ε and t", "dropout", "dtype"))
    assert DPOHealthMonitor(identical_start=False).check(0, shifted) == []
    assert DPOHealthMonitor().check(1, shifted) == []  # only step 0 (a resumed run starts later)


def test_health_monitor_flags_dgr_collapse_once_early():
    noise, _, policy_lose, ref_win, _ = make_batch(32, dtype=torch.float32)
    # Policy much better on the winner: β′s ≈ −30, DGR ≈ 1e-11 of β′/2.
    collapsed = region_stats(noise + 0.01 * (ref_win - noise), policy_lose, ref_win, policy_lose, noise)
    monitor = DPOHealthMonitor()
    (warning,) = monitor.check(3, collapsed)
    assert warning.code == "dgr_collapse" and warning.step == 3 and "β′" in warning.message
    assert monitor.check(4, collapsed) == []
    assert DPOHealthMonitor().check(12, collapsed) == []  # a low DGR late in training is the normal end state


def test_health_monitor_flags_an_exploded_winner_gap_at_huge_beta():
    noise, _, _, ref_win, ref_lose = make_batch(36, dtype=torch.float32)
    # The policy drifted from the reference by a small step on both samples (as after a few updates): its
    # ε-prediction error on the winner grew a little.
    drift = 0.02 * torch.randn(ref_win.shape, generator=torch.Generator().manual_seed(1))
    policy_win, policy_lose = ref_win + drift, ref_lose + drift
    for beta, flagged in ((500.0, False), (1.0e7, True)):
        stats = region_stats(policy_win, policy_lose, ref_win, ref_lose, noise, beta=beta)
        # The implicit winner reward is −β′ times the α-weighted policy − reference ε-MSE gap on the winner.
        torch.testing.assert_close(stats["reward_chosen"], -beta * stats["delta_win"])
        assert ((beta * stats["delta_win"]).mean().item() > 10) is flagged
        codes = [w.code for w in DPOHealthMonitor(identical_start=False).check(2, stats)]
        assert ("win_gap_explosion" in codes) is flagged
    # Getting better on the winner by as much is the normal course of training, not an explosion.
    better = region_stats(ref_win, policy_lose, policy_win, ref_lose, noise, beta=1.0e7)
    assert better["reward_chosen"].mean() > 10
    assert "win_gap_explosion" not in [w.code for w in DPOHealthMonitor(identical_start=False).check(20, better)]
    log_ratio = LogRatioDPOLossConfig(beta=1.0e4).compute(noise, policy_win, policy_lose, ref_win, ref_lose,
                                                          exclusive_regions(29))[1]
    torch.testing.assert_close(log_ratio["reward_chosen"], -0.5 * 1.0e4 * log_ratio["g_win"])


def test_health_monitor_flags_exact_ln2_for_many_steps():
    noise, policy_win, policy_lose, _, _ = make_batch(33, dtype=torch.float32)
    identical = region_stats(policy_win, policy_lose, policy_win, policy_lose, noise)
    moving = region_stats(policy_win, policy_lose, policy_win * 1.01, policy_lose, noise)
    monitor = DPOHealthMonitor(stuck_steps=20)
    for step in range(19):
        assert monitor.check(step, identical) == []
    assert monitor.check(19, moving) == []  # progress resets the count
    for step in range(20, 39):
        assert monitor.check(step, identical) == []
    (warning,) = monitor.check(39, identical)
    assert warning.code == "stuck_at_ln2" and "not updating" in warning.message
    assert monitor.check(40, identical) == [] and [w.code for w in monitor.warnings] == ["stuck_at_ln2"]


def test_health_monitor_ignores_sft_only_control():
    noise, policy_win, policy_lose, ref_win, ref_lose = make_batch(34, dtype=torch.float32)
    config = RegionRegDPOLossConfig(alpha=(0, 0, 0), rho=(100, 200, 0))
    stats = region_stats(policy_win, policy_lose, ref_win, ref_lose, noise, alpha=config.alpha)
    monitor = DPOHealthMonitor(dpo_active=config.has_dpo_term, stuck_steps=5)
    assert all(monitor.check(step, stats) == [] for step in range(10))
