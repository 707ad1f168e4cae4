"""Blind human A/B review of two evaluated methods: a static page to judge, then an import that unblinds.

``vipo evaluate review --benchmark X --a M1 --b M2`` writes ``<output_dir>/reviews/<review id>/``::

    index.html          one clip at a time: two hard composites side by side, GT and mask on request
    clips/<n>/left.gif  right.gif  gt.gif  mask.gif
    key.json            which method is on the left of each clip (the page never names the methods)

Which side method A takes is drawn per clip from ``seed``. Keys: ``A`` (or ←) the left is better, ``B`` (or →)
the right, ``T`` (or space) a tie, ``G`` shows GT and mask; ``Export`` downloads the choices as JSON.
``vipo evaluate review-import FILE`` unblinds them with ``key.json``, computes the preference rates with bootstrap
intervals and logs them to the benchmark's latest compare run in MLflow.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import Image
from pydantic import AfterValidator, Field

from evaluation.benchmark import Benchmark
from evaluation.job import _recorded_tracking
from vipo.stats import bootstrap_interval
from evaluation.report import mask_overlay
from evaluation.runs import find_benchmark_runs, log_review
from vipo.config import Config, ConfigError, TrackingConfig
from vipo.generate.candidates import hard_composite
from vipo.train.checkpointing import atomic_write_text

__all__ = ["ReviewConfig", "ReviewImportConfig", "ReviewResult", "import_review", "write_review"]

_MIN_SIDE_PX = 192
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]


def _resolve(path: Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser().resolve()


class ReviewConfig(Config):
    """``vipo evaluate review --benchmark X --a M1 --b M2 [--output-dir D]``: the page for a blind A/B review."""

    benchmark: Label
    a: Label
    b: Label
    output_dir: Annotated[Path | None, AfterValidator(_resolve)] = None
    """The evaluation's output_dir (its mlflow.db and results); the page goes to ``<output_dir>/reviews/``."""
    seed: int = Field(default=0, ge=0)
    max_clips: int | None = Field(default=None, ge=1)
    tracking: TrackingConfig = TrackingConfig()


class ReviewImportConfig(Config):
    """``vipo evaluate review-import FILE [--output-dir D]``: unblind an exported review and log its rates."""

    file: Path
    output_dir: Annotated[Path | None, AfterValidator(_resolve)] = None
    bootstrap_samples: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    tracking: TrackingConfig = TrackingConfig()


def _tracking(config: ReviewConfig | ReviewImportConfig, command: str) -> tuple[str, str]:
    """The tracking URI and experiment of the evaluation, found the way ``vipo evaluate compare`` finds them."""
    if config.output_dir is None and not (config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ConfigError(f"{command}: pass --output-dir (the evaluation's output_dir, which holds mlflow.db) or set "
                          "MLFLOW_TRACKING_URI / tracking.tracking_uri")
    return _recorded_tracking(config, config.output_dir or Path.cwd())


def _save_gif(path: Path, video: np.ndarray) -> None:
    scale = max(1, math.ceil(_MIN_SIDE_PX / video.shape[1]))
    size = (video.shape[2] * scale, video.shape[1] * scale)
    frames = [Image.fromarray(frame).resize(size, Image.NEAREST) for frame in video]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)


def write_review(config: ReviewConfig) -> Path:
    """Write the blinded review page of ``config.a`` vs ``config.b`` → its ``index.html``."""
    if config.a == config.b:
        raise ConfigError(f"review: --a and --b are the same method {config.a!r}")
    tracking_uri, experiment = _tracking(config, "review")
    try:
        runs = find_benchmark_runs(tracking_uri, experiment, config.benchmark)
    except LookupError as err:
        raise ConfigError(str(err)) from None
    results = {r.label: r for r in runs.results}
    for label in (config.a, config.b):
        if label not in results:
            raise ConfigError(f"review: method {label!r} is not among the evaluated methods {sorted(results)}")
        if results[label].predictions_dir is None:
            raise ConfigError(f"review: the stored predictions of {label!r} are not reachable from here")
    if runs.benchmark_dir is None:
        raise ConfigError(f"review: the materialised benchmark {runs.benchmark_name} is not reachable from here")
    benchmark = Benchmark.open(runs.benchmark_dir)
    clip_ids = [c for c in benchmark.clip_ids if all(c in results[m].scores for m in (config.a, config.b))]
    clip_ids = clip_ids[: config.max_clips]
    digest = hashlib.sha256(f"{benchmark.hash}:{config.a}:{config.b}:{config.seed}".encode()).hexdigest()[:8]
    review_id = f"{benchmark.name}-review-{digest}"  # no method names: the page shows it
    folder = (config.output_dir or Path.cwd()) / "reviews" / review_id
    rng = np.random.default_rng(config.seed)
    a_left = rng.random(len(clip_ids)) < 0.5
    clips = []
    for index, (clip_id, a_on_left) in enumerate(zip(clip_ids, a_left)):
        frames, hole = benchmark.load_clip(clip_id)
        composites = {}
        for label in (config.a, config.b):
            with np.load(results[label].predictions_dir / f"{clip_id}.npz") as data:
                composites[label] = hard_composite(frames, data["frames"], hole)
        left, right = (config.a, config.b) if a_on_left else (config.b, config.a)
        files = {"left": composites[left], "right": composites[right], "gt": frames,
                 "mask": mask_overlay(frames, hole)}
        for name, video in files.items():
            _save_gif(folder / "clips" / str(index) / f"{name}.gif", video)
        clips.append({"clip_id": clip_id, "left": "a" if a_on_left else "b"})
    key = {"review_id": review_id, "benchmark": benchmark.name, "benchmark_hash": benchmark.hash,
           "a": config.a, "b": config.b, "seed": config.seed, "clips": clips}
    atomic_write_text(json.dumps(key, indent=1), folder / "key.json")
    page = folder / "index.html"
    atomic_write_text(_page(review_id, [c["clip_id"] for c in clips]), page)
    print(f"review page: {page}  ({len(clips)} clips; the key is {folder / 'key.json'}: do not show it)")
    return page


_SCRIPT = """
const clips = JSON.parse(document.getElementById('clips').textContent);
const reviewId = document.body.dataset.review;
const choices = new Array(clips.length).fill(null);
let current = 0;
function show() {
  const done = choices.filter(c => c !== null).length;
  document.getElementById('progress').textContent = `${done} / ${clips.length} judged`;
  if (current >= clips.length) {
    document.getElementById('stage').hidden = true;
    document.getElementById('finished').hidden = false;
    return;
  }
  document.getElementById('stage').hidden = false;
  document.getElementById('finished').hidden = true;
  document.getElementById('title').textContent = `clip ${current + 1} of ${clips.length}: ${clips[current]}`;
  for (const side of ['left', 'right', 'gt', 'mask'])
    document.getElementById(side).src = `clips/${current}/${side}.gif`;
  document.getElementById('current-choice').textContent = choices[current] ? `your choice: ${choices[current]}` : '';
}
function choose(choice) {
  if (current >= clips.length) return;
  choices[current] = choice;
  current += 1;
  show();
}
function exportChoices() {
  const data = {review_id: reviewId, choices: clips.map((clip, i) => ({clip_id: clip, choice: choices[i]}))};
  const text = JSON.stringify(data, null, 1);
  document.getElementById('export-json').value = text;
  const link = document.createElement('a');
  link.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  link.download = `${reviewId}-choices.json`;
  document.body.appendChild(link);
  link.click();
  link.remove();
}
document.addEventListener('keydown', event => {
  const key = event.key.toLowerCase();
  if (key === 'a' || key === 'arrowleft') choose('left');
  else if (key === 'b' || key === 'arrowright') choose('right');
  else if (key === 't' || key === ' ') choose('tie');
  else if (key === 'g') document.getElementById('reference').hidden ^= true;
  else if (key === 'backspace' && current > 0) { current -= 1; show(); }
  else return;
  event.preventDefault();
});
document.getElementById('export').addEventListener('click', exportChoices);
for (const button of document.querySelectorAll('[data-choice]'))
  button.addEventListener('click', () => choose(button.dataset.choice));
document.getElementById('toggle-reference').addEventListener('click',
  () => document.getElementById('reference').hidden ^= true);
show();
"""

_STYLE = """[hidden]{display:none!important}body{font-family:sans-serif;margin:1.5em}
img{image-rendering:pixelated;margin:4px;border:1px solid #999}.pair{display:flex;gap:1em}.pair figure{margin:0}
button{font-size:15px;margin:4px}kbd{border:1px solid #999;padding:0 4px;border-radius:3px}
#progress{font-weight:bold}"""


def _page(review_id: str, clip_ids: list[str]) -> str:
    clips_json = json.dumps(clip_ids).replace("</", "<\\/")  # script content is not HTML-decoded
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>blind review {html.escape(review_id)}</title>
<style>{_STYLE}</style></head><body data-review="{html.escape(review_id)}">
<h1>Blind A/B review</h1>
<p>Which inpainted video is better? The two methods are shown in random order per clip.
<kbd>A</kbd>/<kbd>←</kbd> left is better, <kbd>B</kbd>/<kbd>→</kbd> right is better, <kbd>T</kbd>/<kbd>space</kbd>
tie, <kbd>G</kbd> ground truth and mask, <kbd>Backspace</kbd> back one clip.</p>
<p id="progress"></p>
<div id="stage"><h2 id="title"></h2>
<div class="pair"><figure><img id="left" alt="left"><figcaption>left (A)</figcaption></figure>
<figure><img id="right" alt="right"><figcaption>right (B)</figcaption></figure></div>
<p><button data-choice="left">A: left is better</button><button data-choice="tie">T: tie</button>
<button data-choice="right">B: right is better</button><button id="toggle-reference">G: GT and mask</button>
<span id="current-choice"></span></p>
<div class="pair" id="reference" hidden><figure><img id="gt" alt="ground truth"><figcaption>ground truth
</figcaption></figure><figure><img id="mask" alt="mask"><figcaption>mask</figcaption></figure></div></div>
<p id="finished" hidden>All clips judged. Export the choices and send the file back.</p>
<p><button id="export">Export choices (JSON)</button></p>
<textarea id="export-json" rows="4" cols="80" readonly></textarea>
<script type="application/json" id="clips">{clips_json}</script>
<script>{_SCRIPT}</script></body></html>
"""


@dataclass(frozen=True)
class ReviewResult:
    """Unblinded preference rates of A over B (ties counted apart, and as half in ``a_win_rate``), each with its
    bootstrap interval over the judged clips."""

    review_id: str
    a: str
    b: str
    judged: int
    rates: dict[str, tuple[float, float, float]]
    """``a_preferred``/``b_preferred``/``tie``/``a_win_rate`` → (rate, interval low, interval high)."""
    choices: list[dict]
    results_file: Path
    """The unblinded choices and rates, next to the review's key."""

    def metrics(self) -> dict[str, float]:
        prefix = f"review.{self.a}_vs_{self.b}"
        flat = {f"{prefix}.judged": float(self.judged)}
        for name, (rate, low, high) in self.rates.items():
            flat.update({f"{prefix}.{name}": rate, f"{prefix}.{name}.ci_low": low, f"{prefix}.{name}.ci_high": high})
        return flat


def import_review(config: ReviewImportConfig) -> ReviewResult:
    """Unblind ``config.file`` (the page's export) with its review's ``key.json``, compute the preference rates
    and log them (and the unblinded choices) to the benchmark's latest compare run."""
    try:
        exported = json.loads(Path(config.file).read_text())
        review_id, choices = exported["review_id"], exported["choices"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"review-import: {config.file} is not an exported review ({type(err).__name__}: {err}); "
                          "use the page's Export button") from None
    output_dir = config.output_dir or Path.cwd()
    key_path = output_dir / "reviews" / review_id / "key.json"
    if not key_path.is_file():
        raise ConfigError(f"review-import: no key for review {review_id!r} at {key_path}; pass the --output-dir the "
                          "review page was written under")
    key = json.loads(key_path.read_text())
    sides = {clip["clip_id"]: clip["left"] for clip in key["clips"]}
    unblinded = []
    for entry in choices:
        if entry.get("choice") is None:
            continue
        if entry["clip_id"] not in sides or entry["choice"] not in ("left", "right", "tie"):
            raise ConfigError(f"review-import: {config.file}: unexpected entry {entry} for review {review_id}")
        chosen = entry["choice"]
        if chosen != "tie":
            chosen = sides[entry["clip_id"]] if chosen == "left" else ("b" if sides[entry["clip_id"]] == "a" else "a")
        unblinded.append({"clip_id": entry["clip_id"], "preferred": {"a": key["a"], "b": key["b"]}.get(chosen, "tie")})
    if not unblinded:
        raise ConfigError(f"review-import: {config.file} holds no judged clip")
    preferred = np.array([u["preferred"] for u in unblinded])
    indicators = {"a_preferred": preferred == key["a"], "b_preferred": preferred == key["b"],
                  "tie": preferred == "tie"}
    indicators["a_win_rate"] = indicators["a_preferred"] + 0.5 * indicators["tie"]
    rates = {}
    for name, values in indicators.items():
        values = values.astype(np.float64)
        low, high = bootstrap_interval(values, samples=config.bootstrap_samples, confidence=config.confidence)
        rates[name] = (float(values.mean()), low, high)
    result = ReviewResult(review_id, key["a"], key["b"], len(unblinded), rates, unblinded,
                          key_path.parent / "results.json")
    summary = json.dumps({"review_id": review_id, "a": key["a"], "b": key["b"], "judged": result.judged,
                          "rates": rates, "choices": unblinded}, indent=1)
    atomic_write_text(summary, result.results_file)
    tracking_uri, experiment = _tracking(config, "review-import")
    try:
        run_id = log_review(tracking_uri, experiment, key["benchmark_hash"], result.metrics(),
                            summary, f"reviews/{review_id}.json")
    except LookupError as err:
        raise ConfigError(f"review-import: {err}") from None
    for name, (rate, low, high) in rates.items():
        print(f"{name:12s} {rate:6.1%}  [{low:.1%}, {high:.1%}]")
    print(f"{result.judged} clips judged; logged to compare run {run_id}")
    return result
