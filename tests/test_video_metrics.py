"""VFID (I3D + Fréchet distance), CLIP temporal consistency and the hallucination scorers, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from manifests import load_manifest

from evaluation.hallucination import HallucinationScore, PriorDifferenceConfig, PriorDifferenceScorer
from evaluation.metrics.clip_consistency import clip_temporal_consistency, get_clip_embedder
from evaluation.metrics.vfid import frechet_distance, get_i3d, i3d_features, vfid
from evaluation.scorer import Scorer
from evaluation.scoring import ScoringConfig, random_networks
from vipo.config import ConfigError, validate_config
from vipo.models.i3d import InceptionI3d, load_i3d


def test_i3d_state_dict_matches_the_released_checkpoint_manifest():
    manifest = load_manifest("i3d_rgb_imagenet.json")
    state = InceptionI3d().state_dict()
    expected = {**manifest["params"], **manifest["buffers"]}
    assert {name: list(t.shape) for name, t in state.items()} == expected
    assert len(state) == manifest["num_state_dict_entries"]
    assert sum(p.numel() for p in InceptionI3d().parameters()) == manifest["num_params"]


def test_load_i3d_is_strict_and_fills_only_the_pre_2018_buffers(tmp_path):
    torch.manual_seed(1)
    source = InceptionI3d()
    released = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(released, tmp_path / "i3d_rgb_imagenet.pt")
    loaded = load_i3d(tmp_path / "i3d_rgb_imagenet.pt")
    assert torch.equal(loaded.Mixed_5c.b3b.conv3d.weight, source.Mixed_5c.b3b.conv3d.weight)
    assert not loaded.training
    del released["Mixed_4b.b1b.bn.weight"]
    torch.save(released, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="broken.pt.*Mixed_4b.b1b.bn.weight"):
        load_i3d(tmp_path / "broken.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_i3d(tmp_path / "missing.pt")


def test_i3d_clip_statistics_equal_batchnorm_training_on_one_video():
    """The reference VFID code never calls eval(): BatchNorm normalises a batch of one video by its own statistics.
    Our batched features give each video exactly that, whatever else is in the batch."""
    torch.manual_seed(0)
    model = InceptionI3d()
    videos = torch.rand(2, 8, 3, 64, 64)
    batched = i3d_features(videos, model, batch_size=2)
    reference = model.train()
    for module in reference.modules():  # nn.BatchNorm3d in training mode, as the reference runs it
        if hasattr(module, "clip_statistics"):
            module.clip_statistics = False
    with torch.no_grad():
        for i in range(2):
            x = videos[i:i + 1].transpose(1, 2)
            for name, child in reference.named_children():
                if name != "logits":
                    x = _reference_forward(child, x)
            assert torch.allclose(batched[i].float(), x.mean(dim=(2, 3, 4))[0], rtol=1e-3, atol=1e-4)


def _reference_forward(module, x):
    """Run a block with nn.BatchNorm3d's own forward (training mode: batch statistics)."""
    from vipo.models.i3d import InceptionBlock, Unit3D, _same_padding

    if isinstance(module, Unit3D):
        return torch.relu(module.bn(module.conv3d(_same_padding(x, module.kernel, module.stride))))
    if isinstance(module, InceptionBlock):
        return torch.cat([_reference_forward(module.b0, x),
                          _reference_forward(module.b1b, _reference_forward(module.b1a, x)),
                          _reference_forward(module.b2b, _reference_forward(module.b2a, x)),
                          _reference_forward(module.b3b, module.b3a(x))], dim=1)
    return module(x)


def test_frechet_distance_of_known_gaussians_matches_the_closed_form():
    # Commuting (diagonal) covariances: d = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    # A rotated pair (non-diagonal but commuting): the distance is rotation invariant.
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rotated = frechet_distance(rotation @ mu1, rotation @ np.diag(var1) @ rotation.T,
                               rotation @ mu2, rotation @ np.diag(var2) @ rotation.T)
    assert rotated == pytest.approx(expected, rel=1e-6)


def test_vfid_of_identical_feature_sets_is_zero_and_grows_with_a_shift():
    features = np.random.default_rng(0).normal(size=(40, 16))
    assert vfid(features, features) == pytest.approx(0.0, abs=1e-6)
    shifted = vfid(features, features + 0.5)
    assert shifted == pytest.approx(16 * 0.25, rel=1e-6)  # same covariance: only |mu1 - mu2|^2 remains
    with pytest.raises(ValueError, match="N >= 2"):
        vfid(features[:1], features[:1])


def test_missing_weights_are_an_error_unless_random_is_allowed():
    with pytest.raises(FileNotFoundError, match="i3d_weights"):
        get_i3d(None, False)
    with pytest.raises(FileNotFoundError, match="clip_weights"):
        get_clip_embedder(None, False)
    with pytest.raises(FileNotFoundError, match="i3d_weights"):
        ScoringConfig(metrics=["vfid"]).identity()
    identity = ScoringConfig(metrics=["vfid", "tc_clip"], allow_random_i3d=True, allow_random_clip=True).identity()
    assert set(random_networks(identity)) == {"vfid", "tc_clip"}
    assert "RANDOM" in random_networks(identity)["vfid"]


def test_clip_consistency_of_identical_frames_is_one_and_lower_for_changing_frames():
    embedder = get_clip_embedder(None, True)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    still = np.repeat(frame, 4, axis=0)
    assert clip_temporal_consistency(still, embedder).item() == pytest.approx(1.0, abs=1e-6)
    changing = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert clip_temporal_consistency(changing, embedder).item() < 0.999


def test_clip_weights_load_from_a_local_folder(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=8)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    embedder = get_clip_embedder(tmp_path / "clip")
    assert embedder(torch.rand(2, 3, 48, 40)).shape == (2, 8)
    with pytest.raises(FileNotFoundError, match="config.json"):
        get_clip_embedder(tmp_path)


def _clip_with_hole(seed: int = 0):
    rng = np.random.default_rng(seed)
    # A smooth background: a horizontal gradient plus mild noise, the hole a 16x16 square in every frame.
    background = np.tile(np.linspace(40, 200, 32)[None, :, None], (32, 1, 3))
    frames = np.stack([background + rng.normal(0, 3, background.shape) for _ in range(6)]).clip(0, 255)
    hole = np.zeros((6, 32, 32), bool)
    hole[:, 8:24, 8:24] = True
    return frames.astype(np.uint8), hole


def test_prior_difference_scores_a_planted_object_above_a_background_fill():
    frames, hole = _clip_with_hole()
    prior = frames.copy()  # a propagated prior: the background, slightly blurred
    prior[hole] = np.clip(prior[hole].astype(int) + 4, 0, 255)
    scorer = PriorDifferenceScorer(PriorDifferenceConfig())
    background_fill = frames.copy()
    background_fill[hole] = np.clip(frames[hole].astype(int) - 5, 0, 255)  # a sharper copy of the same background
    planted = background_fill.copy()
    planted[:, 10:20, 10:20] = (255, 0, 255)  # an object the clip never shows, in 100 of the 256 hole pixels
    clean, hallucinated = scorer(frames, hole, background_fill, prior), scorer(frames, hole, planted, prior)
    assert clean == HallucinationScore(0.0, False)
    assert hallucinated.score == pytest.approx(100 / 256) and hallucinated.label
    nothing = scorer(frames, hole, planted, None)
    assert math.isnan(nothing.score) and not nothing.label


def test_scorer_reports_hallucination_and_tc_per_clip_and_i3d_features_for_vfid():
    frames, hole = _clip_with_hole()
    config = ScoringConfig(metrics=["psnr_hole", "tc_clip", "hallucination", "hallucination_score"],
                           allow_random_clip=True)
    scorer = Scorer(config).setup("cpu")
    planted = frames.copy()
    planted[:, 10:20, 10:20] = (255, 0, 255)
    metrics, features = scorer.score(frames, hole, planted, prior=frames)
    assert metrics["hallucination"] == 1.0 and metrics["hallucination_score"] == pytest.approx(100 / 256)
    assert 0 < metrics["tc_clip"] <= 1 and features == {}
    metrics, _ = scorer.score(frames, hole, planted)  # no prior: not judged
    assert math.isnan(metrics["hallucination"]) and math.isnan(metrics["hallucination_score"])


def test_vlm_scorer_is_off_by_default_and_validated():
    assert ScoringConfig().hallucination.kind == "prior_difference"
    with pytest.raises(ConfigError, match="model_path"):
        validate_config(ScoringConfig, {"hallucination": {"kind": "vlm", "model_path": "/no/such/vlm"}}, "x.yaml")


@pytest.mark.parametrize("net_name", ["alex", "vgg"])
@pytest.mark.parametrize("region", ["hole", "frame"])
@pytest.mark.parametrize(("size", "boxes"), [
    ((97, 203), [(40, 70, 150, 190), (3, 20, 0, 30)]),  # odd sizes, holes near the edges, a union box per chunk
    ((260, 270), [(150, 170, 160, 185)]),  # a small hole far from the top-left: crops start inside the frame
], ids=["edge_holes", "central_hole"])
def test_cropped_lpips_equals_the_packages_whole_frame_map(net_name, region, size, boxes):
    """LPIPS runs only on the hole's box plus the receptive field, each layer only where it is read; the package's
    spatial map on the whole frame, averaged over the same pixels, is the independent reference."""
    from evaluation.metrics import get_lpips, masked_lpips

    net = get_lpips(net_name, allow_random_backbone=True)
    generator = torch.Generator().manual_seed(0)
    frames = len(boxes)
    target = torch.rand(1, frames, 3, *size, generator=generator)
    hole = torch.zeros(1, frames, 1, *size)
    for frame, (top, bottom, left, right) in enumerate(boxes):
        hole[0, frame, :, top:bottom, left:right] = 1
    composite = torch.where(hole > 0, torch.rand(target.shape, generator=generator), target)
    spatial = net.spatial
    net.spatial = True
    with torch.no_grad():
        whole = net(composite[0], target[0], normalize=True)
    net.spatial = spatial
    scored = hole[0] if region == "hole" else torch.ones_like(hole[0])
    expected = ((whole * scored).sum(dim=(1, 2, 3)) / scored.sum(dim=(1, 2, 3))).mean()
    ours = masked_lpips(composite, target, hole, net, region=region)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
