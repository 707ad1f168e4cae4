"""``vipo evaluate <config.yaml> [key=value ...]`` and ``vipo evaluate compare --benchmark NAME [--output-dir D]``.

Loads the config and hands it to :mod:`evaluation.job` (the pipeline lives there). Example configs:
``jobs/configs/eval_demo.yaml`` (sample data, tiny models, CPU) and ``jobs/configs/eval_davis50.yaml`` (the
research group's DAVIS-50 protocol).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from vipo.config import apply_overrides, load_config, validate_config


def run(config_path: str | Path | None, overrides: Sequence[str], compare: str | None = None,
        output_dir: Path | None = None) -> Path:
    """Evaluate the config's methods on its benchmark, or (``compare`` = a benchmark name or hash) re-render the
    comparison report from MLflow; ``output_dir`` is the evaluation's output folder for ``compare``. Returns the
    report's HTML file."""
    from evaluation.config import CompareConfig, EvaluateConfig
    from evaluation.job import compare as compare_runs
    from evaluation.job import evaluate

    if compare is not None:
        # Set directly, not as a key=value override: a hash of digits would otherwise parse as a number.
        data = apply_overrides({}, overrides)
        data["benchmark"] = compare
        if output_dir is not None:
            data["output_dir"] = str(output_dir)
        return compare_runs(validate_config(CompareConfig, data, "vipo evaluate compare")).index
    return evaluate(load_config(EvaluateConfig, config_path, overrides)).report.index


if __name__ == "__main__":
    from jobs.cli import app

    app(["evaluate", *sys.argv[1:]])
