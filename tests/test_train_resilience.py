"""What survives a kill, without Ray: the resume choice between Ray's record and the run folder's, flushed
completeness markers, the SIGTERM stop request and its grace time, and the export swap under a kill at each point."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from test_train_recipes import make_recipe, weights_root  # noqa: F401  (fixture)

from vipo.train import checkpointing, export
from vipo.train.checkpointing import (
    PROGRESS_FILE,
    TrainingProgress,
    list_checkpoints,
    mark_complete,
    resume_checkpoint,
)
from vipo.train.engine import WorkerContext
from vipo.train.export import replace_folder, restore_folder
from vipo.train.preemption import STOP_REQUEST_FILE, PreemptionTimeout, stop_on_sigterm, stop_requested


def checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    folder = run_dir / f"checkpoint-{step:08d}"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "model.bin").write_bytes(b"w" * step)
    if complete:
        mark_complete(folder, TrainingProgress(step=step))
    return folder


def test_resume_takes_the_newest_complete_checkpoint_of_either_record(tmp_path):
    assert resume_checkpoint(tmp_path / "fresh", None) is None
    first, third = checkpoint(tmp_path, 1), checkpoint(tmp_path, 3)
    torn = checkpoint(tmp_path, 4, complete=False)  # killed before its marker: never resumed from
    # Killed after checkpoint 3 was complete but before Ray's snapshot moved past 1: resume at 3, not 1.
    assert resume_checkpoint(tmp_path, first) == third
    assert resume_checkpoint(tmp_path, str(third)) == third
    assert resume_checkpoint(tmp_path, torn) == third
    assert resume_checkpoint(tmp_path, None) == third
    elsewhere = checkpoint(tmp_path / "ray_copy", 5)  # Ray's record newer (e.g. a copy the controller holds)
    assert resume_checkpoint(tmp_path, elsewhere) == elsewhere


def test_completeness_marker_is_written_after_every_file_is_flushed(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = checkpointing.fsync_path, os.replace
    monkeypatch.setattr(checkpointing, "fsync_path", lambda p: (events.append(("fsync", str(p))), real_fsync(p)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(b))), real_replace(a, b)))
    folder = checkpoint(tmp_path, 2)
    marker = str(folder / PROGRESS_FILE)
    rename_at = events.index(("rename", marker))
    flushed = {path for kind, path in events[:rename_at] if kind == "fsync"}
    assert {str(folder / "weights" / "model.bin"), str(folder / "weights"), str(folder)} <= flushed
    assert any(Path(path).name.startswith(f".{PROGRESS_FILE}.") for path in flushed)  # the marker's own data
    assert ("fsync", str(folder)) in events[rename_at:]  # and the rename itself
    assert TrainingProgress.from_file(folder / PROGRESS_FILE).step == 2


def test_sigterm_requests_a_stop_and_the_grace_time_bounds_the_wait(tmp_path):
    (tmp_path / STOP_REQUEST_FILE).write_text("stale\n")  # left by an earlier launch: not a request for this one
    original = signal.getsignal(signal.SIGTERM)
    with stop_on_sigterm(tmp_path, grace_s=60) as signalled:
        assert not stop_requested(tmp_path) and not signalled.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary
        assert stop_requested(tmp_path) and signalled.is_set()
    assert not stop_requested(tmp_path) and signal.getsignal(signal.SIGTERM) is original

    # Ray's driver may own SIGINT by now: the grace timeout must not depend on SIGINT's handler.
    sigint = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        started = time.monotonic()
        with pytest.raises(PreemptionTimeout, match="preemption_grace_s=0.2"):
            with stop_on_sigterm(tmp_path, grace_s=0.2):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)  # workers that never reach a step boundary
        assert time.monotonic() - started < 10
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert signal.getsignal(signal.SIGTERM) is original


class Killed(BaseException):
    """A kill: nothing after it runs (BaseException, so no ``except Exception`` cleans up)."""


def folder_with(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "unet_main").mkdir()
    (path / "unet_main" / "weights.bin").write_text(content)
    (path / "brushnet.bin").write_text(content)
    return path


def content(path: Path) -> str | None:
    """The folder's version if it is whole, else None."""
    if not path.is_dir():
        return None
    parts = {(path / "unet_main" / "weights.bin").read_text(), (path / "brushnet.bin").read_text()}
    return parts.pop() if len(parts) == 1 else None


@pytest.mark.parametrize("kill_at", ["flush", "rename_aside", "rename_in", "delete_old"])
def test_export_swap_survives_a_kill_at_each_point(tmp_path, monkeypatch, kill_at):
    target = folder_with(tmp_path / "export" / "step_00000004", "old")
    staging = folder_with(tmp_path / "staging" / "export", "new")
    real_rename, renames = Path.rename, []

    def kill(*args, **kwargs):
        raise Killed

    def rename(self, dst):
        renames.append(dst)
        if (kill_at, len(renames)) in {("rename_aside", 1), ("rename_in", 2)}:
            raise Killed
        return real_rename(self, dst)

    monkeypatch.setattr(Path, "rename", rename)
    if kill_at == "flush":
        monkeypatch.setattr(export, "fsync_tree", kill)
    if kill_at == "delete_old":
        monkeypatch.setattr(export.shutil, "rmtree", kill)
    with pytest.raises(Killed):
        replace_folder(staging, target)
    monkeypatch.undo()

    # Right after the kill the old export or the new one is whole at the target; killed between the two renames,
    # the old one is whole aside (never a mix), and restoring puts it back.
    aside = target.with_name(f".{target.name}.previous")
    expected = {"flush": "old", "rename_aside": "old", "rename_in": None, "delete_old": "new"}[kill_at]
    assert content(target) == expected
    if expected is None:
        assert content(aside) == "old"
    restore_folder(target)
    assert content(target) == (expected or "old") and not aside.exists()

    # The next export swaps its folder in over whatever the kill left.
    replace_folder(folder_with(tmp_path / "staging2" / "export", "newer"), target)
    assert content(target) == "newer"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_a_stop_request_checkpoints_the_step_in_progress_and_the_resume_continues_exactly(
        weights_root, tmp_path):  # noqa: F811
    settings = ("optim.max_steps=3", "checkpointing.every_n_steps=3", "export_on_finish=false")
    straight = make_recipe("stage1", weights_root, tmp_path / "straight", *settings)
    straight.loop.run()

    stopped = make_recipe("stage1", weights_root, tmp_path / "stopped", *settings)
    run_dir = stopped.cfg.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / STOP_REQUEST_FILE).write_text("0\n")  # what SIGTERM to the driver writes
    stopped.loop.run()
    assert stopped.loop.stopped_early and stopped.loop.logger.status == "KILLED"
    assert list(list_checkpoints(run_dir)) == [1]  # off the every-3 schedule: written for the stop
    (run_dir / STOP_REQUEST_FILE).unlink()  # a relaunch clears it (stop_on_sigterm)

    resumed = type(stopped)(stopped.cfg, WorkerContext())
    resumed.setup(list_checkpoints(run_dir)[1])
    resumed.loop.run()
    assert resumed.loop.logger.status == "FINISHED"
    expected, got = straight.engine.model.state_dict(), resumed.engine.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
