"""Blind A/B review: the page hides the methods, the import unblinds with the key and logs to the compare run."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from evaluation.benchmark import BenchmarkConfig, RandomMasks, materialize
from evaluation.cache import ClipScores, ResultCache
from evaluation.results import MethodResult
from evaluation.review import ReviewConfig, ReviewImportConfig, import_review, write_review
from evaluation.runs import log_compare_run, log_method_run
from evaluation.scoring import ScoringConfig
from vipo.config import ConfigError, TrackingConfig
from vipo.data import SAMPLE_DATA_ROOT

EXPERIMENT = "review-test"
METHODS = ("sharp", "noisy")


@pytest.fixture(autouse=True)
def _local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the sqlite database under the output_dir


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """An evaluation's output_dir: a 4-clip benchmark, two methods' stored predictions, their MLflow runs."""
    out = tmp_path_factory.mktemp("evaluated")
    config = BenchmarkConfig(name="tiny", source={"kind": "davis", "root": SAMPLE_DATA_ROOT},
                             masks=RandomMasks(seed=0), num_frames=3, height=24, width=32)
    benchmark = materialize(config, out / "benchmarks")
    cache, rng = ResultCache(out / "results"), np.random.default_rng(0)
    run_ids = {}
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    for label in METHODS:
        scores = {}
        for clip_id in benchmark.clip_ids:
            frames, _ = benchmark.load_clip(clip_id)
            prediction = frames if label == "sharp" else rng.integers(0, 256, frames.shape, dtype=np.uint8)
            cache.save_prediction(benchmark.hash, label, clip_id, prediction)
            scores[clip_id] = ClipScores(clip_id, {"psnr": 30.0 if label == "sharp" else 10.0})
        result = MethodResult(label, "propainter", label, label, scores, cache.method_dir(benchmark.hash, label)
                              / "predictions")
        run_ids[label] = log_method_run(tracking_uri, EXPERIMENT, out / "mlartifacts", benchmark_name="tiny",
                                        benchmark_hash=benchmark.hash, benchmark_dir=benchmark.root, scoring_hash="s",
                                        scoring=ScoringConfig(), method=ScoringConfig(), result=result,
                                        metrics=["psnr"], tags={})
    (out / "report").mkdir()
    (out / "report" / "index.html").write_text("<html></html>")
    log_compare_run(tracking_uri, EXPERIMENT, out / "mlartifacts", config=ScoringConfig(), benchmark_name="tiny",
                    benchmark_hash=benchmark.hash, scoring_hash="s", baseline="sharp", report_dir=out / "report",
                    metrics={}, method_run_ids=run_ids, tags={})
    return out


def _review(out: Path, seed: int = 0) -> Path:
    return write_review(ReviewConfig(benchmark="tiny", a="sharp", b="noisy", output_dir=out, seed=seed,
                                     tracking=TrackingConfig(experiment=EXPERIMENT)))


def _import(out: Path, file: Path):
    return import_review(ReviewImportConfig(file=file, output_dir=out, tracking=TrackingConfig(experiment=EXPERIMENT)))


def test_review_page_is_blind_and_its_sides_come_from_the_seed(evaluated):
    page = _review(evaluated)
    folder = page.parent
    text = page.read_text()
    assert "sharp" not in text and "noisy" not in text  # the page never names the methods
    key = json.loads((folder / "key.json").read_text())
    clip_ids = [c["clip_id"] for c in key["clips"]]
    assert len(set(clip_ids)) == 3 and f'id="clips">{json.dumps(clip_ids)}</script>' in text
    sides = [c["left"] for c in key["clips"]]
    assert set(sides) == {"a", "b"}  # seed 0 puts A on both sides over the 3 clips
    expected = np.random.default_rng(0).random(3) < 0.5
    assert sides == ["a" if left else "b" for left in expected]
    for index in range(3):
        assert {p.name for p in (folder / "clips" / str(index)).iterdir()} == {"left.gif", "right.gif", "gt.gif",
                                                                              "mask.gif"}
    with pytest.raises(ConfigError, match="'nope' is not among the evaluated methods"):
        write_review(ReviewConfig(benchmark="tiny", a="sharp", b="nope", output_dir=evaluated,
                                  tracking=TrackingConfig(experiment=EXPERIMENT)))


def test_import_unblinds_counts_and_logs_to_the_compare_run(evaluated, tmp_path):
    folder = _review(evaluated).parent
    key = json.loads((folder / "key.json").read_text())
    # The reviewer always picks the side showing "sharp" except on the last clip, a tie.
    choices = [{"clip_id": c["clip_id"], "choice": "left" if c["left"] == "a" else "right"} for c in key["clips"]]
    choices[-1]["choice"] = "tie"
    exported = tmp_path / "choices.json"
    exported.write_text(json.dumps({"review_id": key["review_id"], "choices": choices}))
    result = _import(evaluated, exported)
    assert result.judged == 3
    assert result.rates["a_preferred"][0] == pytest.approx(2 / 3) and result.rates["b_preferred"][0] == 0.0
    assert result.rates["tie"][0] == pytest.approx(1 / 3) and result.rates["a_win_rate"][0] == pytest.approx(5 / 6)
    low, high = result.rates["a_preferred"][1:]
    assert 0.0 <= low <= 2 / 3 <= high <= 1.0
    client = MlflowClient(f"sqlite:///{evaluated / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (compare,) = client.search_runs([experiment.experiment_id], "tags.`vipo.eval.role` = 'compare'")
    assert compare.data.metrics["review.sharp_vs_noisy.a_preferred"] == pytest.approx(2 / 3)
    assert compare.data.metrics["review.sharp_vs_noisy.judged"] == 3
    assert f"reviews/{key['review_id']}.json" in {a.path for a in client.list_artifacts(compare.info.run_id,
                                                                                        "reviews")}
    exported.write_text("{}")
    with pytest.raises(ConfigError, match="not an exported review"):
        _import(evaluated, exported)


def _chromium():
    """A headless Chromium driven by Selenium; skips with the packages to install when they are missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra: pip install -e .[dev]")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("the review browser test needs Chromium and its driver from the system packages: "
                    "apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver, options, Service(driver)


@pytest.mark.slow
def test_review_page_in_a_real_browser_clicks_through_and_exports(evaluated, tmp_path):
    webdriver, options, service = _chromium()
    from selenium.webdriver.common.by import By

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    page = _review(evaluated, seed=1)
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(page.as_uri())
        progress = browser.find_element(By.ID, "progress")
        assert progress.text == "0 / 3 judged"
        assert browser.find_element(By.ID, "left").get_attribute("src").endswith("clips/0/left.gif")
        assert not browser.find_element(By.ID, "reference").is_displayed()
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys("g")  # ground truth and mask on request
        assert browser.find_element(By.ID, "gt").is_displayed()
        body.send_keys("a")
        assert progress.text == "1 / 3 judged"
        body.send_keys("b")
        browser.find_element(By.CSS_SELECTOR, "[data-choice='tie']").click()
        assert progress.text == "3 / 3 judged" and browser.find_element(By.ID, "finished").is_displayed()
        browser.find_element(By.ID, "export").click()
        exported = json.loads(browser.find_element(By.ID, "export-json").get_attribute("value"))
        files = []
        for _ in range(50):  # the download lands asynchronously
            files = [p for p in downloads.iterdir() if p.suffix == ".json"]
            if files:
                break
            time.sleep(0.1)
    finally:
        browser.quit()
    assert [c["choice"] for c in exported["choices"]] == ["left", "right", "tie"]
    assert len(files) == 1 and json.loads(files[0].read_text()) == exported
    key = json.loads((page.parent / "key.json").read_text())
    result = _import(evaluated, files[0])
    sides = [c["left"] for c in key["clips"]]
    a_wins = (sides[0] == "a") + (sides[1] == "b")
    assert result.rates["a_preferred"][0] == pytest.approx(a_wins / 3)
    assert result.rates["tie"][0] == pytest.approx(1 / 3)


def test_review_commands_write_the_page_and_import_the_export(evaluated, tmp_path):
    from typer.testing import CliRunner

    from jobs.cli import app

    runner = CliRunner()
    written = runner.invoke(app, ["evaluate", "review", f"tracking.experiment={EXPERIMENT}", "seed=3", "--benchmark",
                                  "tiny", "--a", "sharp", "--b", "noisy", "--output-dir", str(evaluated)])
    assert written.exit_code == 0, written.output
    (key_path,) = [p for p in (evaluated / "reviews").glob("*/key.json")
                   if json.loads(p.read_text())["seed"] == 3]
    key = json.loads(key_path.read_text())
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps({"review_id": key["review_id"],
                                    "choices": [{"clip_id": c["clip_id"], "choice": "tie"} for c in key["clips"]]}))
    imported = runner.invoke(app, ["evaluate", "review-import", str(exported), f"tracking.experiment={EXPERIMENT}",
                                   "--output-dir", str(evaluated)])
    assert imported.exit_code == 0, imported.output
    assert json.loads((key_path.parent / "results.json").read_text())["rates"]["tie"][0] == 1.0
    missing = runner.invoke(app, ["evaluate", "review", "--benchmark", "tiny", "--a", "sharp"])
    assert missing.exit_code == 2 and "review needs --a METHOD and --b METHOD" in missing.output
