"""``vipo export <run_dir> --step N|latest [--out DIR] [--compose STAGE2]``: diffusers-format model folders."""

from __future__ import annotations

import sys
from pathlib import Path

from vipo.config import ConfigError
from vipo.train.export import export


def run(run_dir: str | Path, step: str = "latest", out_dir: str | Path | None = None,
        compose: str | Path | None = None) -> None:
    """Export checkpoint ``step`` of ``run_dir``; ``compose`` is a stage-2 run or export folder whose motion
    modules are combined with this run's 2-D UNet (the DPO-stage-1 + SFT-stage-2 hybrid)."""
    try:
        out = export(run_dir, step, out_dir, compose)
    except (FileNotFoundError, ValueError) as err:
        # A wrong folder or step is a bad argument: one line, no traceback (the CLI prints ConfigError so).
        raise ConfigError(str(err)) from None
    print(f"exported: {out}")


if __name__ == "__main__":
    from jobs.cli import app

    app(["export", *sys.argv[1:]])
