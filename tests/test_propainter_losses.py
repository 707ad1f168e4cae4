"""ProPainter training losses on hand-built cases: zero for a perfect prediction, a hand-computed value for a simple
one (formulas from the ProPainter paper / its training code)."""

from __future__ import annotations

import math

import pytest
import torch

from vipo.config import ConfigError, validate_config
from vipo.losses.propainter import (
    FlowCompletionLossConfig,
    InpaintingLossConfig,
    balanced_edge_bce,
    census_loss,
    first_order_smoothness,
    flow_completion_loss,
    flow_edges,
    hinge_discriminator_loss,
    hinge_generator_loss,
    hole_valid_l1,
    second_order_smoothness,
    warp_confidence,
)
from vipo.losses.vgg import VGGFeatures, VGGLossConfig, perceptual_style_losses
from vipo.models.propainter import flow_warp

FLOOR = (1e-3**2) ** 0.45  # Charbonnier of a zero difference


def test_hole_valid_l1_is_the_mean_error_per_region():
    target = torch.zeros(1, 2, 3, 4, 4)
    holes = torch.zeros(1, 2, 1, 4, 4)
    holes[..., :2, :] = 1  # half the pixels
    prediction = target.clone()
    assert [float(v) for v in hole_valid_l1(prediction, target, holes)] == [0.0, 0.0]
    prediction[..., :2, :] = 0.5  # error 0.5 in the hole only
    prediction[..., 2:, :] = -0.2
    hole, valid = hole_valid_l1(prediction, target, holes)
    assert hole.item() == pytest.approx(0.5) and valid.item() == pytest.approx(0.2)


def test_smoothness_of_constant_and_linear_flows():
    holes = torch.ones(1, 1, 6, 6)
    constant = torch.full((1, 2, 6, 6), 3.0)
    assert first_order_smoothness(constant, holes).item() == pytest.approx(FLOOR * 60 / 72)  # 2 x 30 differences
    assert second_order_smoothness(constant, holes).item() == pytest.approx(FLOOR * 4 * 16 / (4 * 36))
    # A linear ramp along x (slope 1 in both channels): |dx| = 1, dy = 0; every second difference is 0.
    ramp = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 2, 6, 6)
    expected_first = (2 * 6 * 5 * (1 + 1e-6) ** 0.45 + 2 * 5 * 6 * FLOOR) / (2 * 2 * 36)
    assert first_order_smoothness(ramp, holes).item() == pytest.approx(expected_first)
    assert second_order_smoothness(ramp, holes).item() == pytest.approx(FLOOR * 4 * 16 / (4 * 36))
    assert first_order_smoothness(ramp, torch.zeros(1, 1, 6, 6)).item() == 0.0  # outside the hole nothing counts


def _shifted_pair(shift: int = 1, size: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    current = torch.rand(1, 3, size, size) * 2 - 1
    following = torch.roll(current, shifts=shift, dims=-1)  # content moves right by `shift`
    flow = torch.zeros(1, 2, size, size)
    flow[:, 0] = shift
    return current, following, flow


def test_census_is_zero_for_the_true_flow_and_positive_otherwise():
    current, following, flow = _shifted_pair()
    holes = torch.zeros(1, 1, 12, 12)
    holes[..., 3:9, 3:8] = 1  # away from the wrapped border
    confidence = warp_confidence(current, following, flow)
    assert confidence[holes.bool()].min() > 0.999
    assert census_loss(current, flow_warp(following, flow), confidence, holes).item() == pytest.approx(0, abs=1e-6)
    assert census_loss(current, flow_warp(following, flow * 0), confidence, holes).item() > 0.1


def test_census_of_a_uniform_brightness_change_is_zero_and_of_an_inverted_patch_known():
    current = torch.zeros(1, 3, 5, 5)
    current[..., 2, 2] = 1.0  # one bright pixel (grey 255) on a mid-grey (127.5) background
    confidence, holes = torch.ones(1, 1, 5, 5), torch.zeros(1, 1, 5, 5)
    holes[..., 2, 2] = 1
    assert census_loss(current, current + 0.2, confidence, holes).item() == pytest.approx(0, abs=1e-6)
    # At the centre all 8 neighbours differ by -127.5 in one image and +127.5 in the other (inverted).
    d = 127.5 / math.sqrt(0.81 + 127.5**2)
    distance = (2 * d) ** 2
    expected = 8 * distance / (0.1 + distance) * (1 / 25) / (1 / 25)
    assert census_loss(current, -current, confidence, holes).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_edge_bce_perfect_and_known():
    edges = torch.zeros(1, 1, 1, 2, 2)
    edges[..., 0, 0] = 1  # 1 edge pixel of 4
    assert balanced_edge_bce(edges, edges).item() == pytest.approx(0, abs=1e-9)
    half = torch.full_like(edges, 0.5)
    # Edge pixel weight 3/4, non-edge weights 1/4, each BCE ln 2; mean over 4 pixels.
    assert balanced_edge_bce(half, edges).item() == pytest.approx((0.75 + 3 * 0.25) * math.log(2) / 4)


def test_flow_edges_follow_the_motion_boundary():
    flows = torch.zeros(1, 2, 32, 32)
    flows[:, 0, :, 16:] = 4.0  # left half still, right half moving
    edges = flow_edges(flows)[0, 0]
    columns = edges.nonzero()[:, 1]
    assert edges.shape == (32, 32) and len(columns) > 0
    assert set(columns.tolist()) <= {15, 16}
    assert flow_edges(torch.zeros(1, 2, 16, 16)).sum() == 0


def test_hinge_losses_known_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # ReLU(1 - real) = [0, 0.5] -> 0.25; ReLU(1 + fake) = [0, 1] -> 0.5; halved sum 0.375.
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.375)
    assert hinge_discriminator_loss(torch.ones(3), -torch.ones(3)).item() == 0.0  # a perfect discriminator
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)


def test_flow_completion_loss_is_the_floor_for_a_perfect_prediction():
    size, frames_count = 12, 3
    torch.manual_seed(0)
    first = torch.rand(1, 3, size, size) * 2 - 1
    frames = torch.stack([torch.roll(first, shifts=t, dims=-1) for t in range(frames_count)], dim=1)
    forward = torch.zeros(1, frames_count - 1, 2, size, size)
    forward[:, :, 0] = 1.0
    backward = -forward
    holes = torch.zeros(1, frames_count, 1, size, size)
    holes[..., 4:8, 4:8] = 1
    edges = flow_edges(forward)
    config = FlowCompletionLossConfig()
    total, terms = flow_completion_loss(config, (forward, backward), (forward, backward), holes, frames,
                                        (edges, edges), (edges, edges))
    assert terms["hole_l1"] == 0 and terms["valid_l1"] == 0 and terms["edge"] == 0
    assert terms["warp"].item() == pytest.approx(0, abs=1e-6)
    # Smoothness of a constant flow is the Charbonnier floor over the hole's differences, both directions.
    per_direction = first_order_smoothness(forward[0], holes[0, :-1]) + second_order_smoothness(forward[0],
                                                                                              holes[0, :-1])
    assert (terms["smooth1"] + terms["smooth2"]).item() == pytest.approx(2 * per_direction.item())
    assert total.item() == pytest.approx(config.flow_weight * 2 * per_direction.item(), abs=1e-6)
    wrong = (forward + 1, backward)
    assert flow_completion_loss(config, wrong, (forward, backward), holes, frames)[1]["hole_l1"].item() == \
        pytest.approx(1.0)


def test_presets_fill_only_missing_weights():
    upstream = validate_config(FlowCompletionLossConfig, {"preset": "upstream", "warp_weight": 0.5})
    assert (upstream.l1_weight, upstream.flow_weight, upstream.warp_weight) == (0.25, 0.25, 0.5)
    seed = validate_config(InpaintingLossConfig, {})
    assert (seed.adversarial_weight, seed.perceptual_weight, seed.style_weight) == (0.01, 0.1, 120.0)
    assert validate_config(InpaintingLossConfig, {"preset": "upstream"}).perceptual_weight == 0.0
    with pytest.raises(ConfigError, match="preset"):
        validate_config(InpaintingLossConfig, {"preset": "paper"})


def test_vgg_needs_its_file_unless_random_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        VGGFeatures(VGGLossConfig())
    vgg = VGGFeatures(VGGLossConfig(allow_random=True, layers={"relu1_1": 1.0, "relu2_1": 0.5}))
    assert "RANDOM" in vgg.source
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 16, 16) * 2 - 1
    perceptual, style = perceptual_style_losses(vgg, frames, frames, {"relu1_1": 1.0, "relu2_1": 0.5})
    assert perceptual.item() == 0 and style.item() == 0
    # A file in torchvision's format is loaded (here: the random trunk saved under the expected name).
    (tmp_path / "checkpoints").mkdir()
    state = {f"features.{k}": v for k, v in vgg.trunk.state_dict().items()}
    torch.save(state, tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth")
    loaded = VGGFeatures(VGGLossConfig(layers={"relu1_1": 1.0, "relu2_1": 0.5}), seed=1)
    assert loaded.source.endswith("vgg19-dcbb9e9d.pth")
    assert all(torch.equal(a, b) for a, b in zip(loaded.trunk.state_dict().values(), vgg.trunk.state_dict().values()))
    moved = perceptual_style_losses(vgg, frames, frames.flip(-1), {"relu1_1": 1.0})
    assert moved[0] > 0 and moved[1] > 0
