"""`vipo tune` end to end on tiny stage-3 trials: the validation objective reaches Tune at every checkpoint, and a
planted collapsing trial (β′ = 1e7) is stopped by the health stopper and marked failed. Kept to one round of two
3-step trials, trained both ways (local mode and a Ray Train worker); the search logic (chaining, control,
confirmation, resume) is covered by ``test_tune.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from test_stage3_recipe import shards, weights_root  # noqa: F401  (module fixtures)

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1], ids=["local-mode", "ray-train-worker"])
def test_tune_demo_ranks_on_the_validation_delta_and_stops_a_collapsing_trial(
        tmp_path, ray_local, shards, weights_root, capsys, workers):  # noqa: F811
    """Both ways a trial trains: in its own process (local mode, reports straight to Tune) and through a Ray Train
    worker (reports through ``TuneReportCallback``)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    from jobs import tune

    # Relative paths in the base overrides mean the launch folder inside trials too (Tune would move each trial into
    # its own folder): the local-mode run passes the shards relative to it (Ray's workers start there).
    worker_cwd = ray_local.get(ray_local.remote(lambda: os.getcwd()).remote())
    assert worker_cwd == os.getcwd()
    shards_arg = os.path.relpath(shards) if workers == 0 else shards
    base = ["optim.max_steps=3", "checkpointing.every_n_steps=1", "validation.every_n_steps=1",
            "validation.num_inference_steps=1", f"scaling.num_workers={workers}", "export_on_finish=false",
            f"model.weights_root={weights_root}", "model.tiny_weights_seed=null", f"data.shards={shards_arg}",
            "tracking.enabled=false", "optim.lr=1e-3"]
    tune.run(CONFIGS / "tune_demo.yaml", [
        f"output_dir={tmp_path}", "tracking.enabled=false", f"base_overrides={json.dumps(base)}",
        "rounds=[{name: r1, fixed: {loss.rho: [0, 0, 0]}, space: {loss.beta: {kind: grid, values: [500.0, 1.0e+7]}}}]",
        "sft_control_round=null", "confirm.top_k=0",
    ])
    record = json.loads((tmp_path / "stage3-demo-sweep" / "best_r1.json").read_text())
    trials = {t["config"]["loss.beta"]: t for t in record["trials"]}
    assert trials[1.0e7]["status"].startswith("failed: ") and trials[1.0e7]["health"]
    assert trials[500.0]["status"] == "ok" and record["settled"]["loss.beta"] == 500.0
    assert record["metric"] == "val/delta_lpips_hole" and record["value"] == trials[500.0]["value"]

    grid = ResultGrid(ExperimentAnalysis(str(tmp_path / "stage3-demo-sweep" / "r1")))
    healthy = next(r for r in grid if r.config["loss.beta"] == 500.0).metrics_dataframe
    # One report per checkpoint (steps 1 to 3), each carrying the objective and its per-clip deltas.
    assert list(healthy["step"]) == [1, 2, 3]
    assert healthy["val/delta_lpips_hole"].notna().all()
    per_clip = [c for c in healthy.columns if c.startswith("val/delta_lpips_hole/")]
    assert len(per_clip) == 1 and (healthy[per_clip[0]] == healthy["val/delta_lpips_hole"]).all()
    stopped = next(r for r in grid if r.config["loss.beta"] == 1.0e7).metrics_dataframe
    # Step 1 is DPO at ln 2 (policy = reference) for every β; the collapse shows from step 2, where it is stopped.
    marks = [c for c in stopped.columns if c.startswith("health/")]
    assert len(stopped) < len(healthy) and any(stopped[c].iloc[-1] for c in marks)

    out = capsys.readouterr().out
    assert "| r1 |" in out and "failed: " in out
