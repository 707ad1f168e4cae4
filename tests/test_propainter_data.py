"""ProPainter training clips: augmentation flow signs, precomputed vs on-the-fly flow, prepared vs on-the-fly
resize, mask folders, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from propainter_clips import write_translating_clip, write_translation_flows

from vipo.config import validate_config
from vipo.data.errors import DataError, SkipLog
from vipo.data.flow_store import FLOWS_META, FlowStore
from vipo.data.preprocess import FlowsJobConfig, RaftFlows, ResizeJobConfig, resize_videos
from vipo.data.propainter import ProPainterDataConfig, ProPainterDataset
from vipo.data.sources import scan_sources
from vipo.masks import save_mask_sequence
from vipo.models.propainter import flow_warp
from vipo.train.propainter import batch_flows

SHIFT = 2  # the synthetic content moves right by 2 px per frame
HEIGHT, WIDTH, FRAMES = 32, 48, 5


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory) -> Path:
    return write_translating_clip(tmp_path_factory.mktemp("frames"), FRAMES, HEIGHT, WIDTH, SHIFT)


@pytest.fixture(scope="module")
def translation_flows(tmp_path_factory) -> Path:
    """The exact flows of the synthetic clip: forward dx = +SHIFT, backward dx = -SHIFT."""
    return write_translation_flows(tmp_path_factory.mktemp("flows"), FRAMES, HEIGHT, WIDTH, SHIFT)


def data_config(frames_root: Path, **fields) -> ProPainterDataConfig:
    base = {"sources": [{"kind": "frame_folders", "root": str(frames_root)}], "size": [HEIGHT, WIDTH],
            "num_local_frames": 3, "num_ref_frames": 0, "reverse_prob": 0.0, "flip_prob": 0.0}
    return validate_config(ProPainterDataConfig, {**base, **fields})


@pytest.mark.parametrize("reverse, flip, dx", [(0, 0, SHIFT), (1, 0, -SHIFT), (0, 1, -SHIFT), (1, 1, SHIFT)])
def test_augmentation_flow_signs_and_frames_agree(frames_root, translation_flows, reverse, flip, dx):
    dataset = ProPainterDataset(data_config(frames_root, flows_root=str(translation_flows), reverse_prob=reverse,
                                            flip_prob=flip))
    sample = dataset[0]
    forward, backward = sample["flows_forward"], sample["flows_backward"]
    assert forward.shape == (2, 2, HEIGHT, WIDTH)
    assert torch.all(forward[:, 0] == dx) and torch.all(backward[:, 0] == -dx)
    assert torch.all(forward[:, 1] == 0) and torch.all(backward[:, 1] == 0)
    frames = sample["frames"]
    interior = slice(SHIFT, WIDTH - SHIFT)  # the roll wraps around; pixels pulled from outside are not compared
    for t in range(2):
        pulled = flow_warp(frames[t + 1][None], forward[t][None])[0]  # frame t+1 into frame t's geometry
        assert torch.allclose(pulled[..., interior], frames[t][..., interior], atol=1e-5)
        pushed = flow_warp(frames[t][None], backward[t][None])[0]
        assert torch.allclose(pushed[..., interior], frames[t + 1][..., interior], atol=1e-5)


def test_local_run_then_sorted_references_and_all_references(frames_root):
    dataset = ProPainterDataset(data_config(frames_root, num_local_frames=2, num_ref_frames=2))
    rng = np.random.default_rng(0)
    for _ in range(20):
        indices = dataset.frame_indices(FRAMES, rng)
        local, references = indices[:2], indices[2:]
        assert local[1] == local[0] + 1 and references == sorted(references) and len(set(indices)) == 4
    every = ProPainterDataset(data_config(frames_root, num_local_frames=2, num_ref_frames=-1))
    assert sorted(every.frame_indices(FRAMES, rng)) == list(range(FRAMES))
    assert every[0]["frames"].shape[0] == FRAMES


def test_mask_folder_replaces_random_masks(frames_root, tmp_path):
    holes = np.zeros((FRAMES, 16, 24), bool)
    for t in range(FRAMES):
        holes[t, 4:8, t:t + 4] = True
    save_mask_sequence(holes, tmp_path / "clip")
    dataset = ProPainterDataset(data_config(frames_root, mask_root=str(tmp_path), num_local_frames=FRAMES))
    sample = dataset[0]
    expected = np.repeat(np.repeat(holes, 2, axis=1), 2, axis=2)  # nearest resize 16x24 -> 32x48
    assert np.array_equal(sample["holes"][:, 0].numpy() > 0, expected)


def test_flows_at_another_size_are_refused(frames_root, translation_flows):
    with pytest.raises(DataError, match="recompute them"):
        FlowStore(translation_flows, (64, 64))


def test_precomputed_flows_equal_on_the_fly_raft(frames_root, tmp_path):
    config = validate_config(FlowsJobConfig, {
        "output_dir": str(tmp_path), "sources": [{"kind": "frame_folders", "root": str(frames_root)}],
        "size": [HEIGHT, WIDTH], "random_weights_seed": 0, "raft_iterations": 2})
    videos = scan_sources(config.sources, SkipLog())
    root = tmp_path / "flows"
    worker = RaftFlows(config, videos, root)
    assert worker({"index": np.array([0])}) == {"skipped": [""]}
    (root / FLOWS_META).write_text(json.dumps({"size": [HEIGHT, WIDTH]}))
    stored = ProPainterDataset(data_config(frames_root, flows_root=str(root)))[0]
    on_the_fly = ProPainterDataset(data_config(frames_root))[0]
    assert torch.equal(stored["frames"], on_the_fly["frames"])
    batch = {key: value[None] for key, value in on_the_fly.items()}
    forward, backward = batch_flows(batch, worker.raft, num_local=3)
    assert forward.abs().max() > 0  # a random RAFT still gives non-trivial flow
    # Stored in float16: equal to the on-the-fly flow within float16 rounding (the job runs RAFT over the whole
    # video's pairs in one batch, training over the clip's, which moves float32 results by a few ulps).
    fp16 = {"rtol": 2**-10, "atol": 2**-14}
    torch.testing.assert_close(stored["flows_forward"], forward[0], **fp16)
    torch.testing.assert_close(stored["flows_backward"], backward[0], **fp16)
    assert stored["flows_forward"].half().float().equal(stored["flows_forward"])


@pytest.mark.ray
@pytest.mark.slow
def test_prepared_resize_gives_the_on_the_fly_frames_and_resumes(ray_local, frames_root, tmp_path):
    size = [24, 32]
    config = validate_config(ResizeJobConfig, {
        "output_dir": str(tmp_path), "sources": [{"kind": "frame_folders", "root": str(frames_root)}], "size": size})
    summary = resize_videos(config)
    assert summary["written"] == 1 and summary["output"].endswith("JPEGImages_32_24")
    assert sorted(p.name for p in Path(summary["output"], "clip").iterdir())[:2] == ["00000.png", "00001.png"]
    assert resize_videos(config)["already_done"] == 1  # a relaunch writes nothing again
    prepared = ProPainterDataset(data_config(Path(summary["output"]), size=size))[0]
    on_the_fly = ProPainterDataset(data_config(frames_root, size=size))[0]
    assert torch.equal(prepared["frames"], on_the_fly["frames"])
