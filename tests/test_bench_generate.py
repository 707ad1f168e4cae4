"""benchmarks/bench_generate.py's steady-state estimator on hand-made commit times (running the script is minutes of
CPU, so no smoke run here)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generate.py"
_spec = importlib.util.spec_from_file_location("bench_generate", _SCRIPT)  # a script folder, not a package
bench_generate = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bench_generate)
steady_state = bench_generate.steady_state


def test_steady_state_drops_each_actors_start_up_clip():
    # Two actors in lockstep: after a 30 s start-up each commits a 2-row clip every 10 s, of which 8 s are stages.
    arrivals = [(30.0 + 10.0 * step + 0.5 * actor, 2, 8.0) for step in range(3) for actor in range(2)]
    rate, busy = steady_state(arrivals, actors=2)
    assert rate == pytest.approx(2 * 2 / 10.0)  # 2 actors x 2 rows per 10 s; counting after the 1st commit gives 0.49
    assert busy == pytest.approx(8.0 / 10.0)


def test_steady_state_of_one_round_is_unknown():
    assert all(math.isnan(value) for value in steady_state([(5.0, 2, 4.0), (5.1, 2, 4.0)], actors=2))
