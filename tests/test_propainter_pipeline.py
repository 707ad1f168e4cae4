"""ProPainterPipeline on a real sample clip (random weights, real architecture, CPU): loading, contract, sub-videos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vipo.config import ConfigError, validate_config
from vipo.data.images import read_frames
from vipo.pipelines.propainter import (
    WEIGHT_FILES,
    ProPainterConfig,
    ProPainterPipeline,
    dilate_holes,
    reference_indices,
    save_random_propainter_weights,
    subvideo_spans,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "DAVIS"
# Small and fast: one RAFT update, half-size processing (90x160 -> 40x80, also exercising the resize path); short
# windows and references so that 5 frames give overlapping windows ([0-2] + ref 3, [0-4], [2-4] + ref 0).
KNOBS = {"raft_iterations": 1, "resize_ratio": 0.5, "neighbor_length": 4, "ref_stride": 3, "progress": False}


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, np.ndarray]:
    """5 frames of the bundled DAVIS-style "bunny" clip (90x160) and its object masks as holes."""
    frames = sorted((SAMPLE / "JPEGImages" / "480p" / "bunny").glob("*.jpg"))[:5]
    masks = sorted((SAMPLE / "Annotations" / "480p" / "bunny").glob("*.png"))[:5]
    assert len(frames) == len(masks) == 5, f"sample clip missing under {SAMPLE}"
    return read_frames(frames), read_frames(masks, grey=True) > 0


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    return save_random_propainter_weights(tmp_path_factory.mktemp("propainter"), seed=0)


@pytest.fixture(scope="module")
def pipe(weights_dir) -> ProPainterPipeline:
    return ProPainterPipeline.from_pretrained(weights_dir, **KNOBS)


@pytest.fixture(scope="module")
def one_pass(pipe, clip) -> np.ndarray:
    return pipe(*clip)


def test_real_clip_keeps_known_pixels_and_fills_holes(one_pass, clip):
    frames, holes = clip
    assert one_pass.shape == frames.shape and one_pass.dtype == np.uint8
    # Holes are dilated by 4 px (3x3 cross) at the 40x80 processing size: 9 px at 90x160, plus 3 for the nearest
    # resizes there and back.
    near_hole = np.stack([cv2.dilate(h.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0 for h in holes])
    assert np.array_equal(one_pass[~near_hole], frames[~near_hole])
    assert np.any(one_pass[holes] != frames[holes])


def test_subvideos_equal_one_pass_when_each_clip_spans_the_video(pipe, one_pass, clip):
    # Sub-videos [0,3) and [3,5), each run with 3 context frames, i.e. over the whole 5-frame video: stitching
    # must give exactly the single-pass result.
    config = ProPainterConfig(**KNOBS, subvideo_length=3, context_length=3)
    chunked = ProPainterPipeline(pipe.flow.raft, pipe.flow_completion, pipe.generator, config=config)
    assert [span[2:] for span in subvideo_spans(5, 3, 3)] == [(0, 5), (0, 5)]
    assert np.array_equal(chunked(*clip), one_pass)


def test_subvideo_spans():
    assert subvideo_spans(10, 4, 2) == [(0, 4, 0, 6), (4, 8, 2, 10), (8, 10, 6, 10)]
    assert subvideo_spans(9, 4, 0) == [(0, 4, 0, 4), (4, 8, 4, 8), (8, 9, 7, 9)]  # a 1-frame tail borrows a frame


def test_reference_frames_skip_the_local_window():
    assert reference_indices([0, 1, 2, 3, 4, 5], 26, 10) == [10, 20]
    assert reference_indices([8, 9, 10, 11, 12], 26, 5) == [0, 5, 15, 20, 25]


def test_random_weight_files_load_as_from_random(pipe):
    reference = ProPainterPipeline.from_random(seed=0, **KNOBS)
    for loaded, built in ((pipe.flow.raft, reference.flow.raft), (pipe.flow_completion, reference.flow_completion),
                          (pipe.generator, reference.generator)):
        built_state = built.state_dict()
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, built_state[key]), key


def test_missing_weight_file_is_a_one_line_error(weights_dir, tmp_path):
    for name in WEIGHT_FILES.values():
        if name != "ProPainter.pth":
            (tmp_path / name).symlink_to(weights_dir / name)
    with pytest.raises(FileNotFoundError) as err:
        ProPainterPipeline.from_pretrained(tmp_path)
    assert str(tmp_path / "ProPainter.pth") in str(err.value) and "\n" not in str(err.value)


def test_wrong_checkpoint_names_the_file(weights_dir, tmp_path):
    for name in WEIGHT_FILES.values():
        (tmp_path / name).symlink_to(weights_dir / name)
    (tmp_path / "ProPainter.pth").unlink()
    torch.save({"encoder.layers.0.weight": torch.zeros(1)}, tmp_path / "ProPainter.pth")
    with pytest.raises(ValueError, match="ProPainter.pth: not a ProPainter generator checkpoint"):
        ProPainterPipeline.from_pretrained(tmp_path)
    (tmp_path / "raft-things.pth").unlink()
    (tmp_path / "raft-things.pth").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="raft-things.pth: cannot be read as a PyTorch checkpoint"):
        ProPainterPipeline.from_pretrained(tmp_path)


def test_bad_knob_is_a_config_error():
    with pytest.raises(ConfigError, match="subvideo_length"):
        ProPainterPipeline.from_random(subvideo_length=1)


@pytest.mark.parametrize("frames, holes, message", [
    (np.zeros((3, 64, 64, 3), np.float32), np.zeros((3, 64, 64), bool), "uint8"),
    (np.zeros((3, 64, 64, 3), np.uint8), np.zeros((3, 64, 64), np.uint8), "bool"),
    (np.zeros((3, 64, 64, 3), np.uint8), np.zeros((3, 64, 32), bool), "does not match"),
    (np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 64, 64), bool), "at least 2 frames"),
    (np.zeros((3, 12, 64, 3), np.uint8), np.zeros((3, 12, 64), bool), "below 16 px"),
])
def test_bad_inputs_are_named(pipe, frames, holes, message):
    with pytest.raises(ValueError, match=message):
        pipe.check_inputs(frames, holes)


def test_diffueraser_prior_preset_is_how_diffueraser_runs_propainter():
    # DiffuEraser's run_diffueraser.py: resize_ratio 0.6 and fp16 (propainter/inference.py defaults),
    # subvideo_length 50 and mask dilation 8 (its arguments); the standalone defaults are inference_propainter.py's.
    prior = validate_config(ProPainterConfig, {"preset": "diffueraser_prior"})
    assert (prior.resize_ratio, prior.mask_dilation, prior.subvideo_length, prior.fp16) == (0.6, 8, 50, True)
    standalone = ProPainterConfig()
    assert (standalone.resize_ratio, standalone.mask_dilation, standalone.subvideo_length, standalone.fp16) == (
        1.0, 4, 80, False)
    overridden = validate_config(ProPainterConfig, {"preset": "diffueraser_prior", "mask_dilation": 0})
    assert overridden.mask_dilation == 0 and overridden.resize_ratio == 0.6
    assert validate_config(ProPainterConfig, prior.model_dump()) == prior  # a dumped config reloads as itself
    with pytest.raises(ConfigError, match="preset"):
        validate_config(ProPainterConfig, {"preset": "diffueraser"})


def test_fp16_only_on_cuda(pipe):
    config = ProPainterConfig(fp16=True)
    cpu = ProPainterPipeline(pipe.flow.raft, pipe.flow_completion, pipe.generator, config=config)
    assert cpu.dtype == torch.float32 and next(cpu.generator.parameters()).dtype == torch.float32


def test_hole_dilation_is_a_cross():
    holes = np.zeros((1, 9, 9), bool)
    holes[0, 4, 4] = True
    dilated = dilate_holes(holes, 2)[0]
    rows, cols = np.nonzero(dilated)
    assert set(zip(rows.tolist(), cols.tolist())) == {(r, c) for r in range(9) for c in range(9)
                                                      if abs(r - 4) + abs(c - 4) <= 2}
