"""``vipo prepare resize cfg.yaml [key=value ...] [--overwrite]``: frames resized once into the
``JPEGImages_<W>_<H>`` layout ProPainter trains on (Ray Data CPU tasks; resumable)."""

from __future__ import annotations

import sys
from pathlib import Path

from vipo.config import load_config
from vipo.data.preprocess import ResizeJobConfig, resize_videos


def run(config_path: str | Path | None, overrides: list[str], overwrite: bool = False) -> dict:
    summary = resize_videos(load_config(ResizeJobConfig, config_path, overrides), overwrite=overwrite)
    print(f"prepare resize: {summary['written']} videos written, {summary['already_done']} already done, "
          f"{len(summary['skipped'])} skipped -> {summary['output']}")
    return summary


if __name__ == "__main__":
    from jobs.cli import app

    app(["prepare", *sys.argv[1:]])
