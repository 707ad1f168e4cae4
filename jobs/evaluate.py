"""``vipo evaluate <config.yaml> [key=value ...]``, ``vipo evaluate compare --benchmark NAME [--output-dir D]``,
``vipo evaluate review --benchmark NAME --a M1 --b M2 [--output-dir D]`` and ``vipo evaluate review-import FILE``.

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
        output_dir: Path | None = None, review: tuple[str, str, str] | None = None,
        review_import: Path | None = None) -> Path:
    """Evaluate the config's methods on its benchmark; or (``compare`` = a benchmark name or hash) re-render the
    comparison report from MLflow; or (``review`` = (benchmark, method A, method B)) write a blind review page; or
    (``review_import`` = an exported review) unblind it. ``output_dir`` is the evaluation's output folder. Returns
    the page written (report or review) or, for an import, its results file."""
    # The pipeline (evaluation.job: Ray, the metric networks) is imported once the config is valid: a wrong key
    # is reported in seconds.
    from evaluation.config import CompareConfig, EvaluateConfig

    # Names are set directly, not as key=value overrides: a hash of digits would otherwise parse as a number.
    data = apply_overrides({}, overrides)
    if output_dir is not None:
        data["output_dir"] = str(output_dir)
    if compare is not None:
        data["benchmark"] = compare
        config = validate_config(CompareConfig, data, "vipo evaluate compare")
        from evaluation.job import compare as compare_runs

        return compare_runs(config).index
    if review is not None:
        from evaluation.review import ReviewConfig, write_review

        data["benchmark"], data["a"], data["b"] = review
        return write_review(validate_config(ReviewConfig, data, "vipo evaluate review"))
    if review_import is not None:
        from evaluation.review import ReviewImportConfig, import_review

        data["file"] = str(review_import)
        return import_review(validate_config(ReviewImportConfig, data, "vipo evaluate review-import")).results_file
    config = load_config(EvaluateConfig, config_path, overrides)
    from evaluation.job import evaluate

    return evaluate(config).report.index


if __name__ == "__main__":
    from jobs.cli import app

    app(["evaluate", *sys.argv[1:]])
