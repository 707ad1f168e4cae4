"""The `vipo` command: help for every subcommand, and bad configs as one-line errors."""

from __future__ import annotations

import subprocess
import sys

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
