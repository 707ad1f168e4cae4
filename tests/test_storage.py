"""Output paths: relative ones resolve against the storage root, never into a Ray session dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipo.config import ConfigError, JobConfig, load_config, validate_config
from vipo.storage import STORAGE_ROOT_ENV, SessionDirError, ray_session_dir, resolve_output_path

# What `ray job submit --working-dir` gives the entrypoint as its working directory (Ray's layout).
SESSION = "/tmp/ray/session_2026-11-30_10-03-14_443266_4242"
JOB_COPY = f"{SESSION}/runtime_resources/working_dir_files/_ray_pkg_0123456789abcdef"


def test_relative_path_joins_storage_root_from_config_before_env(monkeypatch, tmp_path):
    monkeypatch.setenv(STORAGE_ROOT_ENV, str(tmp_path / "env-root"))
    assert resolve_output_path("runs/x", tmp_path / "cfg-root") == tmp_path / "cfg-root" / "runs" / "x"
    assert resolve_output_path("runs/x") == tmp_path / "env-root" / "runs" / "x"
    # An absolute path ignores the root.
    assert resolve_output_path(tmp_path / "abs", tmp_path / "cfg-root") == tmp_path / "abs"


def test_without_root_relative_path_resolves_against_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(STORAGE_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_output_path("runs/x") == tmp_path / "runs" / "x"


@pytest.mark.parametrize("path, session", [
    (f"{JOB_COPY}/runs/demo", SESSION),
    ("/tmp/ray/session_latest/runtime_resources/x", "/tmp/ray/session_latest"),
    (f"{SESSION}", SESSION),
    ("/shared/vipo/runs/session_notes", None),         # a folder merely named session_*
    ("/shared/vipo/session_2026-11-30/runs", None),     # not Ray's date_time_usec_pid pattern
])
def test_ray_session_dir(path, session):
    assert ray_session_dir(path) == (Path(session) if session else None)


def test_relative_output_dir_of_a_submitted_job_is_an_error_without_root(monkeypatch, tmp_path):
    """The job's working dir is Ray's session copy: with no storage root the output would vanish with it."""
    session = tmp_path / Path(SESSION).name
    job_copy = session / Path(JOB_COPY).relative_to(SESSION)
    job_copy.mkdir(parents=True)
    monkeypatch.delenv(STORAGE_ROOT_ENV, raising=False)
    monkeypatch.chdir(job_copy)
    with pytest.raises(SessionDirError, match=f"{job_copy}/runs/demo is inside the Ray session dir {session}"):
        resolve_output_path("runs/demo")
    with pytest.raises(ConfigError) as err:
        validate_config(JobConfig, {"output_dir": "runs/demo"}, "job.yaml")
    message = str(err.value)
    assert message.startswith("job.yaml: output_dir: ") and "\n" not in message
    assert f"inside the Ray session dir {session}" in message and STORAGE_ROOT_ENV in message
    # With the root set (as cluster.yaml does on every node) the same config lands on shared storage.
    monkeypatch.setenv(STORAGE_ROOT_ENV, str(tmp_path / "shared"))
    assert validate_config(JobConfig, {"output_dir": "runs/demo"}).output_dir == tmp_path / "shared/runs/demo"


def test_job_config_output_dir_follows_storage_root(monkeypatch, tmp_path):
    monkeypatch.setenv(STORAGE_ROOT_ENV, str(tmp_path / "shared"))
    path = tmp_path / "job.yaml"
    path.write_text("output_dir: runs/demo\n")
    assert load_config(JobConfig, path).output_dir == tmp_path / "shared" / "runs" / "demo"
    cfg = load_config(JobConfig, path, [f"storage.root={tmp_path / 'other'}"])
    assert cfg.output_dir == tmp_path / "other" / "runs" / "demo"
    cfg.output_dir = Path("moved")  # assignment re-resolves against the same root
    assert cfg.output_dir == tmp_path / "other" / "moved"
    with pytest.raises(ConfigError, match="job.yaml: storage.rooot: unknown key"):
        load_config(JobConfig, path, ["storage.rooot=/x"])


def test_compare_output_dir_follows_storage_root(monkeypatch, tmp_path):
    from evaluation.config import CompareConfig

    monkeypatch.setenv(STORAGE_ROOT_ENV, str(tmp_path))
    cfg = validate_config(CompareConfig, {"benchmark": "sample", "output_dir": "runs/eval"})
    assert cfg.output_dir == tmp_path / "runs" / "eval"
