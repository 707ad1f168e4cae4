"""The validation gate: paired per-clip deltas of evaluation's metrics against the start weights, strips, and the
reference kept in checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.scorer import Scorer
from evaluation.scoring import ScoringConfig
from vipo.train.validation import REFERENCE_FILE, ValidationGate, delta_key

FRAMES, SIZE = 3, 16


def _clip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(20, 200, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)  # + 40 stays in uint8
    hole = np.zeros((FRAMES, SIZE, SIZE), bool)
    hole[:, 4:10, 5:12] = True
    return frames, hole


def _off_by(frames: np.ndarray, hole: np.ndarray, error: int) -> np.ndarray:
    """A raw prediction that misses every hole pixel by ``error`` levels and is garbage outside (composited away)."""
    garbage = np.zeros_like(frames)
    return np.where(hole[..., None], frames + np.uint8(error), garbage)


def _psnr(error: int) -> float:
    return 20 * math.log10(255 / error)  # constant error e over the hole: MSE = (e/255)², PSNR = 10·log10(1/MSE)


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(ScoringConfig(metrics=["psnr_hole", "outside_max_abs"])).setup("cpu")


def test_deltas_are_policy_minus_reference_per_clip_and_mean(scorer, tmp_path):
    clips = {"a": _clip(0), "b": _clip(1)}
    gate = ValidationGate(clips, scorer)
    reference = {"a": _off_by(*clips["a"], 10), "b": _off_by(*clips["b"], 20)}
    assert gate.set_reference(reference) == {
        "val/ref_psnr_hole": pytest.approx((_psnr(10) + _psnr(20)) / 2), "val/ref_outside_max_abs": 0.0}
    policy = {"a": _off_by(*clips["a"], 5), "b": _off_by(*clips["b"], 40)}
    report, strips = gate.judge(policy)
    # Halving the error gains 20·log10(2) dB, doubling it loses as much.
    assert report[delta_key("psnr_hole", "a")] == pytest.approx(20 * math.log10(2))
    assert report[delta_key("psnr_hole", "b")] == pytest.approx(-20 * math.log10(2))
    assert report[delta_key("psnr_hole")] == pytest.approx(0.0, abs=1e-9)
    assert report["val/psnr_hole"] == pytest.approx((_psnr(5) + _psnr(40)) / 2)
    assert report[delta_key("outside_max_abs")] == 0.0  # hard compositing: nothing changes outside the hole
    frames, hole = clips["a"]
    strip = strips["a"]
    assert strip.shape == (FRAMES, 4 * SIZE, SIZE, 3)
    rows = np.split(strip, 4, axis=1)
    np.testing.assert_array_equal(rows[0], frames)
    np.testing.assert_array_equal(rows[1], np.where(hole[..., None], 0, frames))
    np.testing.assert_array_equal(rows[2], np.where(hole[..., None], frames + np.uint8(10), frames))
    np.testing.assert_array_equal(rows[3], np.where(hole[..., None], frames + np.uint8(5), frames))

    # The reference travels in checkpoints: a resumed run compares against the same outputs and scores.
    gate.save(tmp_path)
    assert (tmp_path / REFERENCE_FILE).is_file()
    resumed = ValidationGate(clips, scorer)
    assert resumed.load(tmp_path) and not ValidationGate(clips, scorer).load(tmp_path / "none")
    assert resumed.judge(policy)[0] == report


def test_without_a_scorer_only_strips(scorer):
    clips = {"a": _clip(0)}
    gate = ValidationGate(clips, None)
    assert gate.set_reference({"a": _off_by(*clips["a"], 10)}) == {}
    report, strips = gate.judge({"a": _off_by(*clips["a"], 5)})
    assert report == {} and strips["a"].shape == (FRAMES, 4 * SIZE, SIZE, 3)
