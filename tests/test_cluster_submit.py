"""`ray job submit --working-dir` to a real Ray head (dashboard, token auth) logging to a real `mlflow server`.

The working dir is a copy of the repository whose `vipo` carries a marker (its version) that the installed copy
lacks, committed in the copy's own git history: the job's logs, the runs' `vipo.version` tags (set on the driver
and, for training, on a Ray Train worker) and their `vipo.git_commit` tags show that the shipped code ran.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable  # the job's `python`: this interpreter, whatever PATH the head inherited
RAY = str(Path(PYTHON).parent / "ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]


def _shipped_copy(dest: Path, marker: str) -> str:
    """A copy of the repository (no outputs, no .git) with ``marker`` as vipo's version, committed; its sha."""
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
        ".git", "runs", "outputs", "weights", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "mlruns",
        "mlflow.db"))
    init = dest / "platform" / "vipo" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    init.write_text(text.replace('__version__ = "', f'__version__ = "{marker}+', 1)
                    + '\nprint(f"vipo {__version__} imported from {__file__}", flush=True)\n')
    git = ["git", "-C", str(dest), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "shipped"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def submitted(ray_head, mlflow_server, tmp_path_factory):
    """Generate, stage-1 and evaluate demos (shrunk by overrides) submitted in order; their logs by name."""
    root = tmp_path_factory.mktemp("submit")
    marker = f"shipped{uuid.uuid4().hex[:8]}"
    workdir = root / "code"
    sha = _shipped_copy(workdir, marker)
    storage = root / "shared" / "vipo"
    storage.mkdir(parents=True)
    # What the README passes: the job's environment comes from --runtime-env-json, not the submitting shell.
    runtime_env = {"env_vars": {"VIPO_STORAGE_ROOT": str(storage), "MLFLOW_TRACKING_URI": mlflow_server.uri,
                                "OMP_NUM_THREADS": "1", "VIPO_VERBOSE": "1"}}  # workers' output in the logs
    weights = storage / "runs" / "demo" / "weights"
    jobs = {
        "generate": [PYTHON, "-m", "jobs.generate", "jobs/configs/generate_demo.yaml",
                     "kinds=[{kind: blur}]",
                     "stages=[{name: inpaint, kinds: [blur], min_size: 1, max_size: 1, num_cpus: 1}]",
                     "models={propainter: {random_init: 0, options: {raft_iterations: 2}}}",
                     "masks_per_clip=1", "sampling.nframes=4"],
        "stage1": [PYTHON, "-m", "jobs.train", "jobs/configs/stage1_demo.yaml", "scaling.num_workers=1",
                   "optim.max_steps=2", "checkpointing.every_n_steps=2", "validation.every_n_steps=100",
                   f"model.weights_root={storage / 'tiny_weights'}"],
        "weights": [PYTHON, "-m", "evaluation.demo_weights", "runs/demo/weights"],  # relative: under the root
        "evaluate": [PYTHON, "-m", "jobs.evaluate", "jobs/configs/eval_demo.yaml",
                     f"methods={{propainter: {{kind: propainter, weights: {weights / 'propainter'}, "
                     f"options: {{raft_iterations: 2}}, actors: {{num_gpus: 0, pool_size: 1}}}}}}",
                     "baseline=propainter", "benchmark.num_frames=4", "benchmark.height=32", "benchmark.width=32"],
    }
    # As the README's submit commands: .git ships (Ray leaves it out by default), so runs name the shipped commit.
    client_env = {**ray_head.client_env, "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES": ".venv,venv,__pycache__"}
    logs = {}
    for name, entrypoint in jobs.items():
        submission = f"vipo-{name}-{marker}"
        done = subprocess.run(
            [RAY, "job", "submit", "--address", ray_head.dashboard_url, "--submission-id", submission,
             "--working-dir", str(workdir), "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
            env=client_env, capture_output=True, text=True, timeout=1800)
        status = subprocess.run([RAY, "job", "status", "--address", ray_head.dashboard_url, submission],
                                env=ray_head.client_env, capture_output=True, text=True, timeout=300)
        assert f"Job '{submission}' succeeded" in status.stdout, (
            f"{name}: {status.stdout}\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
        logs[name] = done.stdout
    return {"logs": logs, "marker": marker, "sha": sha, "storage": storage, "workdir": workdir, "head": ray_head,
            "mlflow": mlflow_server}


def test_outputs_land_under_the_storage_root_not_the_job_copy(submitted):
    storage = submitted["storage"] / "runs" / "demo"
    assert list((storage / "generate").rglob("manifest*")), sorted(storage.rglob("*"))[:20]
    assert (storage / "train" / "stage1-demo" / "export" / "step_00000002").is_dir()
    assert (storage / "weights" / "propainter").is_dir()
    assert any((storage / "evaluate").iterdir())
    # Nothing was written into Ray's per-session copies of the working dir.
    copies = list(submitted["head"].temp_dir.glob("session_*/runtime_resources/working_dir_files/*"))
    assert copies and not any((copy / "runs").exists() for copy in copies)


def test_the_shipped_vipo_ran_on_the_driver_and_the_workers(submitted):
    marker = submitted["marker"]
    for name, log in submitted["logs"].items():
        assert re.search(rf"vipo {marker}\+\S+ imported from {re.escape(str(submitted['head'].temp_dir))}", log), name
    # Ray prefixes a worker's output with "(<actor> pid=...)": the Train worker imported the shipped vipo too.
    train_workers = [line for line in submitted["logs"]["stage1"].splitlines() if marker in line and "pid=" in line]
    assert train_workers, submitted["logs"]["stage1"][-4000:]


def test_runs_on_the_mlflow_server_name_the_shipped_code(submitted):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(submitted["mlflow"].uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`vipo.version` LIKE '{submitted['marker']}%'")
    names = sorted(run.info.run_name for run in runs)
    assert any(n.startswith("generate-") for n in names) and "stage1-demo" in names, names
    assert any("propainter" in n or "sample" in n for n in names), names
    assert {run.data.tags["vipo.git_commit"] for run in runs} == {submitted["sha"]}
