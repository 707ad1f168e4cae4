"""The ``vipo`` command: ``vipo <command> <config.yaml> [key=value ...]``.

This is the one argument parser; ``python -m jobs.<name> ...`` (what ``ray job submit`` runs) forwards here.
Job modules are imported lazily so ``vipo --help`` stays instant and a bad config fails before torch loads.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import List, Optional

import typer
import yaml

from vipo.config import ConfigError
from vipo.data.errors import DataError
from vipo.tracking.ray_session import VERBOSE_ENV

app = typer.Typer(
    help="vipo: Video Inpainting Preference Optimization — generate preference data, train, tune, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show Ray's worker output, Tune's status tables and library warnings."),
) -> None:
    """vipo: Video Inpainting Preference Optimization — generate preference data, train, tune, evaluate."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    # Tune's newer reporter prints every experiment's header even at verbose=0 (its legacy one is silent), and
    # MLflow draws a bar per artifact it downloads: neither is the user's progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


CONFIG_HELP = "YAML config (see jobs/configs/)."
OVERRIDES_HELP = "Dotted key=value overrides, e.g. data.nframes=10 seed=3."


# The top-level key that only one command's configs have, to name the command a config was written for.
KIND_MARKERS = {"generate": "kinds", "train": "recipe", "tune": "rounds", "evaluate": "methods"}


def _check_kind(command: str, config: Path | None) -> None:
    """A config of another command fails with that command's name, not with its missing keys."""
    if config is None or not config.is_file():
        return
    try:
        keys = set(yaml.safe_load(config.read_text()) or {})
    except (yaml.YAMLError, TypeError):
        return  # load_config names the YAML problem
    if KIND_MARKERS[command] in keys:
        return
    for kind, marker in KIND_MARKERS.items():
        if marker in keys:
            raise ConfigError(f"{config}: this is a {kind} config (it has `{marker}:`), not a {command} config; "
                              f"run `vipo {kind} {config}`")


def _data_error(err: BaseException) -> DataError | None:
    """The :class:`DataError` behind ``err``, through Python's exception chain and Ray's wrappers (a task's
    ``cause``, Ray Train's per-worker failures), or None."""
    stack, seen = [err], set()
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        cause = getattr(error, "cause", None)  # RayTaskError subclasses the user's error class; its cause is clean
        if isinstance(error, DataError) and not isinstance(cause, BaseException):
            return error
        stack += [error.__cause__, error.__context__, cause, getattr(error, "controller_failure", None),
                  *(getattr(error, "worker_failures", None) or {}).values()]
    return None


def _write_traceback(command: str, err: BaseException) -> Path:
    folder = Path(tempfile.gettempdir()) / "vipo-logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(err)))
    return path


def _call(module: str, *args, **kwargs) -> None:
    try:
        if module in KIND_MARKERS:
            _check_kind(module, args[0])
        importlib.import_module(f"jobs.{module}").run(*args, **kwargs)
    except ConfigError as err:
        # One line per problem, no traceback: the user fixes keys, not our code.
        for line in str(err).splitlines():
            typer.echo(f"config error: {line}", err=True)
        raise typer.Exit(2) from None
    except Exception as err:
        # Bad input found in a Ray worker: the file and the fix on one line, Ray's traceback to a log file.
        data_error = _data_error(err)
        if data_error is None:
            raise
        message = "; ".join(line.strip() for line in str(data_error).splitlines() if line.strip())
        typer.echo(f"data error: {message} (traceback: {_write_traceback(module, err)})", err=True)
        raise typer.Exit(3) from None


@app.command()
def generate(
    config: Path = typer.Argument(..., help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="Skip clips the manifest marks done; produce the rest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output of the same config."),
    retry_skipped: bool = typer.Option(False, "--retry-skipped",
                                       help="Resume and also redo clips skipped for bad input (after fixing it)."),
) -> None:
    """Generate preference shards (negatives + masks) with Ray Data actor pools."""
    _call("generate", config, overrides or [], resume=resume, overwrite=overwrite, retry_skipped=retry_skipped)


@app.command()
def train(
    config: Path = typer.Argument(..., help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Train a stage (recipe chosen by the config's `recipe:`) with Ray Train; a relaunch resumes."""
    _call("train", config, overrides or [])


@app.command()
def prepare(
    step: str = typer.Argument(..., help="What to prepare: 'resize' (frames at data size, JPEGImages_<W>_<H>)."),
    config: Path = typer.Argument(..., help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo videos already done."),
) -> None:
    """Prepare ProPainter training data with Ray Data (`vipo prepare resize cfg.yaml`)."""
    if step != "resize":
        typer.echo(f"config error: unknown prepare step {step!r}; known: resize", err=True)
        raise typer.Exit(2)
    _call("prepare", config, overrides or [], overwrite=overwrite)


@app.command()
def flows(
    config: Path = typer.Argument(..., help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo videos already done."),
) -> None:
    """Precompute forward/backward RAFT flows for ProPainter training (Ray Data actor pool; resumable)."""
    _call("flows", config, overrides or [], overwrite=overwrite)


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
    benchmark: Optional[str] = typer.Option(None, "--benchmark",
                                            help="With compare/review: the benchmark name or hash."),
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
