"""The `vipo` command: help for every subcommand, and bad configs as one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from jobs.cli import KIND_MARKERS, app

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["generate", "train", "export", "tune", "evaluate", "demo", "prepare", "flows"]


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
        (["train", "jobs/configs/propainter_demo.yaml", "loss.style_wieght=1"], "loss.style_wieght"),
        (["train", "jobs/configs/flowcomp_demo.yaml", "data.num_local_frames=1"], "data.num_local_frames"),
        (["train", "jobs/configs/stage2_demo.yaml", "data.clip.nframes=0"], "data.clip.nframes"),
        (["generate", "jobs/configs/generate_demo.yaml", "sampling.nframs=3"], "sampling.nframs"),
        (["evaluate", "jobs/configs/eval_demo.yaml", "benchmark.source.root=/no/such/dir"], "benchmark.source"),
        (["tune", "jobs/configs/tune_demo.yaml", "rounds.0.num_samples=0"], "rounds.0.num_samples"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(argv, key):
    lines = _config_errors(argv)
    assert any(key in line for line in lines), lines


def _config_errors(argv: list[str]) -> list[str]:
    """Run the real CLI; it must exit 2 with nothing but ``config error: …`` lines on stderr."""
    out = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert lines and all(line.startswith("config error: ") for line in lines), out.stderr[-2000:]
    return [line.removeprefix("config error: ") for line in lines]


HEAVY_LIBRARIES = ("diffusers", "peft", "transformers", "lpips", "torchvision", "ray.tune", "ray.train")
_IMPORTS_AFTER_EXIT = """
import runpy, sys
sys.argv = ["vipo", *sys.argv[1:]]
try:
    runpy.run_module("jobs.cli", run_name="__main__")
except SystemExit as stop:
    print(stop.code, *[name for name in {heavy!r} if name in sys.modules])
"""


@pytest.mark.parametrize("argv, error", [
    (["train", "jobs/configs/stage3_dpo_demo.yaml", "loss.bta=1"], "loss.bta: unknown key; did you mean loss.beta?"),
    (["train", "jobs/configs/vae_demo.yaml", "model.tiny_sed=1"], "model.tiny_sed: unknown key"),
    (["tune", "jobs/configs/tune_demo.yaml", "max_concurrent_trial=1"], "max_concurrent_trial: unknown key"),
    (["evaluate", "jobs/configs/eval_demo.yaml", "scoring.lpips_nett=vgg"], "scoring.lpips_nett: unknown key"),
    # A model's options are checked with the config, not by each generation actor when it builds the model.
    (["generate", "jobs/configs/generate_demo.yaml", "models.propainter.options.raft_iteratons=1"],
     "models.propainter.options: raft_iteratons: unknown key; did you mean raft_iterations?"),
    (["generate", "jobs/configs/generate_demo.yaml", "models.diffueraser.options.pcm_steps=0"],
     "models.diffueraser.options: pcm_steps: Input should be greater than or equal to 1"),
])
def test_a_bad_config_is_reported_before_any_model_library_loads(argv, error):
    # The recipes import diffusers and peft, the metrics lpips and transformers (~30 s here): a typo must not wait.
    code = _IMPORTS_AFTER_EXIT.format(heavy=HEAVY_LIBRARIES)
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.split() == ["2"], out.stdout + out.stderr[-2000:]
    assert out.stderr.startswith("config error: ") and f"{argv[1]}: {error}" in out.stderr, out.stderr


def test_every_config_error_is_listed_with_the_closest_valid_key():
    lines = _config_errors(["generate", "jobs/configs/generate_demo.yaml", "sampling.nframs=3", "sources.0.rot=x",
                            "kinds.0.sed=1", "seed=-1", "clips_per_video=0", "rows_per_shard=0", "zzz=1"])
    expected = {
        "sampling.nframs: unknown key; did you mean sampling.nframes?",
        "sources.0.rot: unknown key; did you mean sources.0.root?",
        "kinds.0.sed: unknown key; did you mean kinds.0.seeds?",
        "zzz: unknown key",
    }
    assert len(lines) == 7, lines
    assert expected <= {line.split(": ", 1)[1] for line in lines}, lines
    assert all(line.startswith("jobs/configs/generate_demo.yaml: ") for line in lines)
    assert not any("more)" in line for line in lines)


def test_a_key_inside_a_dict_of_tagged_unions_keeps_the_users_path():
    lines = _config_errors(["evaluate", "jobs/configs/eval_demo.yaml", "methods.propainter.weigts=3"])
    assert ("jobs/configs/eval_demo.yaml: methods.propainter.weigts: unknown key; "
            "did you mean methods.propainter.weights?") in lines


@pytest.mark.parametrize("command, config, kind", [
    ("train", "generate_demo.yaml", "generate"),
    ("generate", "stage1_demo.yaml", "train"),
    ("evaluate", "tune_demo.yaml", "tune"),
    ("tune", "eval_demo.yaml", "evaluate"),
])
def test_a_config_of_another_command_is_named(command, config, kind):
    path = f"jobs/configs/{config}"
    assert _config_errors([command, path]) == [
        f"{path}: this is a {kind} config (it has `{KIND_MARKERS[kind]}:`), not a {command} config; "
        f"run `vipo {kind} {path}`"]


def test_platform_is_a_source_root_never_a_package():
    assert not (REPO / "platform" / "__init__.py").exists()
    # From the repository root (first on sys.path) `import platform` must still be the standard library's.
    code = "import platform, sysconfig; print(platform.__file__.startswith(sysconfig.get_paths()['stdlib']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_vipo_console_script_points_at_the_typer_app():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "vipo"]
    assert script.value == "jobs.cli:app" and script.load() is app


def _fenced_commands(markdown: str, heading: str) -> list[str]:
    """Non-blank lines of the fenced code block(s) in the section under ``heading``."""
    section = markdown.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    return [line for block in blocks for line in block.splitlines()[1:] if line.strip()]


def test_readme_has_one_install_and_one_test_command_and_ci_runs_them():
    readme = (REPO / "README.md").read_text()
    (install,) = _fenced_commands(readme, "## Install")
    (test,) = _fenced_commands(readme, "## Test")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
    assert "exit 1" in ci[ci.index('if [ "$status" -eq 5 ]; then') + 1 :], "pytest's exit 5 fails CI"


def _config_class(path: Path) -> type:
    """The config class the job behind a shipped YAML validates it with (by file name, as the README's table)."""
    from evaluation.config import EvaluateConfig
    from jobs.generate import GenerateJobConfig
    from vipo.data.preprocess import FlowsJobConfig, ResizeJobConfig
    from vipo.train.recipes import get_recipe
    from vipo.tune import TuneConfig

    if "recipe" in yaml.safe_load(path.read_text()):
        return get_recipe(yaml.safe_load(path.read_text())["recipe"]).config_class
    prefixes = {"generate": GenerateJobConfig, "tune": TuneConfig, "eval": EvaluateConfig,
                "prepare": ResizeJobConfig, "flows": FlowsJobConfig}
    return next(cls for prefix, cls in prefixes.items() if path.name.startswith(prefix))


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_job_configs_with_only_missing_paths_to_fix(path, monkeypatch):
    """Every shipped YAML is a JobConfig (output_dir, seed) with no stale key or bad value.

    Full-size configs point at data and weights this machine lacks, so "path does not exist" is the one error
    allowed; the demo configs that need no earlier run validate outright.
    """
    from pydantic import ValidationError

    from vipo.config import JobConfig

    monkeypatch.chdir(REPO)  # relative paths in the configs resolve against the working directory
    cls = _config_class(path)
    assert issubclass(cls, JobConfig)
    try:
        cls.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as err:
        problems = [e for e in err.errors() if "path does not exist" not in e["msg"]]
        assert not problems, problems


@pytest.mark.slow
def test_a_corrupt_frame_found_in_a_ray_worker_is_one_line_naming_the_file(tmp_path):
    """Stage 1 in strict mode on clips whose frames are all truncated: the Train worker's BadSample reaches the
    terminal as one line naming a frame and the fix; Ray's traceback goes to the named log file."""
    import shutil

    source = tmp_path / "DAVIS"
    shutil.copytree(REPO / "data" / "sample" / "DAVIS", source)
    for frame in source.glob("JPEGImages/480p/*/*.jpg"):
        frame.write_bytes(frame.read_bytes()[:64])
    argv = ["train", "jobs/configs/stage1_demo.yaml", f"output_dir={tmp_path / 'out'}",
            f"model.weights_root={tmp_path / 'weights'}", f"data.sources.0.root={source}", "data.strict=true",
            "tracking.enabled=false"]
    out = subprocess.run([sys.executable, "-m", "jobs.cli", *argv], capture_output=True, text=True, cwd=REPO,
                         timeout=1200)
    assert out.returncode == 3, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"data error: {source}/JPEGImages/480p/") and ".jpg: corrupt or truncated image" in line
    assert "set strict: false" in line
    log = Path(line.rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert "BadSample" in log.read_text()


def _readme_vipo_commands() -> list[list[str]]:
    readme = (REPO / "README.md").read_text()
    lines = [line.strip() for block in readme.split("```")[1::2] for line in block.splitlines()[1:]]
    return [line.split() for line in lines if line.startswith("vipo ")]


def test_readme_config_examples_are_valid_for_the_shipped_configs(monkeypatch):
    """The README's `vipo <command> <config> key=value ...` lines validate as written (the demo, compare and
    `mlflow ui` lines are run by tests/test_demo.py)."""
    from vipo.config import load_config

    monkeypatch.chdir(REPO)
    examples = [argv for argv in _readme_vipo_commands() if argv[2].endswith(".yaml")]
    assert len(examples) >= 2, examples
    for _, command, config, *overrides in examples:
        path = REPO / config
        assert KIND_MARKERS[command] in yaml.safe_load(path.read_text()), (command, config)
        load_config(_config_class(path), path, overrides)
    run_by_demo_test = {("demo", "--output-dir"), ("evaluate", "compare")}
    assert {tuple(argv[1:3]) for argv in _readme_vipo_commands() if not argv[2].endswith(".yaml")} <= run_by_demo_test
