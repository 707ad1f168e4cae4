"""Preference-data generation without Ray: kinds, selection, config, and whole runs through the in-process
executor with stand-in models (fast, deterministic) — resume after a kill, refusing to overwrite, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.generate import GenerateJobConfig, HoleScorer
from vipo.config import ConfigError, load_config, validate_config
from vipo.data import SAMPLE_DATA_ROOT, Manifest, decode_frames, decode_hole, make_clip_id, open_shard
from vipo.generate import (
    MODEL_LOADERS,
    Candidate,
    Clip,
    ErrorBudgetExceeded,
    ModelLoadError,
    OutputExistsError,
    QualityBand,
    QualityGate,
    derive_seed,
    generate,
    judge,
    run_in_process,
)
from vipo.generate.kinds import BlurKind, DiffuEraserKind, FlickerKind, HallucinationKind, segment_seams
from vipo.generate.models import ModelSpec, load_models, pick_device
from vipo.masks import random_moving_masks
from vipo.tracking import MemoryLogger

SIZE = 32
NFRAMES = 6


class FakeProPainter:
    """Fills the hole with each frame's mean known colour: smooth, deterministic, counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frames: np.ndarray, hole: np.ndarray) -> np.ndarray:
        self.calls += 1
        out = frames.copy()
        for frame, frame_hole in zip(out, hole):
            frame[frame_hole] = frame[~frame_hole].mean(axis=0).astype(np.uint8)
        return out


class FakeDiffuEraser:
    """Seeded noise (pulled towards the prior when given), one seed per ``np.array_split`` segment."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, frames, hole, prior=None, *, seed=0, **options):
        self.calls.append({"prior": prior, "seed": seed, **options})
        seeds = [seed] if isinstance(seed, int) else list(seed)
        parts = []
        for segment, segment_seed in zip(np.array_split(np.arange(len(frames)), len(seeds)), seeds):
            noise = np.random.default_rng(segment_seed).integers(0, 256, frames[segment].shape)
            base = noise if prior is None else (noise + 3 * prior[segment].astype(np.int64)) // 4
            parts.append(base.astype(np.uint8))
        raw = np.concatenate(parts)
        return SimpleNamespace(raw_frames=raw, frames=np.where(hole[..., None], raw, frames))


@pytest.fixture
def fake_models(monkeypatch):
    """Route both model names to the stand-ins (for the in-process executor only: Ray workers import afresh)."""
    monkeypatch.setitem(MODEL_LOADERS, "propainter", lambda spec, device: FakeProPainter())
    monkeypatch.setitem(MODEL_LOADERS, "diffueraser", lambda spec, device: FakeDiffuEraser())


def _data(tmp_path: Path, **extra) -> dict:
    data = {
        "output_dir": str(tmp_path / "out"),
        "seed": 7,
        "sources": [{"kind": "davis", "root": str(SAMPLE_DATA_ROOT)}],
        "sampling": {"nframes": NFRAMES, "resolution": SIZE},
        "clips_per_video": 2,
        "masks_per_clip": 2,
        "kinds": [{"kind": "blur"}, {"kind": "hallucination"}, {"kind": "flicker", "num_segments": 2},
                  {"kind": "diffueraser", "seeds": [0, 1, 2]}],
        "models": {"propainter": {"random_init": 0}, "diffueraser": {"random_init": 0}},
        "rows_per_shard": 3,
        "executor": "local",
        "scoring": {"allow_random_lpips_backbone": True},
        "tracking": {"enabled": False},
    }
    data.update(extra)
    return data


def _config(tmp_path: Path, **extra) -> GenerateJobConfig:
    return validate_config(GenerateJobConfig, _data(tmp_path, **extra))


def _scorer(config: GenerateJobConfig) -> HoleScorer:
    return HoleScorer.from_config(config.scoring)


def _rows(shards: Path) -> dict[str, dict]:
    """Every shard row by clip id (failing on duplicates), without the wall-clock ``created_at``."""
    rows: dict[str, dict] = {}
    for path in sorted(shards.glob("*.parquet")):
        for row in open_shard(path).read().to_pylist():
            assert row["clip_id"] not in rows, f"{row['clip_id']} written twice"
            row.pop("created_at")
            rows[row["clip_id"]] = row
    return rows


# ---------------------------------------------------------------------------------------------- kinds


def _clip_and_hole() -> tuple[Clip, np.ndarray]:
    frames = np.random.default_rng(0).integers(0, 256, (NFRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    hole = np.zeros((NFRAMES, SIZE, SIZE), bool)
    hole[:, 4:10, 5:12] = True
    return Clip("v@0", frames), hole


def test_propainter_runs_once_per_hole_and_is_the_blur_negative_and_the_prior():
    propainter, diffueraser = FakeProPainter(), FakeDiffuEraser()
    models = {"propainter": propainter, "diffueraser": diffueraser}
    blur, on_policy = BlurKind(), DiffuEraserKind()
    blur.setup(models)
    on_policy.setup(models)
    clip, hole = _clip_and_hole()
    blurred = blur.make(clip, hole, seed=1)
    loser = on_policy.make(clip, hole, seed=2)
    on_policy.make(clip, hole, seed=3)
    assert propainter.calls == 1
    np.testing.assert_array_equal(blurred.frames, propainter(clip.frames, hole))
    assert loser.prior == "propainter" and blurred.prior == "none"
    assert diffueraser.calls[0]["prior"] is blurred.frames and diffueraser.calls[0]["seed"] == 2
    other_hole = np.roll(hole, 3, axis=2)
    blur.make(clip, other_hole, seed=1)
    assert propainter.calls == 3  # two calls above in this test body + the new hole
    assert set(clip.shared_seconds) == {"propainter"}


def test_hallucination_has_no_prior_and_passes_options():
    diffueraser = FakeDiffuEraser()
    kind = HallucinationKind(options={"num_inference_steps": 4})
    kind.setup({"diffueraser": diffueraser})
    clip, hole = _clip_and_hole()
    output = kind.make(clip, hole, seed=5)
    assert diffueraser.calls == [{"prior": None, "seed": 5, "num_inference_steps": 4}]
    assert output.prior == "none" and output.frames.shape == clip.frames.shape


def test_flicker_splices_segments_with_their_own_seeds_and_records_the_seams():
    diffueraser = FakeDiffuEraser()
    kind = FlickerKind(num_segments=3, use_prior=False)
    assert kind.required_models() == ("diffueraser",)
    kind.setup({"diffueraser": diffueraser})
    clip, hole = _clip_and_hole()
    output = kind.make(clip, hole, seed=10)
    assert diffueraser.calls[0]["seed"] == [10, 11, 12]
    assert output.meta == {"seams": [2, 4], "segment_seeds": [10, 11, 12]}
    assert segment_seams(22, 3) == [8, 15]  # 22 frames: 0-7, 8-14, 15-21
    assert segment_seams(16, 2) == [8]  # the seed's v0 data: spliced every 8 frames


def test_kind_setup_names_missing_models():
    with pytest.raises(ValueError, match="needs models \\['propainter'\\]"):
        BlurKind().setup({"diffueraser": FakeDiffuEraser()})


# ---------------------------------------------------------------------------------------------- selection


def _candidate(kind: str, psnr: float, lpips: float) -> Candidate:
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    return Candidate(kind, 0, frames, frames, scores={"psnr": psnr, "lpips": lpips})


def test_band_selects_in_band_candidate_closest_to_target_and_gate_flags_too_close():
    candidates = [_candidate("a", 20, 0.20), _candidate("a", 22, 0.55), _candidate("a", 25, 0.40),
                  _candidate("a", 45, 0.44), _candidate("b", 18, 0.90)]
    judge(candidates, QualityBand(score="lpips", low=0.3, high=0.65, target=0.45), QualityGate(max_psnr=40))
    assert [c.selected for c in candidates] == [False, False, True, False, False]
    assert [c.flags for c in candidates] == [["out_of_band"], [], [], ["too_close_to_gt"], ["out_of_band"]]


def test_without_band_first_seed_wins_and_flagged_ones_may_stay_eligible():
    candidates = [_candidate("a", 50, 0.1), _candidate("a", 20, 0.5)]
    judge(candidates, None, QualityGate(max_psnr=40))
    assert [c.selected for c in candidates] == [False, True]
    candidates = [_candidate("a", 50, 0.1), _candidate("a", 20, 0.5)]
    judge(candidates, None, QualityGate(max_psnr=40, exclude_flagged=False))
    assert [c.selected for c in candidates] == [True, False]


def test_band_must_be_ordered_and_contain_its_target():
    with pytest.raises(ValueError, match="above high"):
        QualityBand(low=1, high=0)
    with pytest.raises(ValueError, match="outside"):
        QualityBand(low=0, high=1, target=2)
    assert QualityBand(low=0.3, high=0.65).aim() == pytest.approx(0.475)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(("change", "message"), [
    ({"kinds": [{"kind": "sharpen"}]}, "does not match any of the expected tags"),
    ({"models": {"diffueraser": {"random_init": 0}}}, "needs models.propainter.weights"),
    ({"models": {"propainter": {"random_init": 0}, "diffueraser": {"random_init": 0}, "cococo": {"random_init": 0}}},
     "unknown model"),
    ({"kinds": [{"kind": "blur"}, {"kind": "blur"}]}, "appear twice"),
    ({"stages": [{"name": "a", "kinds": ["blur"]}]}, "exactly one stage"),
    ({"stages": [{"name": "a", "kinds": ["nope"]}]}, "unknown kind"),
    ({"masks_per_clip": 0}, "masks_per_clip"),
    ({"sampling": {"nframes": NFRAMES, "resolution": 16}}, "at least 32 px"),
    ({"stages": [{"name": "a", "kinds": ["blur"], "num_gpus": -1}]}, "num_gpus"),
    ({"stages": [{"name": "a", "kinds": ["blur", "hallucination", "flicker", "diffueraser"], "min_size": 3,
                  "max_size": 2}]}, "stages.a: min_size 3 > max_size 2"),
    ({"frame_codec": "webp"}, "frame_codec"),
    ({"models": {"propainter": {"weights": "/no/such/dir"}, "diffueraser": {"random_init": 0}}}, "does not exist"),
    ({"models": {"propainter": {}, "diffueraser": {"random_init": 0}}}, "exactly one of"),
])
def test_bad_config_is_one_line(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_config(GenerateJobConfig, _data(tmp_path, **change))
    assert "\n" not in str(err.value)


def test_content_hash_ignores_resources_and_follows_content(tmp_path):
    base = _config(tmp_path)
    pooled = _config(tmp_path, stages=[{"name": "all", "kinds": ["blur", "hallucination", "flicker", "diffueraser"],
                                        "min_size": 2, "max_size": 4, "num_gpus": 0.5}], max_error_fraction=0.5)
    assert pooled.content_hash() == base.content_hash()
    assert _config(tmp_path, seed=8).content_hash() != base.content_hash()
    assert [s.kinds for s in base.stage_configs()] == [["blur", "hallucination", "flicker", "diffueraser"]]


def test_demo_and_full_configs_load(tmp_path):
    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    demo = load_config(GenerateJobConfig, root / "generate_demo.yaml", [f"output_dir={tmp_path}"])
    assert demo.executor == "ray" and {k.kind for k in demo.kinds} == {"blur", "hallucination", "flicker",
                                                                       "diffueraser"}
    assert (root / "generate.yaml").is_file()


def test_derive_seed_is_stable_and_separates_parts():
    assert derive_seed(7, "davis/bunny#0", "hole") == derive_seed(7, "davis/bunny#0", "hole")
    assert len({derive_seed(7, "davis/bunny#0", "hole"), derive_seed(7, "davis/bunny#1", "hole"),
                derive_seed(8, "davis/bunny#0", "hole"), derive_seed(7, "davis/bunny#0", "window")}) == 4
    assert 0 <= derive_seed("x") < 2**32


def test_device_is_cuda_only_with_a_gpu_and_cuda():
    import torch

    assert pick_device(0) == "cpu"
    assert pick_device(1) == ("cuda" if torch.cuda.is_available() else "cpu")


def test_propainter_loads_as_diffueraser_runs_its_prior():
    default = load_models(["propainter"], {"propainter": ModelSpec(random_init=0)}, "cpu")["propainter"]
    assert (default.config.preset, default.config.resize_ratio, default.config.mask_dilation) == (
        "diffueraser_prior", 0.6, 8)
    spec = ModelSpec(random_init=0, options={"preset": "standalone"})
    assert load_models(["propainter"], {"propainter": spec}, "cpu")["propainter"].config.resize_ratio == 1.0


def test_model_load_failure_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_models(["diffueraser"], {"diffueraser": ModelSpec(weights=tmp_path)}, "cpu")


# ---------------------------------------------------------------------------------------------- runs


def test_run_writes_valid_shards_with_reproducible_holes_and_both_negative_forms(tmp_path, fake_models):
    config = _config(tmp_path, max_videos=2)
    summary = generate(config, _scorer(config))
    shards = config.output_dir / "shards"
    rows = _rows(shards)
    videos = ["davis/bunny", "davis/bikes"]  # train split, in list order
    assert sorted(rows) == sorted(make_clip_id(v, i) for v in videos for i in range(4))
    assert summary["samples_written"] == 8 and summary["clips_processed"] == 4
    row = rows["davis/bikes#3"]
    assert (row["height"], row["width"], len(row["frames"])) == (SIZE, SIZE, NFRAMES)
    hole = decode_hole(row["masks"], "masks", (SIZE, SIZE))
    expected = random_moving_masks(NFRAMES, SIZE, SIZE, seed=derive_seed(7, "davis/bikes#3", "hole"),
                                   config=config.masks)
    np.testing.assert_array_equal(hole, expected)
    assert row["seed"] == derive_seed(7, "davis/bikes#3", "hole")
    frames = decode_frames(row["frames"], "frames", (SIZE, SIZE))
    by_form = {(n["kind"], n["composited"]): n for n in row["negatives"]}
    assert {kind for kind, _ in by_form} == {"blur", "hallucination", "flicker", "diffueraser"}
    for kind in ("blur", "hallucination", "flicker", "diffueraser"):
        raw = decode_frames(by_form[kind, False]["frames"], kind, (SIZE, SIZE))
        comp = decode_frames(by_form[kind, True]["frames"], kind, (SIZE, SIZE))
        np.testing.assert_array_equal(comp[~hole], frames[~hole])  # hard composite: GT outside the hole
        np.testing.assert_array_equal(comp[hole], raw[hole])  # the prediction inside
        assert set(dict(by_form[kind, True]["scores"])) == {"psnr", "lpips"}
    assert json.loads(by_form["flicker", True]["meta"])["seams"] == [3]
    assert json.loads(by_form["diffueraser", True]["meta"])["prior"] == "propainter"
    assert row["prior"]["kind"] == "propainter"
    manifest = Manifest.load(shards)
    entry = manifest.clips["davis/bikes#3"]
    assert entry["status"] == "done"
    assert len(entry["candidates"]) == 6  # 1 blur + 1 hallucination + 1 flicker + 3 diffueraser seeds
    assert sum(c["selected"] for c in entry["candidates"] if c["kind"] == "diffueraser") == 1
    assert manifest.num_rows == 8 and len(manifest.shards) == 2  # 3 rows per shard → whole windows of 2: 4 rows
    gate = json.loads((shards / "summary.json").read_text())["quality_gate"]["kinds"]
    assert set(gate) == {"blur", "hallucination", "flicker", "diffueraser"} and gate["diffueraser"]["candidates"] == 24
    assert set(summary["seconds_per_clip"]) >= {"decode", "propainter", "blur", "diffueraser", "score", "encode"}
    assert (shards / "contact_sheet.png").is_file()
    assert "RANDOM" in json.loads((shards / "generation.json").read_text())["scorer"]["lpips"]


def test_two_model_groups_chain_into_the_same_rows_as_one(tmp_path, fake_models):
    single = _config(tmp_path / "one", max_videos=1)
    generate(single, _scorer(single))
    chained = _config(tmp_path / "two", max_videos=1, stages=[
        {"name": "propainter", "kinds": ["blur"]},
        {"name": "diffueraser", "kinds": ["hallucination", "flicker", "diffueraser"]},
    ])
    seen = []

    def recording(work, stages, writer):
        assert [stage.name for stage in stages] == ["propainter", "diffueraser"]
        assert [sorted(stage.models) for stage in stages] == [["propainter"], ["diffueraser", "propainter"]]
        for commit in run_in_process(work, stages, writer):
            seen.append(commit)
            yield commit

    generate(chained, _scorer(chained), executor=recording)
    assert _rows(chained.output_dir / "shards") == _rows(single.output_dir / "shards")
    devices = [where for commit in seen for where in commit.devices.values()]
    assert len(devices) == 2 and all(set(where) == {"propainter", "diffueraser"} for where in devices)


def _interrupt_after(limit: int):
    """An executor that dies (like a kill) after ``limit`` shards were committed."""

    def executor(work, stages, writer):
        for count, commit in enumerate(run_in_process(work, stages, writer)):
            if count == limit:
                raise KeyboardInterrupt
            yield commit

    return executor


def test_resume_after_kill_makes_exactly_the_missing_clips_identical_to_an_uninterrupted_run(tmp_path, fake_models):
    whole = _config(tmp_path / "whole", max_videos=3)
    generate(whole, _scorer(whole))
    expected = _rows(whole.output_dir / "shards")

    config = _config(tmp_path / "killed", max_videos=3)
    with pytest.raises(KeyboardInterrupt):
        generate(config, _scorer(config), executor=_interrupt_after(1))  # 2 shards of 4 rows written, 1 recorded
    shards = config.output_dir / "shards"
    (shards / ".shard-partial.parquet.123.tmp").write_bytes(b"PAR1 half a shard")  # a writer killed mid-shard
    partial = _rows(shards)
    assert 0 < len(partial) < len(expected)
    made = []

    def counting(work, stages, writer):
        made.extend(result.item.work_id for result in work)
        return run_in_process(work, stages, writer)

    with pytest.raises(OutputExistsError, match="--resume"):
        generate(config, _scorer(config))
    generate(config, _scorer(config), resume=True, executor=counting)
    incomplete = {f"{clip_id.split('#')[0]}@{int(clip_id.split('#')[1]) // 2}" for clip_id in expected
                  if clip_id not in partial}
    assert sorted(made) == sorted(incomplete)  # exactly the windows with missing samples are redone
    assert _rows(shards) == expected
    assert not list(shards.glob(".*.tmp"))
    again = generate(config, _scorer(config), resume=True)
    assert again["clips_processed"] == 0 and again["samples_written"] == len(expected)  # totals from the manifest
    assert again["quality_gate"]["kinds"]["diffueraser"]["candidates"] == 3 * len(expected)


def test_rerun_refuses_resume_with_other_content_and_overwrite_replaces(tmp_path, fake_models):
    config = _config(tmp_path, max_videos=1, clips_per_video=1, masks_per_clip=1)
    generate(config, _scorer(config))
    with pytest.raises(OutputExistsError, match="already holds shards"):
        generate(config, _scorer(config))
    reseeded = _config(tmp_path, max_videos=1, clips_per_video=1, masks_per_clip=1, seed=8)
    with pytest.raises(OutputExistsError, match="cannot resume"):
        generate(reseeded, _scorer(reseeded), resume=True)
    summary = generate(reseeded, _scorer(reseeded), overwrite=True)
    assert summary["samples_written"] == 1
    assert len(list((config.output_dir / "shards").glob("*.parquet"))) == 1


def test_quality_gate_flags_in_manifest_and_summary_and_the_run_logs_summary_and_contact_sheet(tmp_path, fake_models):
    # Every hole PSNR of [0, 1] data is > 0 dB, so a 0 dB gate flags every candidate as too close to the GT.
    config = _config(tmp_path, max_videos=1, clips_per_video=1, quality_gate={"max_psnr": 0.0,
                                                                             "exclude_flagged": False})
    run = MemoryLogger()
    summary = generate(config, _scorer(config), logger_factory=lambda: run)
    shards = config.output_dir / "shards"
    candidates = [c for entry in Manifest.load(shards).clips.values() for c in entry["candidates"]]
    assert len(candidates) == 2 * 6 and all(c["flags"] == ["too_close_to_gt"] for c in candidates)
    gate = summary["quality_gate"]
    assert gate == json.loads((shards / "summary.json").read_text())["quality_gate"] and gate["max_psnr"] == 0.0
    for kind, values in gate["kinds"].items():
        psnr = [c["scores"]["psnr"] for c in candidates if c["kind"] == kind]  # recomputed from the manifest
        assert values["hole_psnr_mean"] == pytest.approx(np.mean(psnr)) and values["too_close_fraction"] == 1.0
        assert values["too_close_to_gt"]
    assert summary["samples_written"] == 2  # flagged but not excluded: still training pairs

    assert run.status == "FINISHED" and run.params["seed"] == "7"
    assert run.tags["vipo.config_hash"] and run.tags["vipo.generate.too_close_to_gt"] == \
        "blur,diffueraser,flicker,hallucination"
    assert run.metrics["generate.samples_written"] == [(0, 2.0)]
    assert run.metrics["generate.quality_gate.kinds.blur.hole_psnr_mean"] == [
        (0, pytest.approx(gate["kinds"]["blur"]["hole_psnr_mean"]))]
    ((_, sheet),) = run.images["contact_sheet"]
    assert sheet.dtype == np.uint8 and sheet.shape[2] == 3
    assert {(Path(path).name, where) for path, where in run.artifacts} == {
        ("manifest.json", "generate"), ("summary.json", "generate"), ("contact_sheet.png", "generate")}

    excluded = _config(tmp_path / "excluded", max_videos=1, clips_per_video=1, quality_gate={"max_psnr": 0.0})
    summary = generate(excluded, _scorer(excluded))
    assert summary["samples_written"] == 0 and summary["skipped_by_reason"] == {
        "no negative selected": 2}  # every candidate flagged and kept out of the pairs


def _frame_folders(root: Path) -> Path:
    """A folder of frame folders: two good videos, one too short, one with a corrupt frame."""
    davis = SAMPLE_DATA_ROOT / "JPEGImages" / "480p"
    for name in ("bunny", "bikes", "short", "corrupt"):
        shutil.copytree(davis / ("bunny" if name in ("short", "corrupt") else name), root / name)
    for extra in sorted((root / "short").iterdir())[NFRAMES - 1:]:
        extra.unlink()
    for frame in sorted((root / "corrupt").iterdir()):
        frame.write_bytes(frame.read_bytes()[:200])  # truncated JPEGs
    return root


def test_bad_inputs_are_skipped_with_reasons_and_the_run_goes_on(tmp_path, fake_models):
    folders = _frame_folders(tmp_path / "videos")
    broken_video = tmp_path / "files"
    broken_video.mkdir()
    (broken_video / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    sources = [{"kind": "frame_folders", "root": str(folders)}, {"kind": "video_files", "root": str(broken_video)}]
    config = _config(tmp_path, sources=sources, clips_per_video=1, masks_per_clip=1, max_error_fraction=0.6,
                     kinds=[{"kind": "blur"}])
    summary = generate(config, _scorer(config))
    manifest = Manifest.load(config.output_dir / "shards")
    assert manifest.status("frame_folders/bunny#0") == "done" and manifest.status("frame_folders/bikes#0") == "done"
    assert manifest.clips["frame_folders/short#0"]["reason"].startswith(f"too few frames: {NFRAMES - 1} < {NFRAMES}")
    assert "corrupt or truncated image" in manifest.clips["frame_folders/corrupt#0"]["reason"]
    assert summary["skipped_by_reason"] == {"too few frames": 1, "corrupt or truncated image": 1,
                                            "unreadable video file": 1}
    assert summary["samples_written"] == 2

    strict = _config(tmp_path / "strict", sources=sources, clips_per_video=1, masks_per_clip=1,
                     max_error_fraction=0.4, kinds=[{"kind": "blur"}])  # 3 of 5 bad
    with pytest.raises(ErrorBudgetExceeded, match="clips had bad input"):
        generate(strict, _scorer(strict))


def test_a_model_that_fails_to_load_fails_the_run_at_start_naming_the_path(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    config = _config(tmp_path, max_videos=1, kinds=[{"kind": "hallucination"}],
                     models={"diffueraser": {"weights": str(empty)}})
    run = MemoryLogger()
    with pytest.raises(ModelLoadError, match=f"'diffueraser' from {empty}"):
        generate(config, _scorer(config), logger_factory=lambda: run)
    assert run.status == "FAILED"
    assert not list((config.output_dir / "shards").glob("*.parquet"))


def test_shards_are_readable_by_plain_pyarrow(tmp_path, fake_models):
    config = _config(tmp_path, max_videos=1, clips_per_video=1, masks_per_clip=1, frame_codec="jpeg")
    generate(config, _scorer(config))
    (path,) = (config.output_dir / "shards").glob("*.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 1 and table.column("frame_codec").to_pylist() == ["jpeg"]


# ------------------------------------------------------------------------------- one owner, self-repair


def _small(tmp_path: Path, **extra) -> GenerateJobConfig:
    """Two windows of one video, one hole each, the blur kind only: two shards of one row."""
    return _config(tmp_path, **{"max_videos": 1, "masks_per_clip": 1, "rows_per_shard": 1,
                                "kinds": [{"kind": "blur"}], "models": {"propainter": {"random_init": 0}}, **extra})


def test_a_live_lease_refuses_a_second_run_in_one_line_and_keeps_its_temp_files(tmp_path, fake_models):
    import socket

    from vipo.generate import OutputLease, OutputLockedError

    config = _small(tmp_path)
    shards = config.output_dir / "shards"
    with OutputLease(shards) as first:
        temp = shards / f".shard-x.parquet.{first.run_id}.0a1b2c3d.tmp"
        temp.write_bytes(b"PAR1 being written")  # the live writer's shard in progress
        for flags in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(OutputLockedError) as err:
                generate(config, _scorer(config), **flags)
            message = str(err.value)
            assert "\n" not in message and f"{socket.gethostname()} pid {os.getpid()}" in message
            assert first.run_id in message
        assert temp.read_bytes() == b"PAR1 being written"
    assert not (shards / "lease.json").exists()  # released
    temp.unlink()
    generate(config, _scorer(config))
    assert not (shards / "lease.json").exists()


def test_a_stale_lease_is_taken_over_with_a_warning(tmp_path, fake_models, caplog):
    import socket
    import subprocess
    import sys
    import time

    config = _small(tmp_path)
    shards = config.output_dir / "shards"
    shards.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: its holder was killed
    lease = {"host": socket.gethostname(), "pid": dead.pid, "start": "2026-01-01T00:00:00+00:00",
             "heartbeat": time.time(), "run_id": "deadbeef"}
    (shards / "lease.json").write_text(json.dumps(lease))
    (shards / ".shard-y.parquet.deadbeef.00000000.tmp").write_bytes(b"PAR1 half")  # the dead writer's leftover
    with caplog.at_level("WARNING"):
        summary = generate(config, _scorer(config))
    assert summary["samples_written"] == 2
    assert any("taking over the stale lease" in r.message and "deadbeef" in r.message for r in caplog.records)
    assert not list(shards.glob(".*.tmp")) and not (shards / "lease.json").exists()


def test_resume_regenerates_a_truncated_shard_and_deletes_a_foreign_orphan(tmp_path, fake_models, caplog):
    config = _small(tmp_path / "run")
    generate(config, _scorer(config))
    shards = config.output_dir / "shards"
    expected = _rows(shards)
    manifest = Manifest.load(shards)
    victim = sorted(manifest.shards)[0]
    victim_clips = sorted(c for c, e in manifest.clips.items() if e.get("shard") == victim)
    data = (shards / victim).read_bytes()
    (shards / victim).write_bytes(data[: len(data) // 2])
    other = _small(tmp_path / "other", seed=99)  # same names (same work ids), other content
    generate(other, _scorer(other))
    foreign = sorted(Manifest.load(other.output_dir / "shards").shards)[1]
    shutil.copy(other.output_dir / "shards" / foreign, shards / "shard-foreign.parquet")
    made = []

    def counting(work, stages, writer):
        made.extend(result.item.video.video_id + "#" + str(result.item.window) for result in work)
        return run_in_process(work, stages, writer)

    with caplog.at_level("WARNING"):
        summary = generate(config, _scorer(config), resume=True, executor=counting)
    assert made == victim_clips  # only the window of the truncated shard (one hole per window: same ids)
    assert _rows(shards) == expected and summary["samples_written"] == len(expected)
    assert not (shards / "shard-foreign.parquet").exists()
    messages = " ".join(r.message for r in caplog.records)
    assert f"{victim}: footer unreadable" in messages and "deleted an orphan shard" in messages


def test_disk_full_stops_cleanly_and_a_resume_finishes_identically(tmp_path, fake_models, monkeypatch):
    import errno

    from vipo.data import shards as shards_module
    from vipo.generate import ShardWriteError

    whole = _small(tmp_path / "whole", clips_per_video=3)
    generate(whole, _scorer(whole))
    expected = _rows(whole.output_dir / "shards")
    largest = max(p.stat().st_size for p in (whole.output_dir / "shards").glob("*.parquet"))
    room = {"bytes": largest + 16}  # the disk fills during the second shard
    original = shards_module._HashingSink.write

    def filling(self, data):
        room["bytes"] -= len(data)
        if room["bytes"] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    config = _small(tmp_path / "full", clips_per_video=3)
    shards = config.output_dir / "shards"
    with monkeypatch.context() as patch:
        patch.setattr(shards_module._HashingSink, "write", filling)
        with pytest.raises(ShardWriteError, match=r"shard-\w+\.parquet: cannot write shard .*No space left.*--resume"):
            generate(config, _scorer(config))
    assert not list(shards.glob(".*.tmp")) and not (shards / "lease.json").exists()
    assert len(Manifest.load(shards, adopt_unlisted=False).shards) == 1  # what was committed stays
    generate(config, _scorer(config), resume=True)
    assert _rows(shards) == expected


def test_retry_skipped_fills_a_fixed_clip_and_the_error_budget_spans_launches(tmp_path, fake_models):
    folders = _frame_folders(tmp_path / "videos")
    sources = [{"kind": "frame_folders", "root": str(folders)}]
    config = _config(tmp_path, sources=sources, clips_per_video=1, masks_per_clip=1, max_error_fraction=0.5,
                     kinds=[{"kind": "blur"}])
    generate(config, _scorer(config))
    shards = config.output_dir / "shards"
    assert Manifest.load(shards).clips["frame_folders/corrupt#0"]["input_error"]
    strict = _config(tmp_path, sources=sources, clips_per_video=1, masks_per_clip=1, max_error_fraction=0.25,
                     kinds=[{"kind": "blur"}])
    with pytest.raises(ErrorBudgetExceeded, match="2 of 4 clips had bad input .*--retry-skipped"):
        generate(strict, _scorer(strict), resume=True)  # this launch makes nothing new, the earlier one failed 2
    shutil.rmtree(folders / "corrupt")
    shutil.copytree(SAMPLE_DATA_ROOT / "JPEGImages" / "480p" / "bunny", folders / "corrupt")  # input fixed
    assert generate(config, _scorer(config), resume=True)["clips_processed"] == 0  # a resume does not retry
    summary = generate(config, _scorer(config), retry_skipped=True)
    manifest = Manifest.load(shards)
    assert manifest.status("frame_folders/corrupt#0") == "done" and summary["clips_processed"] == 2
    assert manifest.clips["frame_folders/short#0"]["reason"].startswith("too few frames")  # retried, still bad
    assert set(_rows(shards)) == {"frame_folders/bunny#0", "frame_folders/bikes#0", "frame_folders/corrupt#0"}
