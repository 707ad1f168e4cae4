"""The comparison report: methods × metrics, paired deltas vs the baseline, charts, side-by-side strips, one page.

Written into one folder (logged to MLflow as artifacts by the caller)::

    index.html          the static page (relative links to everything below)
    summary.csv         methods × metric means over the clips every method has
    deltas.csv          per candidate and metric: mean paired delta, bootstrap interval, win rate, n
    bars.png            one bar chart per metric, bars from zero
    deltas.png          each candidate's paired delta per metric with its interval, around the baseline (0)
    scatter_<m>.png     per-clip scatter, baseline (x) vs candidate <m> (y), per scatter metric
    strips/<clip>.png   GT | mask | each method's hard composite, a few frames as rows
    strips/<clip>.gif   the same columns over every frame

Means in bold are the best per metric in its direction (↑ higher is better, ↓ lower). Metrics that are 0 for every
clip by construction (``outside_*`` after hard compositing) get a one-line check instead of columns and charts. The
hallucination rate is shown per method with its bootstrap interval; VFID is one distance per method (no deltas).
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from evaluation.benchmark import Benchmark
from evaluation.config import ReportConfig
from vipo.stats import PairedDelta, bootstrap_interval, paired_delta
from evaluation.results import MethodResult
from evaluation.scoring import METRICS
from vipo.generate.candidates import hard_composite

__all__ = ["Report", "build_report", "mask_overlay"]

_MIN_CELL_HEIGHT = 96
_HEADER_PX = 14
_HOLE_TINT = np.array([255, 0, 0], dtype=np.float32)


@dataclass
class Report:
    """The written report: ``index`` page, its ``folder``, per-method means and (candidate, metric) deltas."""

    folder: Path
    index: Path
    baseline: str
    clip_ids: list[str]
    means: dict[str, dict[str, float]]
    deltas: dict[tuple[str, str], PairedDelta]
    notes: list[str] = field(default_factory=list)

    def delta_metrics(self) -> dict[str, float]:
        """Flat ``delta.<method>.<metric>[.ci_low|.ci_high]`` and ``win_rate.<method>.<metric>`` values."""
        flat = {}
        for (label, metric), delta in self.deltas.items():
            flat[f"delta.{label}.{metric}"] = delta.mean
            flat[f"delta.{label}.{metric}.ci_low"] = delta.ci_low
            flat[f"delta.{label}.{metric}.ci_high"] = delta.ci_high
            flat[f"win_rate.{label}.{metric}"] = delta.win_rate
        return flat


def _arrow(metric: str) -> str:
    return "↑" if METRICS[metric].higher_is_better else "↓"


def _best(values: dict[str, float], metric: str) -> set[str]:
    finite = {label: v for label, v in values.items() if math.isfinite(v)}
    if not finite:
        return set()
    best = (max if METRICS[metric].higher_is_better else min)(finite.values())
    return {label for label, v in finite.items() if v == best}


def _common_clips(results: list[MethodResult], benchmark: Benchmark | None) -> list[str]:
    shared = set.intersection(*(set(r.scores) for r in results))
    order = benchmark.clip_ids if benchmark is not None else sorted(shared)
    return [clip_id for clip_id in order if clip_id in shared]


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.4f}"


# --- charts --------------------------------------------------------------------------------------------------------

def _subplots(count: int) -> tuple[Figure, list]:
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.2 * columns, 2.8 * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure, axes


def _bar_chart(path: Path, means: dict[str, dict[str, float]], metrics: list[str], baseline: str) -> None:
    """Every bar starts at zero, so its length is the value (differences are in deltas.png)."""
    labels = list(means)
    figure, axes = _subplots(len(metrics))
    colors = ["0.55" if label == baseline else f"C{i % 10}" for i, label in enumerate(labels)]
    for axis, metric in zip(axes, metrics):
        values = [means[label][metric] for label in labels]
        axis.bar(range(len(labels)), [v if math.isfinite(v) else 0.0 for v in values], color=colors)
        axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        axis.set_title(f"{metric} {_arrow(metric)}", fontsize=9)
    figure.savefig(path, dpi=100)


def _delta_chart(path: Path, deltas: dict[tuple[str, str], PairedDelta], metrics: list[str]) -> None:
    """Per metric: each candidate's mean paired delta with its bootstrap interval; the baseline is the 0 line."""
    figure, axes = _subplots(len(metrics))
    candidates = list(dict.fromkeys(label for label, _ in deltas))
    for axis, metric in zip(axes, metrics):
        for i, label in enumerate(candidates):
            delta = deltas[(label, metric)]
            if math.isfinite(delta.mean):
                axis.errorbar([i], [delta.mean], yerr=[[delta.mean - delta.ci_low], [delta.ci_high - delta.mean]],
                              fmt="o", color=f"C{(i + 1) % 10}", capsize=3)
        axis.axhline(0.0, color="0.55", linewidth=1)
        axis.set_xticks(range(len(candidates)), candidates, rotation=30, ha="right", fontsize=7)
        axis.set_xlim(-0.5, len(candidates) - 0.5)
        axis.set_title(f"Δ {metric} {_arrow(metric)} vs baseline", fontsize=9)
    figure.savefig(path, dpi=100)


def _scatter(path: Path, baseline: MethodResult, candidate: MethodResult, metrics: list[str], clip_ids: list[str],
             deltas: dict[tuple[str, str], PairedDelta]) -> None:
    figure = Figure(figsize=(3.6 * len(metrics), 3.4), layout="constrained")
    axes = figure.subplots(1, len(metrics), squeeze=False).ravel()
    for axis, metric in zip(axes, metrics):
        x, y = baseline.values(metric, clip_ids), candidate.values(metric, clip_ids)
        keep = np.isfinite(x) & np.isfinite(y)
        axis.scatter(x[keep], y[keep], s=14)
        if keep.any():
            low, high = min(x[keep].min(), y[keep].min()), max(x[keep].max(), y[keep].max())
            axis.plot([low, high], [low, high], color="0.6", linewidth=0.8)
        delta = deltas[(candidate.label, metric)]
        axis.set_xlabel(f"{baseline.label} {metric}", fontsize=8)
        axis.set_ylabel(f"{candidate.label} {metric}", fontsize=8)
        axis.set_title(f"{metric} {_arrow(metric)}: Δ {delta.mean:+.3f} [{delta.ci_low:+.3f}, {delta.ci_high:+.3f}]"
                       f", win {delta.win_rate:.0%}", fontsize=8)
    figure.savefig(path, dpi=100)


# --- side-by-side strips -------------------------------------------------------------------------------------------

def mask_overlay(frames: np.ndarray, hole: np.ndarray) -> np.ndarray:
    tinted = frames.astype(np.float32) * 0.5 + _HOLE_TINT * 0.5
    return np.where(hole[..., None], tinted, frames).astype(np.uint8)


def _columns(benchmark: Benchmark, clip_id: str, results: list[MethodResult]) -> list[tuple[str, np.ndarray]]:
    """(title, uint8 (F,H,W,3)) columns: GT, the hole on GT, each method's hard composite."""
    frames, hole = benchmark.load_clip(clip_id)
    columns = [("GT", frames), ("mask", mask_overlay(frames, hole))]
    for result in results:
        with np.load(result.predictions_dir / f"{clip_id}.npz") as data:
            columns.append((result.label, hard_composite(frames, data["frames"], hole)))
    return columns


def _grid(columns: list[tuple[str, np.ndarray]], frame_indices: list[int], cell: tuple[int, int]) -> Image.Image:
    """Rows = frames, columns = sources, under a title row; each frame resized to ``cell`` = (width, height)."""
    cell_w, cell_h = cell
    height = columns[0][1].shape[1]
    resample = Image.NEAREST if cell_h >= height else Image.BOX  # crisp pixels up, no aliasing down
    canvas = Image.new("RGB", (cell_w * len(columns), _HEADER_PX + cell_h * len(frame_indices)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for column, (title, video) in enumerate(columns):
        draw.text((column * cell_w + 2, 1), title, fill="black", font=font)
        for row, index in enumerate(frame_indices):
            tile = Image.fromarray(video[index]).resize((cell_w, cell_h), resample)
            canvas.paste(tile, (column * cell_w, _HEADER_PX + row * cell_h))
    return canvas


def _strips(folder: Path, benchmark: Benchmark, clip_ids: list[str], results: list[MethodResult],
            config: ReportConfig) -> list[str]:
    """A PNG (``strip_frames`` rows, frames enlarged to at least 96 px) and a GIF (every frame, at most
    ``gif_max_width`` wide) per clip."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width, frame_count = benchmark.height, benchmark.width, benchmark.num_frames
    scale = max(1, math.ceil(_MIN_CELL_HEIGHT / height))
    rows = sorted(set(np.linspace(0, frame_count - 1, min(config.strip_frames, frame_count)).round().astype(int)))
    written = []
    for clip_id in clip_ids[: config.max_strip_clips]:
        columns = _columns(benchmark, clip_id, results)
        _grid(columns, rows, (width * scale, height * scale)).save(folder / f"{clip_id}.png")
        gif_scale = min(scale, config.gif_max_width / (width * len(columns)))
        gif_cell = (max(1, round(width * gif_scale)), max(1, round(height * gif_scale)))
        frames = [_grid(columns, [index], gif_cell) for index in range(frame_count)]
        frames[0].save(folder / f"{clip_id}.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
        written.append(clip_id)
    return written


# --- page ----------------------------------------------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #bbb;padding:3px 7px;text-align:right;font-size:13px}th{background:#eee}
#means{width:100%;table-layout:fixed}#means td,#means th{overflow-wrap:anywhere;padding:3px 4px}
td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:4px 0}code{font-size:12px}"""


def _means_table(results: list[MethodResult], means: dict[str, dict[str, float]], metrics: list[str],
                 baseline: str) -> str:
    best = {metric: _best({label: means[label][metric] for label in means}, metric) for metric in metrics}
    # <wbr> lets long metric names break at their underscores, so the table fits the page
    head = "".join(f"<th>{html.escape(m).replace('_', '_<wbr>')} {_arrow(m)}</th>" for m in metrics)
    rows = []
    for result in results:
        cells = []
        for metric in metrics:
            text = _fmt(means[result.label][metric])
            cells.append(f"<td><b>{text}</b></td>" if result.label in best[metric] else f"<td>{text}</td>")
        role = " (baseline)" if result.label == baseline else ""
        rows.append(f"<tr><td>{html.escape(result.label)}{role}</td><td>{html.escape(result.kind)}</td>"
                    f"<td><code>{html.escape(result.checkpoint_hash[:12])}</code></td>{''.join(cells)}</tr>")
    return (f'<table id="means"><tr><th>method</th><th>kind</th><th>weights</th>{head}</tr>'
            f"{''.join(rows)}</table>")


def _deltas_table(deltas: dict[tuple[str, str], PairedDelta], confidence: float) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{html.escape(metric)} {_arrow(metric)}</td><td>{d.mean:+.4f}</td>"
        f"<td>[{d.ci_low:+.4f}, {d.ci_high:+.4f}]</td><td>{d.win_rate:.1%}</td><td>{d.n}</td></tr>"
        for (label, metric), d in deltas.items())
    return (f'<table id="deltas"><tr><th>method</th><th>metric</th><th>Δ vs baseline</th>'
            f"<th>{confidence:.0%} bootstrap interval</th><th>win rate</th><th>clips</th></tr>{rows}</table>")


def _write_csvs(folder: Path, means: dict[str, dict[str, float]], metrics: list[str],
                deltas: dict[tuple[str, str], PairedDelta]) -> None:
    with open(folder / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", *metrics])
        writer.writerows([label, *(values[m] for m in metrics)] for label, values in means.items())
    with open(folder / "deltas.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "metric", "delta", "ci_low", "ci_high", "win_rate", "clips"])
        writer.writerows([label, metric, d.mean, d.ci_low, d.ci_high, d.win_rate, d.n]
                         for (label, metric), d in deltas.items())


def _zero_checks(results: list[MethodResult], metrics: list[str], clip_ids: list[str]) -> tuple[list[str], str | None]:
    """The ``outside_*`` metrics that are 0 for every clip of every method (→ one line, not columns), and that line."""
    zero = [m for m in metrics if m.startswith("outside_")
            and all(np.all(r.values(m, clip_ids) == 0) for r in results)]
    if not zero:
        return [], None
    return zero, f"0 outside the mask: ok ({', '.join(zero)} = 0 for every clip of every method)"


def _rate_table(results: list[MethodResult], clip_ids: list[str], config: ReportConfig, seed: int) -> str:
    """Per method: hallucination rate (share of judged clips labelled hallucinated) with its bootstrap interval."""
    rows = []
    for result in results:
        labels = result.values("hallucination", clip_ids)
        labels = labels[np.isfinite(labels)]
        scores = result.values("hallucination_score", clip_ids)
        scores = scores[np.isfinite(scores)]
        if not len(labels):
            rows.append(f"<tr><td>{html.escape(result.label)}</td><td colspan=4>not judged (no prior to compare "
                        "with)</td></tr>")
            continue
        low, high = bootstrap_interval(labels, samples=config.bootstrap_samples, confidence=config.confidence,
                                       seed=seed)
        score = _fmt(float(scores.mean())) if len(scores) else "nan"
        rows.append(f"<tr><td>{html.escape(result.label)}</td><td>{labels.mean():.1%}</td>"
                    f"<td>[{low:.1%}, {high:.1%}]</td><td>{score}</td><td>{len(labels)}</td></tr>")
    return (f'<table id="hallucination"><tr><th>method</th><th>hallucination rate ↓</th><th>{config.confidence:.0%} '
            f"bootstrap interval</th><th>mean score ↓</th><th>clips judged</th></tr>{''.join(rows)}</table>")


def build_report(folder: str | Path, *, benchmark_name: str, benchmark_hash: str, results: list[MethodResult],
                 baseline: str, metrics: list[str], config: ReportConfig, benchmark: Benchmark | None = None,
                 seed: int = 0, notes: list[str] | None = None,
                 random_networks: dict[str, str] | None = None) -> Report:
    """Write the report of ``results`` (the baseline's included) into ``folder`` → :class:`Report`.

    ``benchmark`` (the materialised inputs) and each result's ``predictions_dir`` are needed for the strips;
    without them the strips are left out with a note. Means and deltas use the clips every method has.
    ``random_networks`` (metric prefix → sentence, :func:`evaluation.scoring.random_networks`) are stated at the
    top and next to every metric they affect.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    notes = list(notes or [])
    random_networks = dict(random_networks or {})
    by_label = {r.label: r for r in results}
    if baseline not in by_label:
        raise ValueError(f"baseline {baseline!r} is not among the results {sorted(by_label)}")
    ordered = [by_label[baseline], *(r for r in results if r.label != baseline)]
    clip_ids = _common_clips(ordered, benchmark)
    if not clip_ids:
        raise ValueError("the methods share no scored clip; nothing to compare")
    if any(len(r.scores) != len(clip_ids) for r in ordered):
        notes.append(f"means and deltas use the {len(clip_ids)} clips every method has")
    zero, zero_line = _zero_checks(ordered, metrics, clip_ids)
    metrics = [m for m in metrics if m not in zero]
    per_clip = [m for m in metrics if METRICS[m].per_clip]
    if "vfid" in metrics:
        notes.append(f"VFID is one distance over the {len(clip_ids)} clips (1024-d I3D features, covariances of rank "
                     f"at most {len(clip_ids) - 1}: noisy with few clips), at the benchmark's frame size")
    means = {r.label: r.means(metrics, clip_ids) for r in ordered}
    base = ordered[0]
    deltas = {
        (r.label, metric): paired_delta(r.values(metric, clip_ids), base.values(metric, clip_ids),
                                        METRICS[metric].higher_is_better, samples=config.bootstrap_samples,
                                        confidence=config.confidence, seed=seed)
        for r in ordered[1:] for metric in per_clip
    }
    _write_csvs(folder, means, metrics, deltas)
    _bar_chart(folder / "bars.png", means, metrics, baseline)
    charts = ["bars.png"]
    if deltas:
        _delta_chart(folder / "deltas.png", deltas, per_clip)
        charts.append("deltas.png")
    scatter_metrics = [m for m in config.scatter_metrics if m in per_clip]
    scatters = []
    for candidate in ordered[1:] if scatter_metrics else []:
        name = f"scatter_{candidate.label}.png"
        _scatter(folder / name, base, candidate, scatter_metrics, clip_ids, deltas)
        scatters.append(name)
    strips: list[str] = []
    missing = [r.label for r in ordered if r.predictions_dir is None]
    if benchmark is None or missing:
        notes.append("side-by-side strips left out: " + (
            "the materialised benchmark is not reachable from here" if benchmark is None
            else f"no stored predictions reachable for {missing}"))
    else:
        strips = _strips(folder / "strips", benchmark, clip_ids, ordered, config)

    def random_note(metric: str) -> str:
        return "".join(f" <b>{html.escape(note)}</b>" for prefix, note in random_networks.items()
                       if metric.startswith(prefix))

    sections = [
        f"<h1>Benchmark {html.escape(benchmark_name)} <code>{html.escape(benchmark_hash)}</code></h1>",
        *(f'<p class="random-network" style="color:#b00"><b>{html.escape(note)}</b></p>'
          for note in random_networks.values()),
        f"<p>{len(clip_ids)} clips" + (f", {benchmark.num_frames} frames at {benchmark.width}×{benchmark.height}"
                                       if benchmark is not None else "")
        + f"; baseline <b>{html.escape(baseline)}</b>; hard composite scored frame by frame; "
          f"{config.bootstrap_samples} bootstrap resamples; a tie counts as half a win.</p>",
        *([f'<p id="zero-check">{html.escape(zero_line)}</p>'] if zero_line else []),
        "<h2>Means</h2>", _means_table(ordered, means, metrics, baseline),
        "<h2>Paired deltas vs the baseline</h2>",
        _deltas_table(deltas, config.confidence) if deltas else "<p>only the baseline was evaluated</p>",
    ]
    if "hallucination" in metrics:
        sections += ["<h2>Hallucination rate</h2>", _rate_table(ordered, clip_ids, config, seed)]
    sections += ["<h2>Charts</h2>", *(f'<img src="{name}" alt="{name[:-4]} chart">' for name in charts),
                 *(f'<img src="{html.escape(name)}" alt="scatter">' for name in scatters)]
    if strips:
        sections.append("<h2>Side by side: GT | mask | " + " | ".join(html.escape(r.label) for r in ordered)
                        + "</h2>")
        for clip_id in strips:
            sections.append(f'<h3>{html.escape(clip_id)}</h3><img src="strips/{html.escape(clip_id)}.gif" alt="">'
                            f'<br><img src="strips/{html.escape(clip_id)}.png" alt="">')
    if notes:
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    sections.append("<h2>Metrics</h2><ul>" + "".join(
        f"<li><b>{html.escape(m)}</b> {_arrow(m)}: {html.escape(METRICS[m].description)}{random_note(m)}</li>"
        for m in metrics) + "</ul>")
    index = folder / "index.html"
    index.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>vipo evaluation: '
                     f"{html.escape(benchmark_name)}</title><style>{_STYLE}</style></head><body>"
                     + "\n".join(sections) + "</body></html>\n")
    return Report(folder, index, baseline, clip_ids, means, deltas, notes + ([zero_line] if zero_line else []))
