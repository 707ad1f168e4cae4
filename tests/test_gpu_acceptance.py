"""benchmarks/gpu_acceptance.py --dry-run: every step with tiny models on the CPU, one table and its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_measures_every_step(tmp_path):
    out = tmp_path / "acceptance.json"
    result = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py", "--dry-run", "--json", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["dry_run"] is True
    rows = record["rows"]
    failed = [row for row in rows if str(row.get("status", "")).startswith("failed")]
    assert not failed, failed
    steps = {row["step"].split()[0] for row in rows if "status" not in row}
    assert steps == {"1", "2", "3", "4", "5", "6"}, rows
    timed = [row for row in rows if "status" not in row]
    assert all(value > 0 for row in timed for key, value in row.items() if isinstance(value, float)), timed
    assert any(row.get("status") == "skipped: needs a GPU" for row in rows)  # DeepSpeed is never faked on CPU


def test_without_a_gpu_the_full_run_refuses_and_says_how():
    result = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    if result.returncode == 0:
        pytest.skip("a CUDA device is present")
    assert result.returncode == 2 and "--dry-run" in result.stderr
