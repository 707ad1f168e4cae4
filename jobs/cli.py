"""The ``vipo`` command: ``vipo <command> <config.yaml> [key=value ...]``.

This is the one argument parser; ``python -m jobs.<name> ...`` (what ``ray job submit`` runs) forwards here.
Job modules are imported lazily so ``vipo --help`` stays instant and a bad config fails before torch loads.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import List, Optional

import typer

from vipo.config import ConfigError

app = typer.Typer(
    help="vipo: Video Inpainting Preference Optimization — generate preference data, train, tune, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

CONFIG_HELP = "YAML config (see jobs/configs/)."
OVERRIDES_HELP = "Dotted key=value overrides, e.g. data.nframes=10 seed=3."


def _call(module: str, *args, **kwargs) -> None:
    try:
        importlib.import_module(f"jobs.{module}").run(*args, **kwargs)
    except ConfigError as err:
        # One line, no traceback: the user fixes a key, not our code.
        typer.echo(f"config error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def generate(
    config: Path = typer.Argument(..., help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="Skip clips the manifest marks done; produce the rest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output of the same config."),
) -> None:
    """Generate preference shards (negatives + masks) with Ray Data actor pools."""
    _call("generate", config, overrides or [], resume=resume, overwrite=overwrite)


@app.command()
def train(
    config: Path = typer.Argument(..., help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Train a stage (recipe chosen by the config's `recipe:`) with Ray Train; a relaunch resumes."""
    _call("train", config, overrides or [])


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A training run folder (output_dir/<run name>)."),
    step: str = typer.Option("latest", "--step", help="Checkpoint step, or 'latest'."),
    out: Optional[Path] = typer.Option(None, "--out", help="Export folder (default: <run_dir>/export/step_N)."),
    compose: Optional[str] = typer.Option(
        None, "--compose", help="Hybrid export, e.g. the stage-2 run folder whose motion modules to combine."
    ),
) -> None:
    """Export a checkpoint as diffusers-format folders (unet_main/, brushnet/, LoRA adapter)."""
    _call("export", run_dir, step=step, out_dir=out, compose=compose)


@app.command()
def tune(
    config: Path = typer.Argument(..., help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Run a Ray Tune sweep over dotted config keys (the staged rho/alpha/beta search)."""
    _call("tune", config, overrides or [])


@app.command()
def evaluate(
    target: str = typer.Argument(
        ..., help="An evaluation config YAML; 'compare' (render a report); 'review' (a blind A/B review page); "
                  "'review-import' FILE (unblind an exported review and log its preference rates)."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="With compare/review: the benchmark name or hash."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="With compare/review/review-import: the "
                                                                         "evaluation output_dir."),
    method_a: Optional[str] = typer.Option(None, "--a", help="With review: method label A."),
    method_b: Optional[str] = typer.Option(None, "--b", help="With review: method label B."),
) -> None:
    """Evaluate methods on a benchmark (`vipo evaluate cfg.yaml`), compare them (`vipo evaluate compare`), review
    two of them blind (`vipo evaluate review --benchmark X --a M1 --b M2`, then `vipo evaluate review-import F`)."""
    overrides = overrides or []
    if target in ("compare", "review") and benchmark is None:
        typer.echo(f"config error: {target} needs --benchmark NAME", err=True)
        raise typer.Exit(2)
    if target == "compare":
        _call("evaluate", None, overrides, compare=benchmark, output_dir=output_dir)
    elif target == "review":
        if method_a is None or method_b is None:
            typer.echo("config error: review needs --a METHOD and --b METHOD", err=True)
            raise typer.Exit(2)
        _call("evaluate", None, overrides, review=(benchmark, method_a, method_b), output_dir=output_dir)
    elif target == "review-import":
        if not overrides:
            typer.echo("config error: review-import needs the exported FILE", err=True)
            raise typer.Exit(2)
        _call("evaluate", None, overrides[1:], review_import=Path(overrides[0]), output_dir=output_dir)
    else:
        _call("evaluate", Path(target), overrides)


@app.command()
def demo(
    output_dir: Path = typer.Option(Path("runs/demo"), "--output-dir", help="Where the demo writes everything."),
) -> None:
    """Run the whole flow end to end on the bundled sample data with tiny models (local Ray, sqlite MLflow)."""
    _call("demo", output_dir)


if __name__ == "__main__":
    app()
