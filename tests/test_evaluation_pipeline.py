"""The evaluation pipeline: benchmark identity, paired statistics, methods, the Ray Data run, MLflow and the report.

One module-scoped run of ``jobs/configs/eval_demo.yaml`` (shrunk: 2 clips × 4 frames at 32×32) evaluates random
ProPainter, tiny DiffuEraser and a stage-3-shaped LoRA export on local Ray (CPU, logical GPUs); the other tests
inspect what it wrote or run cheap pieces without Ray.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from evaluation.benchmark import AnnotationMasks, BenchmarkConfig, FolderMasks, RandomMasks, materialize
from evaluation.cache import ResultCache
from evaluation.config import EvaluateConfig
from evaluation.demo_weights import write_demo_weights
from evaluation.job import evaluate
from evaluation.methods import (
    CheckpointMethod,
    DiffuEraserLoraMethod,
    DiffuEraserMethod,
    ProPainterMethod,
    apply_lora,
)
from vipo.stats import paired_delta
from evaluation.runs import TAG
from evaluation.metrics import frame_ssim_win65
from evaluation.scorer import Scorer
from evaluation.scoring import ScoringConfig
from evaluation.stage import EvaluateStage
from vipo.config import ConfigError, load_config
from vipo.data import SAMPLE_DATA_ROOT
from vipo.masks import load_davis_annotations, load_mask_sequence, save_mask_sequence

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "jobs" / "configs" / "eval_demo.yaml"
EXPERIMENT = "eval-test"


# --- paired statistics (hand cases and an independent bootstrap) --------------------------------------------------

def test_identical_methods_tie_exactly():
    values = np.array([30.1, 28.7, 33.2, 31.0])
    delta = paired_delta(values, values.copy(), higher_is_better=True)
    assert (delta.n, delta.mean, delta.ci_low, delta.ci_high) == (4, 0.0, 0.0, 0.0)
    assert delta.win_rate == 0.5  # a tie counts as half a win


def test_constant_shift_gives_exact_delta_and_direction():
    baseline = np.array([30.25, 28.5, 33.0, 31.75, np.nan])
    shifted = baseline + 0.5
    up = paired_delta(shifted, baseline, higher_is_better=True)
    assert (up.n, up.mean, up.ci_low, up.ci_high, up.win_rate) == (4, 0.5, 0.5, 0.5, 1.0)  # NaN pair left out
    down = paired_delta(shifted, baseline, higher_is_better=False)  # e.g. LPIPS: higher is worse
    assert (down.mean, down.win_rate) == (0.5, 0.0)


def test_bootstrap_interval_matches_scipy():
    rng = np.random.default_rng(3)
    baseline = rng.normal(32.0, 1.0, 40)
    candidate = baseline + rng.normal(0.1, 0.3, 40)
    ours = paired_delta(candidate, baseline, True, samples=20000, seed=1)
    reference = stats.bootstrap((candidate - baseline,), np.mean, method="percentile", n_resamples=20000,
                                confidence_level=0.95, random_state=2).confidence_interval
    width = reference.high - reference.low
    assert ours.ci_low == pytest.approx(reference.low, abs=0.05 * width)
    assert ours.ci_high == pytest.approx(reference.high, abs=0.05 * width)
    assert ours.win_rate == np.mean(candidate > baseline)


# --- benchmark identity ---------------------------------------------------------------------------------------------

def _copy_sample(tmp_path: Path, videos: list[str]) -> Path:
    root = tmp_path / "DAVIS"
    for video in videos:
        shutil.copytree(SAMPLE_DATA_ROOT / "JPEGImages" / "480p" / video, root / "JPEGImages" / "480p" / video)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(videos) + "\n")
    return root


def _benchmark_config(root: Path, masks) -> BenchmarkConfig:
    return BenchmarkConfig(name="tiny", source={"kind": "davis", "root": root}, masks=masks, num_frames=3,
                           height=24, width=32)


def test_benchmark_hash_is_stable_and_follows_the_inputs(tmp_path):
    root = _copy_sample(tmp_path, ["bunny", "bikes"])
    config = _benchmark_config(root, RandomMasks(seed=1))
    first = materialize(config, tmp_path / "a")
    again = materialize(config, tmp_path / "a")
    elsewhere = materialize(config, tmp_path / "b")  # materialised from scratch: same content, same hash
    assert again.root == first.root and elsewhere.hash == first.hash
    assert first.clip_ids == ["davis_bunny", "davis_bikes"]
    frames, hole = first.load_clip("davis_bunny")
    assert frames.shape == (3, 24, 32, 3) and frames.dtype == np.uint8 and hole.dtype == bool and hole.any()

    assert materialize(_benchmark_config(root, RandomMasks(seed=2)), tmp_path / "a").hash != first.hash
    frame = root / "JPEGImages" / "480p" / "bikes" / "00001.jpg"
    Image.fromarray(255 - np.asarray(Image.open(frame))).save(frame)  # an edited input file
    changed = materialize(config, tmp_path / "a")
    assert changed.root != first.root and changed.hash != first.hash


def test_folder_masks_are_read_per_frame_index(tmp_path):
    root = _copy_sample(tmp_path, ["bunny"])
    holes = np.zeros((5, 90, 160), bool)  # the sample frames' size; the benchmark is 24x32
    for index in range(5):
        holes[index, 15 * index : 15 * index + 30, 10:60] = True
    save_mask_sequence(holes, tmp_path / "test_masks" / "bunny")
    config = _benchmark_config(root, FolderMasks(root=tmp_path / "test_masks")).model_copy(update={"start_frame": 2})
    _, hole = materialize(config, tmp_path / "out").load_clip("davis_bunny")
    np.testing.assert_array_equal(hole, load_mask_sequence(tmp_path / "test_masks" / "bunny", size=(24, 32))[2:5])
    assert hole[0, 9:15].any() and not hole[0, :7].any()  # frame 2's hole: rows 30-60 of 90


def test_folder_masks_of_another_size_than_the_frames_are_an_error_unless_resized(tmp_path):
    root = _copy_sample(tmp_path, ["bunny"])
    save_mask_sequence(np.ones((5, 24, 32), bool), tmp_path / "test_masks" / "bunny")
    masks = FolderMasks(root=tmp_path / "test_masks")
    with pytest.raises(ValueError, match=r"test_masks/bunny/00000\.png: mask is 32x24 but the video's frames are "
                                         r"160x90; .*benchmark\.masks\.resize: true"):
        materialize(_benchmark_config(root, masks), tmp_path / "out")
    resized = masks.model_copy(update={"resize": True})
    _, hole = materialize(_benchmark_config(root, resized), tmp_path / "out").load_clip("davis_bunny")
    assert hole.all()


def test_annotation_masks_are_the_object_masks_of_the_scored_frames(tmp_path):
    root = _copy_sample(tmp_path, ["bunny"])
    annotations = SAMPLE_DATA_ROOT / "Annotations" / "480p"
    config = _benchmark_config(root, AnnotationMasks(root=annotations)).model_copy(update={"start_frame": 2})
    _, hole = materialize(config, tmp_path / "out").load_clip("davis_bunny")
    objects = load_davis_annotations(annotations / "bunny", size=(24, 32))
    assert hole.any() and not hole.all()
    np.testing.assert_array_equal(hole, objects[2:5])
    absent = _benchmark_config(root, AnnotationMasks(root=annotations, object_ids=[7]))
    with pytest.raises(ValueError, match=r"object ids \[7\] not in any frame; ids present: \[1\]"):
        materialize(absent, tmp_path / "absent")


def test_cache_key_follows_the_weights_content_and_seed_not_the_path(tmp_path):
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
        for index, name in enumerate(("raft-things.pth", "recurrent_flow_completion.pth", "ProPainter.pth")):
            (folder / name).write_bytes(bytes([index]) * 64)
    first, copy = (ProPainterMethod(weights=folder) for folder in folders)
    assert copy.checkpoint_hash() == first.checkpoint_hash() and copy.method_hash() == first.method_hash()
    assert ProPainterMethod(weights=folders[0], seed=1).method_hash() != first.method_hash()
    (folders[1] / "ProPainter.pth").write_bytes(b"retrained" * 8)  # same path, other weights
    assert copy.checkpoint_hash() != first.checkpoint_hash() and copy.method_hash() != first.method_hash()


def test_diffueraser_prior_runs_with_the_diffueraser_prior_preset(tmp_path):
    prior = {"kind": "propainter", "weights": tmp_path, "options": {"raft_iterations": 2}}
    options = DiffuEraserMethod(weights=tmp_path, prior=prior).prior.options
    assert (options.preset, options.resize_ratio, options.subvideo_length, options.raft_iterations) == (
        "diffueraser_prior", 0.6, 50, 2)
    explicit = {**prior, "options": {"preset": "standalone"}}
    assert DiffuEraserMethod(weights=tmp_path, prior=explicit).prior.options.resize_ratio == 1.0
    assert ProPainterMethod(weights=tmp_path).options.preset == "standalone"  # ProPainter as its own method


def test_scorer_reports_the_win65_ssim_of_the_hard_composite():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 72, 80, 3), dtype=np.uint8)
    prediction = rng.integers(0, 256, frames.shape, dtype=np.uint8)
    hole = np.zeros(frames.shape[:3], bool)
    hole[:, 20:50, 10:40] = True
    scorer = Scorer(ScoringConfig(metrics=["ssim", "ssim_win65"])).setup("cpu")
    scores, _ = scorer.score(frames, hole, prediction)
    composite = np.where(hole[..., None], prediction, frames)
    assert scores["ssim_win65"] == pytest.approx(frame_ssim_win65(composite, frames))
    assert scores["ssim_win65"] < 1 and scores["ssim_win65"] != pytest.approx(scores["ssim"])
    small, _ = scorer.score(frames[:, :32, :32], hole[:, :32, :32], prediction[:, :32, :32])
    assert np.isnan(small["ssim_win65"]) and np.isfinite(small["ssim"])  # 65 px window does not fit


def test_eval_configs_reject_bad_input(tmp_path):
    valid = [f"output_dir={tmp_path}", *_weights_overrides(dict.fromkeys(("propainter", "diffueraser", "stage3"),
                                                                         tmp_path))]
    with pytest.raises(ConfigError, match="methods.x: Input tag 'nope'"):
        load_config(EvaluateConfig, DEMO_CONFIG, [*valid, "methods.x.kind=nope"])
    with pytest.raises(ConfigError, match="baseline 'missing' is not one of the methods"):
        load_config(EvaluateConfig, DEMO_CONFIG, [*valid, "baseline=missing"])
    with pytest.raises(ConfigError, match=r"methods\.propainter\..*weights: .*path does not exist"):
        load_config(EvaluateConfig, DEMO_CONFIG, [*valid, f"methods.propainter.weights={tmp_path / 'none'}"])


def test_davis50_config_has_valid_keys(tmp_path):
    """Every key of the DAVIS-50 config validates once its data and weights paths exist; its baseline is stage 3's
    parent, the released weights another method; the priors and the erosion quirk are explicit."""
    for folder in ("frames", "masks", "pp", "de", "export", "parent"):
        (tmp_path / folder).mkdir()
    (tmp_path / "test.json").write_text(json.dumps({"bear": 82}))
    path = REPO / "jobs" / "configs" / "eval_davis50.yaml"
    config = load_config(EvaluateConfig, path, [
        f"output_dir={tmp_path}", f"benchmark.source.root={tmp_path / 'frames'}",
        f"benchmark.video_list={tmp_path / 'test.json'}", f"benchmark.masks.root={tmp_path / 'masks'}",
        *(f"methods.{m}.weights={tmp_path / w}" for m, w in
          (("propainter", "pp"), ("diffueraser-sft", "de"), ("diffueraser-released", "de"), ("stage3", "de"))),
        *(f"methods.{m}.prior.weights={tmp_path / 'pp'}" for m in ("diffueraser-sft", "diffueraser-released",
                                                                     "stage3")),
        f"methods.diffueraser-sft.path={tmp_path / 'parent'}", f"methods.stage3.adapter={tmp_path / 'export'}",
    ])
    assert (config.benchmark.num_frames, config.benchmark.height, config.benchmark.width) == (24, 240, 432)
    assert config.benchmark.selected_names() == ["bear"]
    assert config.methods["stage3"].pcm_steps is None and config.baseline_label == "diffueraser-sft"
    stage3_parent = yaml.safe_load((REPO / "jobs" / "configs" / "stage3_dpo.yaml").read_text())["model"]["parent"]
    assert yaml.safe_load(path.read_text())["methods"]["diffueraser-sft"]["path"] == stage3_parent
    assert config.methods["diffueraser-released"].kind == "diffueraser"
    diffueraser = [m for m in config.methods.values() if m.kind != "propainter"]
    assert all(m.prior.options.preset == "diffueraser_prior" for m in diffueraser)
    assert config.methods["propainter"].options.preset == "standalone"
    assert all((m.mask_dilation_iter, m.mask_erosion_iter) == (0, 1) for m in diffueraser)
    notes = config.methods["stage3"].notes("stage3")
    assert len(notes) == 1 and "ground truth of the ring" in notes[0]
    assert config.methods["stage3"].model_copy(update={"mask_erosion_iter": 0}).notes("stage3") == []


# --- the pipeline on local Ray ---------------------------------------------------------------------------------------

def _weights_overrides(weights: dict[str, Path]) -> list[str]:
    overrides = []
    for label in ("propainter", "diffueraser", "stage3"):
        overrides.append(f"methods.{label}.actors={{num_gpus: 1, pool_size: 1}}")  # logical GPUs in ray_local
        if label == "propainter":
            overrides += [f"methods.{label}.weights={weights['propainter']}",
                          f"methods.{label}.options.raft_iterations=2"]
            continue
        overrides += [f"methods.{label}.weights={weights['diffueraser']}",
                      f"methods.{label}.prior.weights={weights['propainter']}",
                      f"methods.{label}.prior.options.raft_iterations=2"]
    return overrides + [f"methods.stage3.adapter={weights['stage3']}"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_demo_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory, weights) -> EvaluateConfig:
    out = tmp_path_factory.mktemp("evaluate")
    return load_config(EvaluateConfig, DEMO_CONFIG, [
        f"output_dir={out}", f"tracking.experiment={EXPERIMENT}", "benchmark.num_frames=4", "benchmark.height=32",
        "benchmark.width=32", "benchmark.max_videos=2", *_weights_overrides(weights),
    ])


@pytest.fixture(scope="module")
def evaluation(ray_local, demo_config):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the sqlite database under output_dir
        return evaluate(demo_config)


@pytest.fixture(scope="module")
def client(evaluation, demo_config) -> MlflowClient:
    return MlflowClient(f"sqlite:///{demo_config.output_dir / 'mlflow.db'}")


def _runs(client: MlflowClient, role: str) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], f"tags.`{TAG}role` = '{role}'")


def _hole_psnr(frames: np.ndarray, hole: np.ndarray, prediction: np.ndarray) -> float:
    """Independent reference: per-frame PSNR over hole pixels of the hard composite, averaged over frames."""
    composite = np.where(hole[..., None], prediction, frames).astype(np.float64) / 255
    values = []
    for index in range(len(frames)):
        error = (composite[index] - frames[index] / 255.0)[hole[index]]
        values.append(10 * np.log10(1.0 / np.mean(error**2)))
    return float(np.mean(values))


def test_every_method_scores_every_clip_on_the_hard_composite(evaluation, demo_config):
    results = {r.label: r for r in evaluation.results}
    assert list(results) == ["diffueraser", "propainter", "stage3"]  # the baseline first
    cache = ResultCache(demo_config.output_dir / "results")
    for result in results.values():
        assert list(result.scores) == evaluation.benchmark.clip_ids and len(result.scores) == 2
        for clip_id, scores in result.scores.items():
            assert set(scores.metrics) == set(demo_config.scoring.metrics) and scores.device == "cpu"
            assert scores.metrics["outside_mean_abs"] == scores.metrics["outside_max_abs"] == 0.0
            frames, hole = evaluation.benchmark.load_clip(clip_id)
            prediction = cache.load_prediction(evaluation.benchmark.hash, result.method_hash, clip_id)
            assert scores.metrics["psnr_hole"] == pytest.approx(_hole_psnr(frames, hole, prediction), abs=1e-3)
    # DiffuEraser's prior runs with upstream's prior knobs, not as the standalone ProPainter: its own cache entry.
    prior = demo_config.methods["diffueraser"].prior
    assert prior.options.preset == "diffueraser_prior" and prior.method_hash() != results["propainter"].method_hash
    assert all(cache.load_prediction(evaluation.benchmark.hash, prior.method_hash(), clip_id) is not None
               for clip_id in evaluation.benchmark.clip_ids)


def test_fixed_seed_reproduces_the_actor_output(evaluation, demo_config):
    """The in-process method, fed the stored prior, reproduces what the Ray actor stored, byte for byte."""
    method = demo_config.methods["diffueraser"]
    clip_id = evaluation.benchmark.clip_ids[0]
    frames, hole = evaluation.benchmark.load_clip(clip_id)
    cache = ResultCache(demo_config.output_dir / "results")
    prior = cache.load_prediction(evaluation.benchmark.hash, method.prior.method_hash(), clip_id)
    stored = cache.load_prediction(evaluation.benchmark.hash, method.method_hash(), clip_id)
    np.testing.assert_array_equal(method.load("cpu")(frames, hole, prior), stored)


def test_stage3_lora_is_applied(evaluation, demo_config):
    results = {r.label: r for r in evaluation.results}
    base, lora = results["diffueraser"], results["stage3"]
    assert lora.checkpoint_hash != base.checkpoint_hash and lora.method_hash != base.method_hash
    cache = ResultCache(demo_config.output_dir / "results")
    clip_id = evaluation.benchmark.clip_ids[0]
    frames, hole = evaluation.benchmark.load_clip(clip_id)
    ours = cache.load_prediction(evaluation.benchmark.hash, lora.method_hash, clip_id)
    theirs = cache.load_prediction(evaluation.benchmark.hash, base.method_hash, clip_id)
    assert np.abs(ours.astype(int) - theirs)[hole].mean() > 0.5


def test_lora_method_refuses_an_adapter_that_changes_nothing(tmp_path, weights):
    from safetensors.torch import load_file, save_file

    lora = weights["stage3"] / "lora" / "pytorch_lora_weights.safetensors"
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    save_file({k: v * 0 if "lora_B" in k else v for k, v in load_file(lora).items()},
              untrained / lora.name, metadata={"format": "pt", **_metadata(lora)})
    with pytest.raises(ValueError, match="unchanged"):
        DiffuEraserLoraMethod(weights=weights["diffueraser"], adapter=untrained).load("cpu")
    not_merged = tmp_path / "export"
    shutil.copytree(weights["diffueraser"] / "diffuEraser", not_merged)  # unet_main/ + brushnet/ of the base
    with pytest.raises(ValueError, match="not merged"):
        DiffuEraserLoraMethod(weights=weights["diffueraser"], adapter=not_merged).load("cpu")


def test_export_and_its_adapter_load_the_same_unet(weights, tmp_path):
    """``checkpoint`` on a stage-3 export and ``diffueraser+lora`` on its ``lora/`` give equal main UNets, both
    different from the base; a folder that is no export names what it lacks."""
    import torch

    export = CheckpointMethod(weights=weights["diffueraser"], path=weights["stage3"], pcm_steps=None)
    adapter = DiffuEraserLoraMethod(weights=weights["diffueraser"], adapter=weights["stage3"] / "lora", pcm_steps=None)
    base = DiffuEraserMethod(weights=weights["diffueraser"], pcm_steps=None)
    assert len({export.method_hash(), adapter.method_hash(), base.method_hash()}) == 3
    merged = export.build_pipeline("cpu").unet.state_dict()
    pipeline = adapter.build_pipeline("cpu")
    assert len(apply_lora(pipeline.unet, weights["stage3"] / "lora")) > 0
    loaded = pipeline.unet.state_dict()
    assert merged.keys() == loaded.keys() and all(torch.equal(merged[k], loaded[k]) for k in merged)
    original = base.build_pipeline("cpu").unet.state_dict()
    assert not all(torch.equal(merged[k], original[k]) for k in merged)
    with pytest.raises(FileNotFoundError, match="no unet_main/config.json"):
        CheckpointMethod(weights=weights["diffueraser"], path=tmp_path).load("cpu")


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def test_mlflow_has_a_run_per_method_with_identity_and_table(evaluation, client):
    runs = {run.data.tags[f"{TAG}method"]: run for run in _runs(client, "method")}
    assert sorted(runs) == ["diffueraser", "propainter", "stage3"]
    means = evaluation.report.means
    for label, run in runs.items():
        tags = run.data.tags
        assert tags[f"{TAG}benchmark"] == "sample" and tags[f"{TAG}benchmark_hash"] == evaluation.benchmark.hash
        result = next(r for r in evaluation.results if r.label == label)
        assert tags[f"{TAG}checkpoint_hash"] == result.checkpoint_hash and "vipo.git_commit" in tags
        assert run.data.metrics["psnr"] == pytest.approx(means[label]["psnr"])
        assert run.data.metrics["clips"] == 2
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"per_clip_metrics.csv", "per_clip_metrics.json", "config.yaml", "scoring.yaml"} <= artifacts
    compare = _runs(client, "compare")
    assert len(compare) == 1 and compare[0].data.tags[f"{TAG}baseline"] == "diffueraser"
    assert "delta.stage3.psnr" in compare[0].data.metrics
    assert {a.path for a in client.list_artifacts(compare[0].info.run_id, "report")} >= {
        "report/index.html", "report/bars.png", "report/strips"}


class _Tables(HTMLParser):
    """Cells of the table with a given id: rows of cell texts."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.rows, self.bold = table_id, False, [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.rows[-1].append("")
        elif self.inside and tag == "b":
            self.bold += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False

    def handle_data(self, data):
        if self.inside and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data


def test_report_table_lists_every_method_and_metric(evaluation, demo_config):
    page = evaluation.report.index.read_text()
    table = _Tables("means")
    table.feed(page)
    header, *rows = table.rows
    # outside_* are 0 for every clip after hard compositing: one line, not columns
    shown = [m for m in demo_config.scoring.metrics if not m.startswith("outside_")]
    assert [cell.split()[0] for cell in header[3:]] == shown
    assert "0 outside the mask: ok (outside_mean_abs, outside_max_abs = 0 for every clip of every method)" in page
    assert "LPIPS used a RANDOM alex trunk" in page and "TC used a RANDOM CLIP tower" in page
    assert [row[0].split()[0] for row in rows] == ["diffueraser", "propainter", "stage3"]
    assert table.bold >= len(shown)  # at least one best value per metric
    psnr = header.index("psnr ↑")
    best = max(evaluation.report.means.values(), key=lambda m: m["psnr"])["psnr"]
    assert f"<b>{best:.4f}</b>" in page and float(rows[0][psnr]) == pytest.approx(
        evaluation.report.means["diffueraser"]["psnr"], abs=1e-4)
    assert "warping error: ground-truth flow from OpenCV DIS (medium preset)" in page
    deltas = _Tables("deltas")
    deltas.feed(page)
    assert len(deltas.rows) == 1 + 2 * len(shown)
    rates = _Tables("hallucination")
    rates.feed(page)
    assert [row[0] for row in rates.rows[1:]] == ["diffueraser", "propainter", "stage3"]
    assert "not judged" in rates.rows[2][1]  # ProPainter has no prior to compare with
    # The stage-3 PSNR row, against the per-clip scores: mean paired delta, interval around it, win rate, clips.
    (row,) = [r for r in deltas.rows if r[0] == "stage3" and r[1].split()[0] == "psnr"]
    results = {r.label: r for r in evaluation.results}
    clips = evaluation.benchmark.clip_ids
    paired = results["stage3"].values("psnr", clips) - results["diffueraser"].values("psnr", clips)
    assert float(row[2]) == pytest.approx(paired.mean(), abs=1e-4)
    low, high = (float(x) for x in row[3].strip("[]").split(","))
    assert low - 1e-4 <= paired.mean() <= high + 1e-4
    assert row[4] == f"{np.mean(paired > 0) + 0.5 * np.mean(paired == 0):.1%}" and row[5] == str(len(clips))
    folder = evaluation.report.folder
    for name in ("bars.png", "deltas.png", "scatter_propainter.png", "scatter_stage3.png", "summary.csv", "deltas.csv"):
        assert (folder / name).is_file()
    for clip_id in evaluation.benchmark.clip_ids:
        strip = Image.open(folder / "strips" / f"{clip_id}.png")
        gif = Image.open(folder / "strips" / f"{clip_id}.gif")
        assert strip.width == gif.width == 5 * 32 * 3  # GT | mask | 3 methods, 32 px frames enlarged 3x
        assert gif.n_frames == 4


def test_rerun_reads_the_cache_and_reuses_the_runs(evaluation, demo_config, client, monkeypatch):
    def no_ray(*_):
        raise AssertionError("a cached evaluation must not start actors")

    monkeypatch.setattr("evaluation.adapter.run_on_ray", no_ray)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    again = evaluate(demo_config)
    assert again.report.means == evaluation.report.means
    assert len(_runs(client, "method")) == 3  # the finished runs are reused, not duplicated
    assert len(_runs(client, "compare")) == 2


def test_new_metrics_rescore_stored_predictions_without_the_model(evaluation, demo_config, monkeypatch):
    def no_model(self, device):
        raise AssertionError("the stored prediction must be scored, not recomputed")

    monkeypatch.setattr(ProPainterMethod, "load", no_model)
    method = demo_config.methods["propainter"]
    scoring = ScoringConfig(metrics=["psnr_hole"])
    stage = EvaluateStage("propainter", method, method.method_hash(), None, scoring, evaluation.benchmark.root,
                          demo_config.output_dir / "results")
    stage.setup()
    clip_id = evaluation.benchmark.clip_ids[1]
    rescored = stage.process(clip_id)
    original = next(r for r in evaluation.results if r.label == "propainter").scores[clip_id]
    assert rescored.metrics == {"psnr_hole": original.metrics["psnr_hole"]}


def test_compare_command_rebuilds_the_report_from_mlflow(evaluation, demo_config, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["evaluate", "compare", "--benchmark", "sample", "--output-dir",
                                      str(demo_config.output_dir), f"tracking.experiment={EXPERIMENT}"])
    assert result.exit_code == 0, result.output
    page = (demo_config.output_dir / "reports" / f"sample-{evaluation.benchmark.hash}" / "index.html").read_text()
    for label in ("diffueraser (baseline)", "propainter", "stage3"):
        assert label in page
    assert "TC used a RANDOM CLIP tower" in page  # read back from the method runs' scoring identity
    missing = CliRunner().invoke(app, ["evaluate", "compare", "--benchmark", "nope", "--output-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no finished evaluation runs of benchmark 'nope'" in missing.output
