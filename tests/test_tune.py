"""Staged Tune search: round chaining, health stops, the SFT-only control, confirmation by interval, resume.

The search logic runs here with small Python trainables that report what a training run would (the real trainable
is covered by ``test_tune_e2e.py``)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from vipo.config import ConfigError, load_config
from vipo.stats import paired_delta
from vipo.tune import TuneConfig, run_staged_search
from vipo.tune.confirm import choose_by_interval, per_clip_values
from vipo.tune.staged import best_path, confirmation_path, trial_overrides
from vipo.tune.summary import summary_table


# The trainables here are plain Python: they hold a sliver of a CPU, like a trial driving Ray Train workers.
PYTHON_TRIAL = {"CPU": 0.01}


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
sft_control_round: null
confirm: {{top_k: 0}}
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
    with pytest.raises(ConfigError, match=r"rounds\.0\.space\.a: low must be < high"):
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

    records = run_staged_search(cfg, trainable=objective, resources=PYTHON_TRIAL).rounds
    assert [r["round"] for r in records] == ["r1", "r2"]
    assert records[0]["settled"] == {"a": 2} and records[0]["value"] == 0
    assert records[1]["settled"] == {"a": 2, "c": [5, 6], "b": 0}
    assert len(records[0]["trials"]) == 3
    assert json.loads(best_path(cfg, cfg.rounds[1]).read_text())["settled"]["b"] == 0

    def must_not_run(trial):
        raise AssertionError("a finished round ran again")

    again = run_staged_search(cfg, trainable=must_not_run, resources=PYTHON_TRIAL).rounds
    assert [r["settled"] for r in again] == [r["settled"] for r in records]


def test_a_round_where_every_trial_fails_names_the_error(tmp_path, ray_local):
    cfg = _config(tmp_path, ["tracking.enabled=false"])

    def broken(trial):
        raise ValueError("weights folder missing: /nowhere")

    with pytest.raises(RuntimeError, match=r"r1: no trial reported 'score': .*weights folder missing"):
        run_staged_search(cfg, trainable=broken, resources=PYTHON_TRIAL)


def _values(trial: dict) -> dict:
    """The trial's searched values (JSON); its lineage overrides (output folder, run names, tracking) are left out."""
    values = {}
    for key, value in (item.split("=", 1) for item in trial["_overrides"]):
        if key not in ("output_dir", "name") and not key.startswith("tracking."):
            values[key] = json.loads(value)
    return values


def _staged(tmp_path, rounds: str, extra=()) -> TuneConfig:
    base = tmp_path / "base.yaml"
    base.write_text("recipe: stage3\n")
    path = tmp_path / "tune.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nbase_config: {base}\ntracking: {{enabled: false}}\n{rounds}")
    return load_config(TuneConfig, path, list(extra))


STAGED = """
rounds:
  - name: r1
    fixed: {loss.rho: [0, 0, 0]}
    space: {loss.beta: {kind: grid, values: [100.0, 500.0, 1.0e+7]}}
  - name: r2
    fixed: {loss.rho: [100, 100, 100]}
    space: {optim.lr: {kind: grid, values: [1.0e-4, 1.0e-3]}}
"""


def test_the_default_objective_is_the_validation_delta_and_loss_cannot_rank_beta(tmp_path):
    cfg = _staged(tmp_path, STAGED)
    assert cfg.metric == "val/delta_lpips_hole" and cfg.mode == "min"
    assert cfg.control_round is cfg.rounds[1] and (cfg.confirm.top_k, cfg.confirm.num_seeds) == (2, 3)
    with pytest.raises(ConfigError, match=r"tune.yaml: metric: loss cannot rank a search over loss.beta"):
        _staged(tmp_path, STAGED, ["metric=loss"])
    assert _staged(tmp_path, STAGED, ["metric=loss", "rounds.0.space={}"]).metric == "loss"


def test_zero_context_alpha_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match=r"rounds.1: alpha \[1.0, 2.0, 0.0\]: alpha_c = 0 leaves the context"):
        _staged(tmp_path, STAGED,
                ["rounds.1.space={loss.alpha: {kind: grid, values: [[1.0, 2.0, 0.1], [1.0, 2.0, 0.0]]}}"])
    with pytest.raises(ConfigError, match=r"sft_control_round 1: the SFT-only control \(alpha = 0\) needs rho > 0"):
        _staged(tmp_path, STAGED, ["sft_control_round=1"])
    # The SFT-only control (alpha all zero) is a config, not an error.
    _staged(tmp_path, STAGED, ["rounds.1.fixed={loss.rho: [100, 100, 100], loss.alpha: [0, 0, 0]}"])


def _health_aware(trial):
    """A stand-in training run: 3 checkpoints reporting the objective (β′ = 1e7 would win on it) and health marks;
    β′ = 1e7 raises dgr_collapse from its second report on."""
    from ray import tune

    values = _values(trial)
    beta, lr = values.get("loss.beta", 500.0), values.get("optim.lr", 1e-4)
    control = values.get("loss.alpha") == [0, 0, 0]
    for step in (1, 2, 3):
        collapsed = beta > 1e6 and step >= 2
        objective = -1.0 if beta > 1e6 else abs(beta - 500) / 1e4 - lr - (0.5 if control else 0)
        tune.report({"val/delta_lpips_hole": objective, "health/dgr_collapse": float(collapsed),
                     "health/stuck_at_ln2": 0.0, "dpo/dgr": 0.0 if collapsed else beta / 2, "step": step,
                     **{f"val/delta_lpips_hole/clip{i}": objective + 0.01 * i for i in range(2)}})


def test_collapsing_trial_is_stopped_marked_failed_and_control_runs(tmp_path, ray_local):
    cfg = _staged(tmp_path, STAGED, ["confirm.top_k=0"])
    result = run_staged_search(cfg, trainable=_health_aware, resources=PYTHON_TRIAL)
    r1, r2 = result.rounds
    trials = {t["config"]["loss.beta"]: t for t in r1["trials"]}
    collapsed = trials[1.0e7]
    assert collapsed["status"] == "failed: dgr_collapse" and collapsed["health"] == ["dgr_collapse"]
    assert collapsed["dgr"] == 0.0
    # Stopped at the report that carried the mark: its third checkpoint never ran.
    frame = next(r for r in _grid(cfg, "r1") if r.config["loss.beta"] == 1.0e7).metrics_dataframe
    assert list(frame["step"]) == [1, 2]
    # Its objective (-1) is the best of the round, yet the healthy β′ = 500 is chosen.
    assert r1["settled"] == {"loss.rho": [0, 0, 0], "loss.beta": 500.0}
    assert r2["settled"]["loss.beta"] == 500.0 and r2["settled"]["optim.lr"] == 1e-3
    # Round 2 trained the SFT-only control with the round's best config, alpha zero, rho kept.
    control = r2["control"]
    assert control["config"] == {"loss.alpha": [0.0, 0.0, 0.0], "loss.rho": [100, 100, 100]}
    assert control["value"] == pytest.approx(-0.5 - 1e-3) and r2["control_beats_best"] is True
    assert "control" not in r1
    table = result.summary
    assert table.splitlines()[0] == ("| round | trial | params | objective (val/delta_lpips_hole) | health | dgr_end |")
    assert table.count("failed: dgr_collapse") == 1 and len(table.splitlines()) == 2 + 3 + 2 + 1
    assert summary_table(result.rounds, cfg.metric) == table


def _grid(cfg, experiment):
    """A finished experiment's results, read from its folder (restoring a Tuner would need its trainable)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(str(cfg.output_dir / cfg.name / experiment)))


def test_confirmation_picks_the_tightest_good_interval_not_the_best_mean():
    rng = np.random.default_rng(0)
    # A: the best mean, carried by one lucky clip; B: a little worse on average but consistently below zero.
    lucky = {f"{s}/c{i}": 0.01 for s in range(3) for i in range(4)} | {"0/c0": -1.0}
    steady = {f"{s}/c{i}": -0.05 + 0.005 * rng.standard_normal() for s in range(3) for i in range(4)}
    assert np.mean(list(lucky.values())) < np.mean(list(steady.values()))
    record = choose_by_interval([{"settled": {"x": "lucky"}, "samples": lucky},
                                 {"settled": {"x": "steady"}, "samples": steady}], "min", samples=2000, seed=0)
    assert record["winner"] == 1 and record["settled"] == {"x": "steady"} and record["runner_up"] == 0
    keys = sorted(steady)
    expected = paired_delta(np.array([steady[k] for k in keys]), np.zeros(12), higher_is_better=False)
    assert record["candidates"][1]["vs_reference"]["ci_high"] == pytest.approx(expected.ci_high)
    assert record["separated_from_reference"] is True  # every steady delta is < 0
    # The lucky clip straddles the winner − runner-up interval over zero: the win is not separated from A.
    assert record["vs_runner_up"]["ci_low"] < 0 < record["vs_runner_up"]["ci_high"]
    assert record["separated_from_runner_up"] is False
    # Maximising flips the bound that decides: the lower end must clear zero.
    up = choose_by_interval([{"settled": {}, "samples": {k: -v for k, v in steady.items()}}], "max")
    assert up["winner"] == 0 and up["separated_from_reference"] is True and "runner_up" not in up


def test_per_clip_values_fall_back_to_the_objective():
    report = {"val/delta_x": 0.5, "val/delta_x/a": 0.25, "val/delta_x/b": 0.75, "val/delta_xy/a": 9.0}
    assert per_clip_values(report, "val/delta_x") == {"a": 0.25, "b": 0.75}
    assert per_clip_values({"score": 1.0}, "score") == {"": 1.0}


def test_confirmation_reruns_the_top_configs_with_fresh_seeds(tmp_path, ray_local):
    cfg = _staged(tmp_path, STAGED, ["sft_control_round=null", "confirm.num_seeds=2", "seed=7"])
    seen = tmp_path / "seen"
    seen.mkdir()

    def trainable(trial):  # runs in a Tune worker process: what it saw goes through files
        values = _values(trial)
        (seen / f"{uuid.uuid4().hex}.json").write_text(json.dumps(values))
        _health_aware(trial)

    result = run_staged_search(cfg, trainable=trainable, resources=PYTHON_TRIAL)
    confirmation = result.confirmation
    assert confirmation["seeds"] == [8, 9]
    reruns = [v for v in (json.loads(f.read_text()) for f in seen.iterdir()) if "seed" in v]
    assert sorted((v["optim.lr"], v["seed"]) for v in reruns) == [(1e-4, 8), (1e-4, 9), (1e-3, 8), (1e-3, 9)]
    assert confirmation["settled"]["optim.lr"] == 1e-3 and result.settled == confirmation["settled"]
    assert confirmation["candidates"][0]["vs_reference"]["n"] == 2 * 2  # seeds × clips
    assert json.loads(confirmation_path(cfg).read_text())["winner"] == confirmation["winner"]


def test_an_interrupted_round_resumes_only_its_unfinished_trials(tmp_path, ray_local):
    cfg = _config(tmp_path, ["tracking.enabled=false"])
    marker = tmp_path / "crashed-once"

    def crashes_once(trial):
        from ray import tune

        values = _values(trial)
        if "b" not in values:  # round r1: count the runs of each trial
            runs = tmp_path / f"runs-a{values['a']}"
            runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
            if values["a"] == 3 and not marker.exists():
                marker.touch()
                raise RuntimeError("worker lost")
        tune.report({"score": (values["a"] - 3) ** 2 + values.get("b", 0)})

    with pytest.raises(RuntimeError, match=r"r1: 1 trial\(s\) failed \(.*worker lost\); rerun the same command"):
        run_staged_search(cfg, trainable=crashes_once, resources=PYTHON_TRIAL)
    assert not best_path(cfg, cfg.rounds[0]).exists()
    records = run_staged_search(cfg, trainable=crashes_once, resources=PYTHON_TRIAL).rounds
    assert records[0]["settled"] == {"a": 3} and records[1]["settled"] == {"a": 3, "c": [5, 6], "b": 0}
    # a=1 and a=2 had finished before the crash and were not run again; only a=3 was.
    assert [len((tmp_path / f"runs-a{a}").read_text()) for a in (1, 2, 3)] == [1, 1, 2]


def _overrides_of(trial) -> dict:
    return dict(item.split("=", 1) for item in trial["_overrides"])


def test_ranking_skips_health_failures_and_the_summary_lists_every_trial():
    from vipo.tune.staged import _ranked

    trials = [
        {"trial": "t1", "config": {"loss.beta": 1e7}, "value": -1.0, "health": ["dgr_collapse"],
         "status": "failed: dgr_collapse", "dgr": 0.0},
        {"trial": "t2", "config": {"loss.beta": 500.0}, "value": 0.2, "health": [], "status": "ok", "dgr": 250.0},
        {"trial": "t3", "config": {"loss.beta": 100.0}, "value": 0.1, "health": [], "status": "ok", "dgr": 50.0},
        {"trial": "t4", "config": {"loss.beta": 50.0}, "value": None, "health": [], "status": "ok", "dgr": None},
    ]
    assert [t["trial"] for t in _ranked(trials, "min")] == ["t3", "t2"]
    assert [t["trial"] for t in _ranked(trials, "max")] == ["t2", "t3"]
    control = {"trial": "c", "config": {"loss.alpha": [0, 0, 0]}, "value": 0.3, "health": [], "status": "ok",
               "dgr": None}
    table = summary_table([{"round": "r1", "trials": trials}, {"round": "r2", "trials": [], "control": control}],
                          "val/delta_lpips_hole")
    lines = table.splitlines()
    assert lines[2] == '| r1 | t1 | {"loss.beta":10000000.0} | -1 | failed: dgr_collapse | 0 |'
    assert lines[5] == '| r1 | t4 | {"loss.beta":50.0} | - | ok | - |'
    assert lines[6] == '| r2 | c | {"loss.alpha":[0,0,0]} | 0.3 | ok | - |' and len(lines) == 7


def test_trial_run_names_are_valid_run_names_for_any_value():
    from vipo.train.config import _RUN_NAME
    from vipo.tune.lineage import trial_run_name

    name = trial_run_name("sweep", "r1", {"loss.beta": 1.0e7, "optim.lr": 1e-5, "loss.rho": [0, 100.0, 0]})
    assert name == "sweep-r1-beta_1e07-rho_0_100_0-lr_1e-05"  # sorted by key; no '+' (1e+07)
    assert _RUN_NAME.match(name)  # what the trial's training config accepts as its name


def test_a_local_mode_trial_holds_a_workers_resources_a_driving_trial_a_sliver():
    from vipo.train.config import ScalingSettings
    from vipo.tune.staged import trial_resources

    assert trial_resources(ScalingSettings(num_workers=0)) == {"CPU": 1.0}
    assert trial_resources(ScalingSettings(num_workers=0, use_gpu=True)) == {"GPU": 1.0}
    assert trial_resources(ScalingSettings(num_workers=0, use_gpu=True, resources_per_worker={"CPU": 4})) == {
        "CPU": 4, "GPU": 1.0}
    assert trial_resources(ScalingSettings(num_workers=2, use_gpu=True)) == {"CPU": 0.01}
