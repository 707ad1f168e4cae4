"""Staged Tune search: round k+1 starts from round k's best; finished rounds are skipped on rerun."""

from __future__ import annotations

import json

import pytest

from vipo.config import ConfigError, load_config
from vipo.tune import TuneConfig, run_staged_search
from vipo.tune.staged import best_path, trial_overrides


def _config(tmp_path, extra=()):
    base = tmp_path / "base.yaml"
    base.write_text("recipe: stage1\n")
    path = tmp_path / "tune.yaml"
    path.write_text(
        f"""
output_dir: {tmp_path / 'out'}
base_config: {base}
base_overrides: ["optim.max_steps=3"]
metric: score
mode: min
rounds:
  - name: r1
    space: {{a: {{kind: grid, values: [1, 2, 3]}}}}
  - name: r2
    fixed: {{c: [5, 6]}}
    space: {{b: {{kind: grid, values: [0, 1]}}}}
"""
    )
    return load_config(TuneConfig, path, list(extra))


def test_trial_overrides_order_and_json():
    out = trial_overrides(["x=1"], {"loss.rho": [0, 0, 0], "a": 1}, {"a": 2, "_private": 0})
    assert out == ["x=1", "loss.rho=[0, 0, 0]", "a=2"]


def test_bad_dims_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"rounds\.0\.space\.a\.uniform: Value error, low must be < high"):
        _config(tmp_path, ["rounds.0.space.a={kind: uniform, low: 2, high: 1}"])
    with pytest.raises(ConfigError, match="rounds.1"):
        _config(tmp_path, ["rounds.1.fixed={b: 1}"])


def test_rounds_chain_best_values_and_skip_when_done(tmp_path, ray_local):
    cfg = _config(tmp_path, ["tracking.enabled=false"])

    def objective(trial):
        from ray import tune

        values = dict(item.split("=", 1) for item in trial["_overrides"])
        assert values["optim.max_steps"] == "3"
        a = json.loads(values["a"])
        b = json.loads(values.get("b", "0"))
        tune.report({"score": (a - 2) ** 2 + b})

    records = run_staged_search(cfg, trainable=objective)
    assert [r["round"] for r in records] == ["r1", "r2"]
    assert records[0]["settled"] == {"a": 2} and records[0]["value"] == 0
    assert records[1]["settled"] == {"a": 2, "c": [5, 6], "b": 0}
    assert len(records[0]["trials"]) == 3
    assert json.loads(best_path(cfg, cfg.rounds[1]).read_text())["settled"]["b"] == 0

    def must_not_run(trial):
        raise AssertionError("a finished round ran again")

    again = run_staged_search(cfg, trainable=must_not_run)
    assert [r["settled"] for r in again] == [r["settled"] for r in records]


def test_a_round_where_every_trial_fails_names_the_error(tmp_path, ray_local):
    cfg = _config(tmp_path, ["tracking.enabled=false"])

    def broken(trial):
        raise ValueError("weights folder missing: /nowhere")

    with pytest.raises(RuntimeError, match=r"round r1: no trial reported 'score': .*weights folder missing"):
        run_staged_search(cfg, trainable=broken)
