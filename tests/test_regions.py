"""vipo.regions: the three exclusive loss regions and the latent-resolution hole mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError

from vipo.config import Config
from vipo.regions import BoundaryPx, boundary_kernel_size, decompose, downsample_hole

PROPERTY = settings(max_examples=60, deadline=None)

holes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.bool_, shape)
)
odd_kernels = st.integers(0, 6).map(lambda r: 2 * r + 1)
factors = st.sampled_from([1, 2, 8])


@pytest.mark.parametrize(
    ("boundary_px", "latent_factor", "expected"),
    [(7, 8, 3), (7, 1, 7), (1, 8, 1), (3, 8, 3), (17, 8, 3), (19, 8, 5), (15, 2, 9), (5, 4, 3)],
)
def test_kernel_rounding_rule(boundary_px, latent_factor, expected):
    # 2·ceil(((k − 1)/2) / f) + 1, worked by hand; (7, 8) → 3 is the roadmap's "7 px → 3 latent px".
    assert boundary_kernel_size(boundary_px, latent_factor) == expected


@pytest.mark.parametrize("bad", [0, 2, 8, -3])
def test_even_or_nonpositive_kernel_rejected(bad):
    with pytest.raises(ValueError, match="odd"):
        boundary_kernel_size(bad)


def test_boundary_px_config_type():
    class LossConfig(Config):
        boundary_px: BoundaryPx = 7

    assert LossConfig(boundary_px=9).boundary_px == 9
    for bad in (8, 0):
        with pytest.raises(ValidationError, match="boundary_px"):
            LossConfig(boundary_px=bad)


def test_hand_computed_boundary():
    hole = torch.zeros(1, 5, 6, dtype=torch.bool)
    hole[0, 2, 2] = True
    hole[0, 2, 3] = True
    got_hole, boundary, context = decompose(hole, boundary_px=3)
    expected_boundary = torch.tensor(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 1, 0, 0, 1, 0],
            [0, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(got_hole[0], hole[0])
    assert torch.equal(boundary[0], expected_boundary)
    assert torch.equal(context[0], ~(expected_boundary | hole[0]))


@PROPERTY
@given(hole=holes, boundary_px=odd_kernels)
def test_boundary_matches_opencv_dilation(hole, boundary_px):
    _, boundary, _ = decompose(torch.from_numpy(hole), boundary_px)
    kernel = np.ones((boundary_px, boundary_px), np.uint8)
    reference = np.stack([cv2.dilate(h.astype(np.uint8), kernel) > 0 for h in hole]) & ~hole
    np.testing.assert_array_equal(boundary.numpy(), reference)


@PROPERTY
@given(hole=holes, boundary_px=odd_kernels, latent_factor=factors, as_float=st.booleans())
def test_regions_exclusive_and_sum_to_one(hole, boundary_px, latent_factor, as_float):
    tensor = torch.from_numpy(hole).float() if as_float else torch.from_numpy(hole)
    regions = decompose(tensor, boundary_px, latent_factor)
    for region in regions:
        assert region.shape == tensor.shape and region.dtype == tensor.dtype
    stacked = torch.stack([r.to(torch.int64) for r in regions])
    assert set(stacked.unique().tolist()) <= {0, 1}
    assert torch.equal(stacked.sum(0), torch.ones_like(stacked[0]))
    assert torch.equal(regions[0].bool(), torch.from_numpy(hole))


@PROPERTY
@given(hole=holes, boundary_px=odd_kernels, latent_factor=factors)
def test_boundary_grows_with_kernel(hole, boundary_px, latent_factor):
    hole = torch.from_numpy(hole)
    _, smaller, context_small = decompose(hole, boundary_px, latent_factor)
    _, larger, context_large = decompose(hole, boundary_px + 2, latent_factor)
    assert torch.all(larger >= smaller)
    assert torch.all(context_large <= context_small)


@pytest.mark.parametrize("boundary_px", [1, 7, 15])
def test_empty_and_full_holes(boundary_px):
    empty = torch.zeros(2, 9, 7)
    hole, boundary, context = decompose(empty, boundary_px, latent_factor=8)
    assert hole.sum() == 0 and boundary.sum() == 0 and torch.all(context == 1)
    full = torch.ones(2, 9, 7)
    hole, boundary, context = decompose(full, boundary_px)
    assert torch.all(hole == 1) and boundary.sum() == 0 and context.sum() == 0


def test_batched_layout_matches_frame_layout():
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.random((6, 16, 24)) < 0.05)
    batched = frames.reshape(2, 3, 1, 16, 24)
    for flat, nested in zip(decompose(frames, 5), decompose(batched, 5)):
        assert nested.shape == (2, 3, 1, 16, 24)
        assert torch.equal(nested.reshape(6, 16, 24), flat)


def test_rejects_other_layouts():
    with pytest.raises(ValueError, match="shape"):
        decompose(torch.zeros(2, 3, 2, 8, 8), 3)
    with pytest.raises(TypeError):
        decompose(np.zeros((2, 8, 8)), 3)


def test_soft_float_hole_binarised_at_half():
    hole = torch.tensor([[[0.2, 0.6, 0.5, 1.0]]])
    got, _, _ = decompose(hole, 1)
    assert got.tolist() == [[[0.0, 1.0, 0.0, 1.0]]]


def test_downsample_any_keeps_every_hole_pixel():
    hole = torch.zeros(1, 16, 16, dtype=torch.bool)
    hole[0, 3, 5] = True  # one pixel inside latent cell (0, 0), not its top-left corner
    hole[0, 15, 8] = True  # bottom-left pixel of latent cell (1, 1)
    any_hole = downsample_hole(hole, 8)
    assert any_hole.tolist() == [[[True, False], [False, True]]]
    # Nearest keeps only each cell's top-left pixel, so both holes vanish: the reason "any" is the default.
    assert not downsample_hole(hole, 8, mode="nearest").any()
    assert torch.equal(downsample_hole(hole, 8, mode="nearest"), hole[:, ::8, ::8])


@PROPERTY
@given(hole=holes.filter(lambda h: h.shape[1] % 2 == 0 and h.shape[2] % 2 == 0))
def test_downsample_any_covers_the_pixel_hole(hole):
    small = downsample_hole(torch.from_numpy(hole), 2)
    # Upsampling the latent hole back must cover every pixel hole, and every latent hole cell holds a hole pixel.
    covered = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).numpy()
    assert np.all(covered[hole])
    cells = hole.reshape(hole.shape[0], hole.shape[1] // 2, 2, hole.shape[2] // 2, 2).any(axis=(2, 4))
    np.testing.assert_array_equal(small.numpy(), cells)


def test_downsample_layouts_dtypes_and_errors():
    hole = torch.zeros(2, 3, 1, 16, 8)
    hole[1, 2, 0, 9, 1] = 1.0
    small = downsample_hole(hole, 8)
    assert small.shape == (2, 3, 1, 2, 1) and small.dtype == torch.float32
    assert small.sum() == 1 and small[1, 2, 0, 1, 0] == 1
    with pytest.raises(ValueError, match="multiple of factor 8"):
        downsample_hole(torch.zeros(1, 12, 16), 8)
    with pytest.raises(ValueError, match="mode"):
        downsample_hole(torch.zeros(1, 16, 16), 8, mode="bilinear")


def test_latent_regions_from_latent_hole():
    hole = torch.zeros(1, 64, 64, dtype=torch.bool)
    hole[0, 27:37, 30:33] = True  # rows 27..36 → latent rows 3..4; cols 30..32 → latent col 3..4
    latent_hole, boundary, context = decompose(downsample_hole(hole, 8), boundary_px=7, latent_factor=8)
    assert latent_hole.shape == (1, 8, 8)
    assert latent_hole[0].nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
    # 7 px → 3×3 latent kernel: a one-cell ring around the 2×2 hole block.
    assert boundary.sum() == 4 * 4 - 4 and context.sum() == 64 - 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    rng = np.random.default_rng(1)
    hole = torch.from_numpy(rng.random((2, 4, 1, 64, 48)) < 0.02)
    cpu = decompose(downsample_hole(hole, 8), 7, latent_factor=8)
    gpu = decompose(downsample_hole(hole.cuda(), 8), 7, latent_factor=8)
    for a, b in zip(cpu, gpu):
        assert b.is_cuda and torch.equal(a, b.cpu())
    for a, b in zip(decompose(hole.float(), 9), decompose(hole.float().cuda(), 9)):
        assert torch.equal(a, b.cpu())
