"""Generation with the real pipelines (tiny random DiffuEraser, random ProPainter): every kind through the real
models in process, and on the shared local Ray (4 CPUs, 2 *logical* GPUs) the actor-pool path writing the same
rows as the in-process executor, on GPU-scheduled actors that still run on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.generate import GenerateJobConfig, HoleScorer
from vipo.config import validate_config
from vipo.data import SAMPLE_DATA_ROOT, Manifest, decode_frames, decode_hole, open_shard
from vipo.generate import generate
from vipo.models.tiny import write_tiny_weights
from vipo.pipelines.diffueraser import DiffuEraserPipeline
from vipo.pipelines.propainter import ProPainterPipeline

SIZE = 32


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-diffueraser")
    write_tiny_weights(root, seed=0)
    return root


def _config(output_dir, weights, executor: str, num_gpus: float, **changes) -> GenerateJobConfig:
    data = {
        "output_dir": str(output_dir),
        "seed": 3,
        "sources": [{"kind": "davis", "root": str(SAMPLE_DATA_ROOT)}],
        "max_videos": 2,
        "sampling": {"nframes": 6, "resolution": SIZE},
        "masks_per_clip": 2,
        "kinds": [{"kind": "hallucination", "seeds": [0, 1]}, {"kind": "flicker", "num_segments": 2,
                                                                "use_prior": False}],
        "models": {"diffueraser": {"weights": str(weights)}},
        "stages": [{"name": "diffueraser", "kinds": ["hallucination", "flicker"], "min_size": 1, "max_size": 2,
                    "num_gpus": num_gpus, "num_cpus": 1}],
        "executor": executor,
        "rows_per_shard": 2,
        "scoring": {"allow_random_lpips_backbone": True},
        "tracking": {"enabled": False},
    }
    return validate_config(GenerateJobConfig, {**data, **changes})


def _rows(folder) -> dict[str, dict]:
    rows = {}
    for path in Manifest.load(folder).shard_paths():
        for row in open_shard(path).read().to_pylist():
            row.pop("created_at")
            rows[row["clip_id"]] = row
    return rows


def test_every_kind_through_the_real_pipelines(tmp_path, tiny_weights):
    config = _config(
        tmp_path, tiny_weights, "local", num_gpus=0, max_videos=1, masks_per_clip=1, stages=[],
        kinds=[{"kind": "blur"}, {"kind": "hallucination"}, {"kind": "flicker", "num_segments": 2},
               {"kind": "diffueraser"}],
        models={"propainter": {"random_init": 0, "options": {"raft_iterations": 2}},
                "diffueraser": {"weights": str(tiny_weights)}},
    )
    generate(config, HoleScorer.from_config(config.scoring))
    (row,) = _rows(config.output_dir / "shards").values()
    frames = decode_frames(row["frames"], "frames", (SIZE, SIZE))
    hole = decode_hole(row["masks"], "masks", (SIZE, SIZE))
    raw = {n["kind"]: n for n in row["negatives"] if not n["composited"]}
    assert set(raw) == {"blur", "hallucination", "flicker", "diffueraser"}
    blur = decode_frames(raw["blur"]["frames"], "blur", (SIZE, SIZE))
    # Generation runs ProPainter as DiffuEraser's prior (upstream's prior knobs), the blur negative included.
    propainter = ProPainterPipeline.from_random(seed=0, raft_iterations=2, progress=False, preset="diffueraser_prior")
    np.testing.assert_array_equal(blur, propainter(frames, hole))
    # The on-policy loser is DiffuEraser with that ProPainter output as its prior and the candidate's seed.
    diffueraser = DiffuEraserPipeline.from_weights(tiny_weights)
    expected = diffueraser(frames, hole, prior=blur, seed=raw["diffueraser"]["seed"]).raw_frames
    np.testing.assert_array_equal(decode_frames(raw["diffueraser"]["frames"], "loser", (SIZE, SIZE)), expected)
    assert json.loads(raw["flicker"]["meta"])["seams"] == [3]


@pytest.mark.ray
def test_gpu_actor_pool_writes_the_rows_of_the_in_process_run(ray_local, tmp_path, tiny_weights):
    captured = []
    from vipo.generate import adapter

    def recording(work, stages, writer):
        for commit in adapter.run_on_ray(work, stages, writer):
            captured.append(commit)
            yield commit

    config = _config(tmp_path / "ray", tiny_weights, "ray", num_gpus=1)
    summary = generate(config, HoleScorer.from_config(config.scoring), executor=recording)
    assert summary["samples_written"] == 4 and summary["clips_failed"] == 0
    devices = [where for commit in captured for where in commit.devices.values()]
    # Ray gave each actor one logical GPU; torch saw no CUDA, so the models ran on the CPU.
    assert len(devices) == 2 and {d["diffueraser"] for d in devices} == {"cpu"}
    assert all(commit.node for commit in captured)  # written by Ray tasks, not by this driver
    gpu_ids = {d["diffueraser.ray_gpu_ids"] for d in devices}
    assert gpu_ids and all(ids in {"0", "1"} for ids in gpu_ids)

    local = _config(tmp_path / "local", tiny_weights, "local", num_gpus=0)
    generate(local, HoleScorer.from_config(local.scoring))
    assert _rows(config.output_dir / "shards") == _rows(local.output_dir / "shards")



@pytest.mark.ray
def test_a_model_that_fails_to_load_in_an_actor_fails_the_run_naming_the_path(ray_local, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    config = _config(tmp_path / "out", empty, "ray", num_gpus=1)
    with pytest.raises(Exception, match=f"cannot load model 'diffueraser' from {empty}"):
        generate(config, HoleScorer.from_config(config.scoring))
    assert not list((tmp_path / "out" / "shards").glob("*.parquet"))
