"""``vipo demo [--output-dir runs/demo]``: the whole flow on the bundled sample clips with tiny random models.

generate → stage 1 → stage 2 → stage 3 (Region-Reg-DPO, LoRA) → round 1 of the staged Tune sweep (tune_demo.yaml)
→ evaluation of ProPainter, DiffuEraser and the stage-3 export → the comparison report. Local Ray, one sqlite MLflow
database for every step (``<output_dir>/mlflow.db``). Each step is the same job a user submits, driven by the configs in
``jobs/configs/*_demo.yaml`` with paths pointed into ``output_dir``. Rerunning the command continues where it
stopped: generation resumes from its manifest, training runs resume from their checkpoints, finished Tune rounds
and cached evaluation results are skipped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parent / "configs"


def _latest_export(run_dir: Path) -> Path:
    exports = sorted((run_dir / "export").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    if not exports:
        raise RuntimeError(f"{run_dir}: training finished without an export (export_on_finish is off?)")
    return exports[-1]


STEPS = 8


def _step(number: int, title: str) -> float:
    print(f"[{number}/{STEPS}] {title}", flush=True)
    return time.perf_counter()


def run(output_dir: Path) -> None:
    from evaluation.demo_weights import write_demo_weights
    from jobs import evaluate, generate, train, tune
    from vipo.data import SAMPLE_DATA_ROOT
    from vipo.config import RayConfig
    from vipo.storage import resolve_output_path
    from vipo.tracking import init_ray

    out = resolve_output_path(output_dir)  # a relative one lands under the storage root, as every job output does
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    shared = [f"tracking.tracking_uri={tracking_uri}"]
    init_ray(RayConfig(num_cpus=4), tracking_uri)
    timings: dict[str, float] = {}

    start = _step(1, "weights (tiny random DiffuEraser, random ProPainter)")
    weights_root = out / "weights"
    marker = weights_root / ".complete"
    if not marker.exists():
        write_demo_weights(weights_root)
        marker.write_text("ok\n")
    diffueraser, propainter = weights_root / "diffueraser", weights_root / "propainter"
    timings["weights"] = time.perf_counter() - start

    start = _step(2, "generate preference shards (Ray Data)")
    generation = out / "generate"
    generate.run(
        CONFIGS / "generate_demo.yaml",
        [
            f"output_dir={generation}", f"sources.0.root={SAMPLE_DATA_ROOT}",
            f"models.diffueraser.weights={diffueraser}", "models.diffueraser.random_init=null",
            f"models.propainter.weights={propainter}", "models.propainter.random_init=null", *shared,
        ],
        resume=(generation / "shards").exists(),
    )
    timings["generate"] = time.perf_counter() - start

    train_dir = out / "train"
    common = [f"output_dir={train_dir}", f"model.weights_root={diffueraser}", *shared]
    start = _step(3, "train stage 1 (UNet2D + BrushNet)")
    train.run(CONFIGS / "stage1_demo.yaml", [*common, f"data.sources.0.root={SAMPLE_DATA_ROOT}"])
    stage1 = _latest_export(train_dir / "stage1-demo")
    timings["stage1"] = time.perf_counter() - start

    start = _step(4, "train stage 2 (motion modules)")
    train.run(CONFIGS / "stage2_demo.yaml",
              [*common, f"data.sources.0.root={SAMPLE_DATA_ROOT}", f"model.pretrained_stage1_path={stage1}"])
    stage2 = _latest_export(train_dir / "stage2-demo")
    timings["stage2"] = time.perf_counter() - start

    start = _step(5, "train stage 3 (Region-Reg-DPO with LoRA; each checkpoint evaluated beside it)")
    stage3_overrides = [*common, f"model.parent={stage2}", f"data.shards={generation / 'shards'}"]
    # Its checkpoints are scored on the sample clips beside the training (eval/<metric> in its MLflow run).
    train.run(CONFIGS / "stage3_dpo_demo.yaml",
              [*stage3_overrides, f"evaluation.benchmark.source.root={SAMPLE_DATA_ROOT}"])
    stage3 = _latest_export(train_dir / "stage3-dpo-demo")
    timings["stage3"] = time.perf_counter() - start

    start = _step(6, "tune (round 1 of the staged search: a healthy trial and a planted collapsing one; Ray Tune)")
    # The demo's paths join the sweep's own trial settings (short local-mode runs). Only round 1 runs, to keep the
    # demo's output short: `vipo tune jobs/configs/tune_demo.yaml` runs all four rounds, the SFT-only control and
    # the confirmation (13 trials, ~5 min on 2 cores).
    sweep = yaml.safe_load((CONFIGS / "tune_demo.yaml").read_text())
    tune.run(
        CONFIGS / "tune_demo.yaml",
        [f"output_dir={out / 'tune'}", f"base_config={CONFIGS / 'stage3_dpo_demo.yaml'}",
         f"base_overrides={json.dumps([*stage3_overrides[1:], *sweep['base_overrides']])}",
         f"rounds={json.dumps(sweep['rounds'][:1])}", "sft_control_round=null", "confirm.top_k=0", *shared],
    )
    timings["tune"] = time.perf_counter() - start

    start = _step(7, "evaluate ProPainter vs DiffuEraser vs stage 3")
    evaluation = out / "evaluate"
    evaluate.run(
        CONFIGS / "eval_demo.yaml",
        [
            f"output_dir={evaluation}", f"benchmark.source.root={SAMPLE_DATA_ROOT}",
            f"methods.propainter.weights={propainter}",
            f"methods.diffueraser.weights={diffueraser}", f"methods.diffueraser.prior.weights={propainter}",
            f"methods.stage3.weights={diffueraser}", f"methods.stage3.adapter={stage3}",
            f"methods.stage3.prior.weights={propainter}", *shared,
        ],
    )
    timings["evaluate"] = time.perf_counter() - start

    start = _step(8, "compare (the report rebuilt from the MLflow runs alone)")
    report = evaluate.run(None, [], compare="sample", output_dir=evaluation)
    timings["compare"] = time.perf_counter() - start

    print("done: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    print(f"Report: {report}")
    print(f"MLflow: mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}")


if __name__ == "__main__":
    from jobs.cli import app

    app(["demo", *sys.argv[1:]])
