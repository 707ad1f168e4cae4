"""evaluation.metrics against independent references: skimage, the lpips package, hand-computed cases."""

from __future__ import annotations

import math
import warnings

import lpips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchvision import models
from torchvision.models.optical_flow import raft_large

from evaluation.metrics import (
    GroundTruthFlow,
    backbone_checkpoint_name,
    bbox_mask,
    bbox_psnr,
    boundary_ring_psnr,
    estimate_gt_flow,
    frame_ssim_win65,
    get_lpips,
    masked_lpips,
    masked_psnr,
    masked_ssim,
    non_occluded,
    outside_change,
    region_scores,
    strict_mask_psnr,
    to_video_tensor,
    warping_error,
)


def _channel_last(video: torch.Tensor) -> np.ndarray:
    """(B,F,C,H,W) tensor → (B,F,H,W,C) numpy, skimage's layout."""
    return video.permute(0, 1, 3, 4, 2).numpy()


def _smooth_video(shape: tuple[int, ...], seed: int, cells: int = 8) -> torch.Tensor:
    """Smooth random texture (B,F,C,H,W) in [0.2, 0.8]: upsampled noise, so flow and LPIPS see structure."""
    b, f, c, h, w = shape
    noise = torch.rand(b * f, c, cells, cells, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (0.2 + 0.6 * F.interpolate(noise, size=(h, w), mode="bicubic").clamp(0, 1)).reshape(shape)


@pytest.fixture(scope="module")
def noisy_pair() -> tuple[torch.Tensor, torch.Tensor]:
    target = _smooth_video((2, 3, 3, 40, 48), seed=0)
    noise = 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (target + noise).clamp(0, 1), target


def test_full_frame_psnr_ssim_equal_skimage(noisy_pair):
    pred, target = noisy_pair
    p, t = _channel_last(pred), _channel_last(target)
    ref_psnr = [
        np.mean([peak_signal_noise_ratio(t[b, f], p[b, f], data_range=1.0) for f in range(3)]) for b in range(2)
    ]
    ref_ssim = [
        np.mean(
            [
                structural_similarity(
                    t[b, f], p[b, f], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                    data_range=1.0, channel_axis=-1,
                )
                for f in range(3)
            ]
        )
        for b in range(2)
    ]
    full = torch.ones(2, 3, 1, 40, 48)
    np.testing.assert_allclose(masked_psnr(pred, target, full).numpy(), ref_psnr, atol=1e-6)
    np.testing.assert_allclose(masked_ssim(pred, target, full).numpy(), ref_ssim, atol=1e-4)
    # mask=None and float32 inputs give the same numbers.
    np.testing.assert_allclose(masked_psnr(pred.float(), target.float()).numpy(), ref_psnr, atol=1e-4)
    np.testing.assert_allclose(masked_ssim(pred.float(), target.float()).numpy(), ref_ssim, atol=1e-4)


def test_uint8_channel_last_input_equals_skimage():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 256, size=(2, 24, 24, 3), dtype=np.uint8)  # (F, H, W, C) as decoded from a file
    pred = np.clip(target.astype(int) + rng.integers(-20, 21, size=target.shape), 0, 255).astype(np.uint8)
    ref = np.mean([peak_signal_noise_ratio(target[f], pred[f], data_range=255) for f in range(2)])
    assert to_video_tensor(pred).shape == (1, 2, 3, 24, 24)
    assert masked_psnr(pred, target, None).item() == pytest.approx(ref, abs=1e-4)


def test_masked_psnr_hand_case_skips_empty_frames():
    target = torch.zeros(2, 3, 3, 6, 6)
    pred = torch.full_like(target, 0.9)  # large error everywhere outside the scored pixels
    mask = torch.zeros(2, 3, 1, 6, 6)
    mask[:, :2, :, 1, 1:5] = 1  # 4 scored pixels in frames 0 and 1; frame 2 is empty and must not count
    pred[:, :2, :, 1, 1:3] = 0.1
    pred[:, :2, :, 1, 3:5] = 0.3
    mask[1] = 0  # clip 1 has no scored frame at all
    mse = (2 * 0.1**2 + 2 * 0.3**2) / 4
    psnr = masked_psnr(pred, target, mask)
    assert psnr[0].item() == pytest.approx(10 * math.log10(1 / mse), abs=1e-4)
    assert math.isnan(psnr[1].item())


def test_masked_ssim_is_the_skimage_map_averaged_over_the_mask(noisy_pair):
    pred, target = noisy_pair
    mask = torch.zeros(2, 3, 1, 40, 48)
    mask[..., 3:25, 10:30] = 1  # partly inside the 5 px border that skimage's map does not cover
    mask[1, 2] = 0
    ours = masked_ssim(pred, target, mask)
    # Frame by frame (one chunk per frame, one of them empty) crops differently but must agree.
    torch.testing.assert_close(masked_ssim(pred, target, mask, frame_chunk=1), ours, rtol=0, atol=1e-12, equal_nan=True)
    p, t, m = _channel_last(pred), _channel_last(target), mask[:, :, 0].numpy().astype(bool)
    interior = np.zeros((40, 48), bool)
    interior[5:-5, 5:-5] = True
    for b, frames in ((0, 3), (1, 2)):
        values = []
        for f in range(frames):
            _, ssim_map = structural_similarity(
                t[b, f], p[b, f], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                data_range=1.0, channel_axis=-1, full=True,
            )
            values.append(ssim_map.mean(axis=-1)[m[b, f] & interior].mean())
        assert ours[b].item() == pytest.approx(np.mean(values), abs=1e-6)


def test_both_ssim_gaussian_filters_equal_scipys_on_the_valid_positions():
    """The GPU (torch slices) and CPU (OpenCV) filters of the SSIM statistics against scipy's gaussian_filter, which
    skimage's SSIM uses, on the positions where the 11-tap window fits."""
    from scipy.ndimage import gaussian_filter

    from evaluation.metrics.pixel import (
        _gaussian_filter_valid_opencv,
        _gaussian_filter_valid_torch,
        _gaussian_taps,
    )

    images = torch.rand(2, 3, 23, 31, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference = gaussian_filter(images.numpy(), sigma=(0, 0, 1.5, 1.5), truncate=3.5)[..., 5:-5, 5:-5]
    for filtered in (_gaussian_filter_valid_torch(images, _gaussian_taps()),
                     _gaussian_filter_valid_opencv(images, _gaussian_taps())):
        np.testing.assert_allclose(filtered.numpy(), reference, rtol=0, atol=1e-12)


def test_boundary_region_and_whole_frame():
    target = torch.zeros(1, 1, 3, 9, 9)
    pred = target.clone()
    hole = torch.zeros(1, 1, 1, 9, 9)
    hole[..., 4, 4] = 1
    pred[..., 4, 4] = 0.9  # in the hole: not in the band
    pred[..., 3, 5] = 0.2  # a diagonal neighbour: in the 1 px band (kernel side 3)
    pred[..., 0, 0] = 0.7  # far away: only in the whole frame
    band = masked_psnr(pred, target, hole, region="boundary", boundary_px=3)
    assert band.item() == pytest.approx(10 * math.log10(8 / 0.2**2), abs=1e-4)
    frame = masked_psnr(pred, target, hole, region="frame")
    assert frame.item() == pytest.approx(10 * math.log10(81 / (0.9**2 + 0.2**2 + 0.7**2)), abs=1e-4)
    with pytest.raises(ValueError, match="needs a hole mask"):
        masked_psnr(pred, target, None, region="boundary")


def test_mask_shape_mismatch_is_a_clear_error(noisy_pair):
    pred, target = noisy_pair
    with pytest.raises(ValueError, match="does not match the video"):
        masked_psnr(pred, target, torch.ones(2, 3, 1, 40, 40))


@pytest.fixture(scope="module")
def random_lpips() -> lpips.LPIPS:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The package's own network with spatial=False: its forward() is the reference score.
        return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)


def test_lpips_full_mask_equals_package_with_same_net(random_lpips):
    target = _smooth_video((2, 2, 3, 64, 64), seed=3).float()
    pred = _smooth_video((2, 2, 3, 64, 64), seed=4).float() * 0.3 + target * 0.7
    with torch.no_grad():
        reference = random_lpips(pred.flatten(0, 1), target.flatten(0, 1), normalize=True).reshape(2, 2).mean(dim=1)
    ours = masked_lpips(pred, target, torch.ones(2, 2, 1, 64, 64), net=random_lpips)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=0.02)
    assert random_lpips.spatial is False  # the caller's net is left as it was
    assert (masked_lpips(target, target, None, net=random_lpips) == 0).all()


def test_masked_lpips_averages_the_package_spatial_map_over_the_mask(random_lpips):
    target = _smooth_video((1, 2, 3, 48, 48), seed=8).float()
    pred = _smooth_video((1, 2, 3, 48, 48), seed=9).float()
    mask = torch.zeros(1, 2, 1, 48, 48)
    mask[0, 0, :, 10:30, 5:20] = 1  # frame 1 has an empty mask: it is skipped, not averaged in as 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spatial_net = lpips.LPIPS(net="alex", pnet_rand=True, spatial=True, verbose=False)
    spatial_net.load_state_dict(random_lpips.state_dict())
    with torch.no_grad():
        distance_map = spatial_net(pred[0, :1], target[0, :1], normalize=True)[0, 0]
    expected = distance_map[mask[0, 0, 0] > 0].mean()
    assert masked_lpips(pred, target, mask, net=random_lpips).item() == pytest.approx(expected.item(), rel=1e-5)


def test_get_lpips_loads_a_local_backbone_and_refuses_without_one(random_lpips, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    get_lpips.cache_clear()  # nets cached by earlier calls must not hide the missing-weights path
    with pytest.raises(FileNotFoundError, match=backbone_checkpoint_name("alex")):
        get_lpips("alex")
    # The trunk's tensors under torchvision's own names (the classifier is not needed).
    trunk = {k: v for k, v in models.alexnet().state_dict().items() if k.startswith("features.")}
    checkpoint = tmp_path / "alexnet.pth"
    torch.save(trunk, checkpoint)
    net = get_lpips("alex", backbone_weights=checkpoint)
    assert torch.equal(net.net.slice3[1].weight, trunk["features.6.weight"])  # slices keep torchvision's indices
    assert torch.equal(net.net.slice5[0].weight, trunk["features.10.weight"])
    assert torch.equal(net.lin0.model[1].weight, random_lpips.lin0.model[1].weight)  # the packaged linear head
    with pytest.warns(UserWarning, match="RANDOM"):
        get_lpips("alex", allow_random_backbone=True)


def _panning_video(frames: int, step: tuple[int, int], size: tuple[int, int] = (40, 48)) -> torch.Tensor:
    """(1,F,3,H,W): a fixed texture whose content moves by ``step`` = (dx, dy) px per frame."""
    dx, dy = step
    h, w = size
    canvas = _smooth_video((1, 1, 3, h + frames * dy, w + frames * dx), seed=5)[0, 0]
    # Frame t shows the canvas shifted so that frame t+1 at p + step equals frame t at p.
    offsets = [((frames - t) * dy, (frames - t) * dx) for t in range(frames)]
    return torch.stack([canvas[:, y : y + h, x : x + w] for y, x in offsets])[None]


def _flicker(video: torch.Tensor, amplitude: float) -> torch.Tensor:
    signs = torch.tensor([(-1.0) ** t for t in range(video.shape[1])], dtype=video.dtype)
    return video + amplitude * signs.view(1, -1, 1, 1, 1)


def test_warping_error_zero_for_exact_translation_and_grows_with_flicker():
    gt = _panning_video(frames=4, step=(2, 1))
    forward = torch.zeros(1, 3, 2, 40, 48, dtype=gt.dtype)
    forward[:, :, 0], forward[:, :, 1] = 2.0, 1.0
    exact = GroundTruthFlow(forward=forward, backward=-forward, method="exact")
    still = warping_error(gt, gt, gt_flow=exact)
    assert still.flow_method == "exact" and still.region == "frame"
    assert still.value.item() == pytest.approx(0.0, abs=1e-12)
    # Flicker of ±a between frames makes every valid pixel differ by 2a: E_warp = (2a)².
    small, large = (warping_error(_flicker(gt, a), gt, gt_flow=exact).value.item() for a in (0.02, 0.05))
    assert small == pytest.approx(0.04**2, rel=1e-6)
    assert large == pytest.approx(0.10**2, rel=1e-6)


def test_warping_error_restricted_to_the_hole():
    gt = _panning_video(frames=3, step=(1, 0))
    forward = torch.zeros(1, 2, 2, 40, 48, dtype=gt.dtype)
    forward[:, :, 0] = 1.0
    exact = GroundTruthFlow(forward=forward, backward=-forward, method="exact")
    hole = torch.zeros(1, 3, 1, 40, 48)
    hole[..., 10:20, 10:20] = 1
    pred = gt.clone()
    pred[:, 1, :, 30:, :] += 0.1  # flicker far from the hole: the whole frame sees it, the hole does not
    assert warping_error(pred, gt, gt_flow=exact).value.item() > 1e-4
    in_hole = warping_error(pred, gt, hole, gt_flow=exact)
    assert in_hole.region == "hole" and in_hole.value.item() == pytest.approx(0.0, abs=1e-12)


def test_occlusion_mask_hand_case():
    # x-flow 0 left of column 8 and 3 from there: column 7 is a motion boundary, columns 13-15 leave the frame.
    forward = torch.zeros(1, 2, 6, 16, dtype=torch.float64)
    forward[:, 0, :, 8:] = 3.0
    backward = torch.zeros_like(forward)
    backward[:, 0, :, 11:] = -3.0  # where the moving part lands at t+1; columns 8-10 are disoccluded there
    expected = torch.ones(1, 1, 6, 16, dtype=torch.bool)
    expected[..., 7] = False
    expected[..., 13:] = False
    assert torch.equal(non_occluded(forward, backward), expected)
    # A backward flow that does not undo the forward one fails the forward-backward check everywhere it moves.
    inconsistent = non_occluded(forward, torch.zeros_like(forward))
    assert not inconsistent[..., 8:].any() and inconsistent[..., :7].all()


def test_dis_flow_recovers_translation():
    gt = _panning_video(frames=3, step=(2, 1), size=(64, 64)).float()
    flow = estimate_gt_flow(gt, flow="dis")
    assert flow.method == "dis-medium" and flow.forward.shape == (1, 2, 2, 64, 64)
    interior = flow.forward[..., 8:-8, 8:-8]
    assert interior[:, :, 0].median().item() == pytest.approx(2.0, abs=0.1)
    assert interior[:, :, 1].median().item() == pytest.approx(1.0, abs=0.1)
    clean = warping_error(gt, gt, gt_flow=flow).value.item()
    flickering = warping_error(_flicker(gt, 0.05), gt, gt_flow=flow).value.item()
    assert clean < 1e-3 < flickering


def test_raft_flow_from_local_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    # Under 128 px and not a multiple of 8: padded inside.
    gt = _panning_video(frames=2, step=(1, 1), size=(60, 68)).float()
    with pytest.raises(FileNotFoundError, match="raft_weights"):
        warping_error(gt, gt, flow="raft")
    torch.manual_seed(0)
    weights = tmp_path / "raft_large.pth"
    torch.save(raft_large(weights=None).state_dict(), weights)  # random: this checks the plumbing, not the flow
    result = warping_error(gt, gt, flow="raft", raft_weights=weights)
    assert result.flow_method == "raft_large" and result.per_pair.shape == (1, 1)


def test_region_scores_hand_cases():
    target = torch.zeros(1, 1, 3, 16, 16)
    hole = torch.zeros(1, 1, 1, 16, 16)
    hole[..., 4:8, 4:8] = 1
    hole[..., 9, 10] = 1  # bounding box becomes rows 4-9, cols 4-10: 6 x 7 = 42 pixels
    expected_box = torch.zeros_like(hole)
    expected_box[..., 4:10, 4:11] = 1
    assert torch.equal(bbox_mask(hole), expected_box)

    pred = target.clone()
    pred[..., 5, 5] = 0.1  # hole pixel, eroded interior: strict and box, not the ring
    pred[..., 9, 5] = 0.2  # box only
    pred[..., 3, 3] = 0.3  # diagonal outside corner: ring only
    pred[..., 0, 15] = 0.5  # outside everything
    strict = strict_mask_psnr(pred, target, hole).item()
    assert strict == pytest.approx(10 * math.log10(17 / 0.1**2), abs=1e-4)
    box = bbox_psnr(pred, target, hole).item()
    assert box == pytest.approx(10 * math.log10(42 / (0.1**2 + 0.2**2)), abs=1e-4)
    # Ring of 1 px around the square: 6x6 - 2x2 = 32 pixels; the single pixel adds its 3x3 = 9.
    ring = boundary_ring_psnr(pred, target, hole, ring_px=1).item()
    assert ring == pytest.approx(10 * math.log10(41 / 0.3**2), abs=1e-4)
    scores = region_scores(pred, target, hole, ring_px=1)
    assert scores["psnr_strict"].item() == pytest.approx(strict) and scores["psnr_bbox"].item() == pytest.approx(box)


def test_outside_change_is_zero_after_hard_compositing():
    gt = _smooth_video((1, 2, 3, 16, 16), seed=6)
    raw = _smooth_video((1, 2, 3, 16, 16), seed=7)
    hole = torch.zeros(1, 2, 1, 16, 16)
    hole[..., 4:12, 4:12] = 1
    composite = raw * hole + gt * (1 - hole)
    change = outside_change(composite, gt, hole)
    assert change.mean.item() == 0.0 and change.max.item() == 0.0
    shifted = composite.clone()
    shifted[0, 1, :, 0, 0] += 0.25  # one outside pixel of frame 1 changed on all channels
    change = outside_change(shifted, gt, hole)
    assert change.max.item() == pytest.approx(0.25)
    assert change.mean.item() == pytest.approx(0.25 / (256 - 64) / 2)


def _uniform_ssim_reference(pred: np.ndarray, target: np.ndarray, window: int) -> float:
    """SSIM with a uniform ``window``² box and sample covariances (Wang et al. 2004 with skimage's defaults:
    K1 0.01, K2 0.03, range 255), channel mean, over the positions where the window fits; written with
    cumulative sums, independently of skimage."""
    def box_mean(image: np.ndarray) -> np.ndarray:
        padded = np.pad(image.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        sums = (padded[window:, window:] - padded[:-window, window:] - padded[window:, :-window]
                + padded[:-window, :-window])
        return sums / window**2

    covariance_norm = window**2 / (window**2 - 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(pred.shape[-1]):
        x, y = pred[..., channel].astype(np.float64), target[..., channel].astype(np.float64)
        mx, my = box_mean(x), box_mean(y)
        vx = covariance_norm * (box_mean(x * x) - mx * mx)
        vy = covariance_norm * (box_mean(y * y) - my * my)
        cxy = covariance_norm * (box_mean(x * y) - mx * my)
        ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(ssim.mean())
    return float(np.mean(values))


def test_frame_ssim_win65_is_propainters_whole_frame_ssim():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (2, 72, 80, 3), dtype=np.uint8)
    noisy = np.clip(target.astype(int) + rng.integers(-40, 41, target.shape), 0, 255).astype(np.uint8)
    expected = np.mean([_uniform_ssim_reference(p, t, 65) for p, t in zip(noisy, target)])
    assert frame_ssim_win65(noisy, target) == pytest.approx(expected, abs=1e-6)
    assert frame_ssim_win65(target, target) == pytest.approx(1.0)
    # Not the Gaussian-11 SSIM that the `ssim` metric reports.
    gaussian = float(masked_ssim(noisy[None], target[None], None, region="frame")[0])
    assert abs(frame_ssim_win65(noisy, target) - gaussian) > 1e-3
    assert math.isnan(frame_ssim_win65(noisy[:, :64], target[:, :64]))  # the window does not fit
