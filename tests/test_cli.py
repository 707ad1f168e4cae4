"""The `vipo` command: help for every subcommand, and bad configs as one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobs.cli import app

COMMANDS = ["generate", "train", "export", "tune", "evaluate", "demo"]


def test_top_level_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_subcommand_help(name):
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout


@pytest.mark.parametrize(
    "argv, key",
    [
        (["train", "jobs/configs/stage1_demo.yaml", "optim.lr=-1"], "optim.lr"),
        (["train", "jobs/configs/stage2_demo.yaml", "data.clip.nframes=0"], "data.clip.nframes"),
        (["generate", "jobs/configs/generate_demo.yaml", "sampling.nframs=3"], "sampling.nframs"),
        (["evaluate", "jobs/configs/eval_demo.yaml", "benchmark.source.root=/no/such/dir"], "benchmark.source"),
        (["tune", "jobs/configs/tune_demo.yaml", "rounds.0.num_samples=0"], "rounds.0.num_samples"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(argv, key):
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: ") and key in lines[0], out.stderr[-2000:]
