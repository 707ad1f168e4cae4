"""Confirmation: pick the winner among the top configs by the bootstrap interval of their per-clip deltas.

One validation pass is as noisy as the gains it judges (the research group measured ±0.06 dB between passes of the
same weights), so the last round's ranking is re-checked: each of the top-k configs is retrained with N fresh seeds,
and every (seed, clip) pair gives one paired delta of the objective against the reference (the objective is a
``val/delta_…`` key whose per-clip values are ``<metric>/<clip>``). The winner is the config whose interval lies
furthest on the good side (lowest upper bound when lower is better); the record says whether that interval excludes
0 (separated from the reference) and whether the paired winner − runner-up interval excludes 0 (separated from the
runner-up).
"""

from __future__ import annotations

from typing import Literal, Mapping

import numpy as np

from vipo.stats import PairedDelta, paired_delta

__all__ = ["choose_by_interval", "per_clip_values"]


def per_clip_values(metrics: Mapping, metric: str) -> dict[str, float]:
    """A report's per-clip values of ``metric`` (keys ``<metric>/<clip>``) → clip → value; without per-clip keys,
    the metric itself as one sample (key ``""``)."""
    prefix = f"{metric}/"
    clips = {key[len(prefix):]: float(value) for key, value in metrics.items() if key.startswith(prefix)}
    return clips or ({"": float(metrics[metric])} if metric in metrics else {})


def _interval(values: np.ndarray, against: np.ndarray, mode: str, samples: int, confidence: float,
              seed: int) -> PairedDelta:
    return paired_delta(values, against, higher_is_better=mode == "max", samples=samples, confidence=confidence,
                        seed=seed)


def _as_dict(delta: PairedDelta) -> dict:
    return {"n": delta.n, "mean": delta.mean, "ci_low": delta.ci_low, "ci_high": delta.ci_high}


def _separated(delta: PairedDelta, mode: str) -> bool:
    """The interval lies entirely on the good side of 0."""
    return bool(delta.ci_high < 0) if mode == "min" else bool(delta.ci_low > 0)


def choose_by_interval(candidates: list[dict], mode: Literal["min", "max"], *, confidence: float = 0.95,
                       samples: int = 2000, seed: int = 0) -> dict:
    """``candidates``: ``{"settled": overrides, "samples": {"<seed>/<clip>": delta}}`` each (deltas vs the
    reference, paired across candidates by key). Returns the confirmation record: every candidate's interval
    (``vs_reference``), the ``winner`` index, ``separated_from_reference``, and with two or more candidates the
    ``runner_up`` index, the paired winner − runner-up interval and ``separated_from_runner_up``."""
    if not candidates:
        raise ValueError("confirmation needs at least one candidate")
    scored = []
    for candidate in candidates:
        keys = sorted(candidate["samples"])
        values = np.array([candidate["samples"][k] for k in keys], dtype=np.float64)
        delta = _interval(values, np.zeros_like(values), mode, samples, confidence, seed)
        scored.append({**candidate, "vs_reference": _as_dict(delta), "_delta": delta})
    # The conservative end of the interval decides: a lucky mean with a wide interval does not win.
    bound = (lambda c: c["_delta"].ci_high) if mode == "min" else (lambda c: -c["_delta"].ci_low)
    order = sorted(range(len(scored)), key=lambda i: (np.nan_to_num(bound(scored[i]), nan=np.inf), i))
    winner = scored[order[0]]
    record = {
        "mode": mode, "confidence": confidence, "winner": order[0], "settled": winner["settled"],
        "separated_from_reference": _separated(winner["_delta"], mode),
    }
    if len(order) > 1:
        runner_up = scored[order[1]]
        common = sorted(set(winner["samples"]) & set(runner_up["samples"]))
        gap = _interval(np.array([winner["samples"][k] for k in common]),
                        np.array([runner_up["samples"][k] for k in common]), mode, samples, confidence, seed)
        record.update(runner_up=order[1], vs_runner_up=_as_dict(gap),
                      separated_from_runner_up=_separated(gap, mode))
    record["candidates"] = [{k: v for k, v in c.items() if k != "_delta"} for c in scored]
    return record
