"""Checkpoints: ``save_pretrained`` weights + a recipe-state file + progress, written atomically.

A checkpoint folder (``checkpoint-00000100/``) holds:

- ``weights/<module>/``: the trained modules in diffusers format (``save_pretrained``), written by rank 0;
- ``recipe_state.pt`` (DDP path, rank 0) with optimiser, LR scheduler and grad-scaler state, or ``deepspeed/``
  (ZeRO path, every rank writes its shard of the optimiser state);
- ``rng/rank_00000.pt``: each rank's RNG states (Python, NumPy, torch, CUDA, the recipe's noise generator);
- ``config.yaml``: the resolved config, so ``vipo export`` needs nothing but the folder;
- ``progress.json``: :class:`TrainingProgress`, the completeness marker — a folder without it is incomplete.

Every rank reports its local folder through ``ray.train.report``; Ray merges them into one folder under
``output_dir/<run name>/`` and keeps the last K. Once every rank's part is there, rank 0 fsyncs the folder and
writes ``progress.json`` into it (:func:`mark_complete`). Ray's own record (its checkpoint-manager snapshot, what
``ray.train.get_checkpoint()`` returns) is updated by the controller a moment later; a kill in between leaves a
complete folder Ray does not know, so a relaunch resumes from the newer of the two records
(:func:`resume_checkpoint`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "CONFIG_FILE",
    "PROGRESS_FILE",
    "RECIPE_STATE_FILE",
    "WEIGHTS_DIR",
    "TrainingProgress",
    "atomic_save",
    "atomic_write_text",
    "capture_rng",
    "checkpoint_dir_name",
    "find_checkpoint",
    "fsync_path",
    "fsync_tree",
    "list_checkpoints",
    "mark_complete",
    "prune_checkpoints",
    "restore_rng",
    "resume_checkpoint",
    "rng_file",
    "seed_global_rngs",
]

WEIGHTS_DIR = "weights"
RECIPE_STATE_FILE = "recipe_state.pt"
PROGRESS_FILE = "progress.json"
CONFIG_FILE = "config.yaml"
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d{8})$")


@dataclass
class TrainingProgress:
    """Where training stands. ``batch_in_epoch`` counts micro-batches of ``epoch`` each rank has consumed, so a
    resumed run skips exactly those and sees the same data order an uninterrupted run would. ``guard`` is the
    step guard's state (:meth:`vipo.train.guard.StepGuard.state_dict`)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    seed: int = 0
    samples_seen: int = 0
    guard: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> "TrainingProgress":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise RuntimeError(f"{path}: unreadable training progress ({err}); the checkpoint is damaged") from None


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (so a rename in it survives a crash), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file and folder under ``folder`` (and the folder's entry in its parent) to disk."""
    folder = Path(folder)
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))
    fsync_path(folder.parent)


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    # Write next to the target, flush it, then rename: readers see the old file or the whole new one, and after a
    # crash the new name never points at data the disk did not get (the rename is flushed with the folder).
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(Path(tmp))
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file at ``path``."""
    _atomic(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_text(text))


def mark_complete(folder: str | Path, progress: TrainingProgress) -> None:
    """Flush a checkpoint folder whose every part is written, then write its ``progress.json``: from then on it
    counts as complete (:func:`list_checkpoints`)."""
    fsync_tree(folder)
    atomic_write_text(progress.to_json(), Path(folder) / PROGRESS_FILE)


def rng_file(directory: Path, rank: int) -> Path:
    return Path(directory) / "rng" / f"rank_{rank:05d}.pt"


def capture_rng(noise: torch.Generator) -> dict[str, Any]:
    """Every RNG a training step can touch, plus the recipe's own noise/timestep generator."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "noise": noise.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_global_rngs(seed: int, rank: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (CUDA's too) from the run's seed and this rank, so draws a
    library makes behind our back (peft's init, dropout) repeat from run to run and differ between ranks."""
    mixed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def restore_rng(state: dict[str, Any], noise: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    noise.set_state(state["noise"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """Complete checkpoints of a run folder, by step."""
    run_dir = Path(run_dir)
    found = {}
    for child in run_dir.iterdir() if run_dir.is_dir() else ():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and (child / PROGRESS_FILE).is_file():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def prune_checkpoints(run_dir: str | Path, keep_last_k: int) -> None:
    """Delete all but the newest ``keep_last_k`` complete checkpoints of a run folder (what Ray Train's
    ``CheckpointConfig(num_to_keep)`` does for worker groups; local mode writes the folder itself)."""
    found = list_checkpoints(run_dir)
    for step in list(found)[:-keep_last_k]:
        shutil.rmtree(found[step])


def find_checkpoint(run_dir: str | Path, step: int | str = "latest") -> Path:
    """The checkpoint folder for ``step`` (an int, a digit string or ``"latest"``); clear errors otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder (expected output_dir/<run name> of a training run)")
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint-NNNNNNNN/ folder in this run folder")
    if step == "latest":
        return found[max(found)]
    if isinstance(step, str) and not step.isdigit():
        raise ValueError(f"step must be an integer or 'latest', got {step!r}")
    if int(step) not in found:
        raise FileNotFoundError(
            f"{run_dir}: no checkpoint at step {int(step)}; available: {', '.join(map(str, found))}"
        )
    return found[int(step)]


def resume_checkpoint(run_dir: str | Path, ray_checkpoint: str | Path | None) -> Path | None:
    """The newest complete checkpoint of the run: Ray's (``ray.train.get_checkpoint()``, when its marker is
    written) or the newest complete folder in ``run_dir``, whichever has the higher step; None for a fresh run."""
    candidates = list_checkpoints(run_dir)
    if ray_checkpoint is not None and (Path(ray_checkpoint) / PROGRESS_FILE).is_file():
        step = TrainingProgress.from_file(Path(ray_checkpoint) / PROGRESS_FILE).step
        if step >= max(candidates, default=-1):
            return Path(ray_checkpoint)
    return candidates[max(candidates)] if candidates else None
