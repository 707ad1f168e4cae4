"""``vipo flows cfg.yaml [key=value ...] [--overwrite]``: forward/backward RAFT flows precomputed for ProPainter
training (Ray Data actor pool, a GPU each when ``num_gpus`` > 0; float16, compressed, resumable)."""

from __future__ import annotations

import sys
from pathlib import Path

from vipo.config import load_config
from vipo.data.preprocess import FlowsJobConfig, compute_flows


def run(config_path: str | Path | None, overrides: list[str], overwrite: bool = False) -> dict:
    summary = compute_flows(load_config(FlowsJobConfig, config_path, overrides), overwrite=overwrite)
    print(f"flows: {summary['written']} videos written, {summary['already_done']} already done, "
          f"{len(summary['skipped'])} skipped -> {summary['output']}")
    return summary


if __name__ == "__main__":
    from jobs.cli import app

    app(["flows", *sys.argv[1:]])
