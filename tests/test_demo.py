"""`vipo demo`, the README's main job, end to end through the real CLI, then the README's commands after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from servers import free_port, http_ok, stop_group, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The demo is minutes of work on 2 cores; the module fixture's run counts toward the first test's limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs" / "demo"
    result = subprocess.run([str(BIN / "vipo"), "demo", "--output-dir", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=3000)
    return out, result


def test_demo_runs_end_to_end_and_its_output_is_readable(demo):
    out, result = demo
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(lines[-60:])
    assert len(lines) < 80, "\n".join(lines)
    report_line, mlflow_line = result.stdout.splitlines()[-2:]
    report = Path(report_line.removeprefix("Report: "))
    assert report_line.startswith("Report: ") and report.suffix == ".html" and report.is_file(), report_line
    assert mlflow_line == f"MLflow: mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}"
    assert not any(line.startswith("(pid=") or "Traceback" in line for line in lines), "\n".join(lines)


def test_demo_logged_every_step_to_one_mlflow_database(demo):
    from mlflow.tracking import MlflowClient

    out, _ = demo
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id], max_results=500)]
    names = {run.info.run_name for run in runs}
    for expected in ("stage1-demo", "stage2-demo", "stage3-dpo-demo"):
        assert expected in names, names
    finished = [run for run in runs if run.info.status == "FINISHED"]
    assert all("vipo.config_hash" in run.data.tags for run in finished if run.info.run_name in names)
    assert len(runs) >= 8, names  # generate, 3 trainings, tune, 3 method runs + compare


def test_readme_compare_command_works_after_the_demo(demo):
    out, _ = demo
    result = subprocess.run([str(BIN / "vipo"), "evaluate", "compare", "--benchmark", "sample",
                             "--output-dir", str(out / "evaluate")], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report: " in result.stdout
    assert not (out / "evaluate" / "mlflow.db").exists(), "compare must read the demo's database, not make one"


def test_readme_mlflow_ui_command_serves_the_demo_runs(demo):
    out, result = demo
    command = result.stdout.splitlines()[-1].removeprefix("MLflow: ").split()
    port = free_port()
    server = subprocess.Popen([str(BIN / command[0]), *command[1:], "--port", str(port)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 120, "mlflow ui")
    finally:
        stop_group(server)
