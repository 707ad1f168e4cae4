"""Export a training checkpoint as diffusers-format folders that DiffuEraser-style inference loads.

What a recipe exports is its own business (``Recipe.export``): stage 1 writes ``unet_main/`` (2-D UNet) and
``brushnet/``; stage 2 writes ``unet_main/`` (``UNetMotionModel``), ``brushnet/`` and ``motion_adapter/``.
Every checkpoint carries its resolved config, so a run folder is all :func:`export` needs.

``compose`` builds the hybrid the stage-3 research uses (a DPO-tuned stage-1 image model + SFT stage-2 motion
modules): the exported run must give a 2-D ``unet_main``; the motion adapter comes from a stage-2 run folder or
a stage-2 export folder, and ``unet_main`` becomes ``UNetMotionModel.from_unet2d(unet_2d, adapter)``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml

from vipo.train.checkpointing import CONFIG_FILE, find_checkpoint, fsync_path, fsync_tree
from vipo.train.config import train_config_from_dict
from vipo.train.recipes import get_recipe

__all__ = ["MOTION_ADAPTER_DIR", "compose_motion", "export", "export_checkpoint", "motion_adapter_folder",
           "replace_folder", "restore_folder"]

MOTION_ADAPTER_DIR = "motion_adapter"


def _class_name(folder: Path) -> str | None:
    config = folder / "config.json"
    return json.loads(config.read_text()).get("_class_name") if config.is_file() else None


def export_checkpoint(checkpoint: Path, out_dir: Path) -> Path:
    """Export one checkpoint folder (``checkpoint-NNNNNNNN/``) with its recipe's exporter."""
    config_file = checkpoint / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: missing; not a vipo training checkpoint")
    cfg = train_config_from_dict(yaml.safe_load(config_file.read_text()))
    get_recipe(cfg.recipe).export(cfg, checkpoint, out_dir)
    return out_dir


def motion_adapter_folder(source: Path, work_dir: Path) -> Path:
    """The ``motion_adapter/`` of a stage-2 export folder, or of a stage-2 run folder's latest checkpoint
    (exported into ``work_dir`` first)."""
    source = Path(source)
    if (source / MOTION_ADAPTER_DIR).is_dir():
        return source / MOTION_ADAPTER_DIR
    if source.is_dir() and any(child.name.startswith("checkpoint-") for child in source.iterdir()):
        exported = export_checkpoint(find_checkpoint(source, "latest"), work_dir / "motion_source")
        if (exported / MOTION_ADAPTER_DIR).is_dir():
            return exported / MOTION_ADAPTER_DIR
    raise FileNotFoundError(
        f"--compose {source}: expected a stage-2 export folder with {MOTION_ADAPTER_DIR}/ or a stage-2 run folder"
    )


def compose_motion(image_export: Path, adapter_folder: Path, out_dir: Path) -> None:
    """``out_dir/unet_main`` = ``UNetMotionModel.from_unet2d(image_export/unet_main, adapter)``; ``brushnet/``
    from ``image_export``; the adapter copied to ``out_dir/motion_adapter``."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet_folder = image_export / "unet_main"
    if _class_name(unet_folder) != "UNet2DConditionModel":
        raise ValueError(
            f"--compose needs a run whose unet_main is a 2-D UNet (stage 1, or stage 3 tuned on stage-1 modules); "
            f"{unet_folder} holds {_class_name(unet_folder)}"
        )
    unet = UNet2DConditionModel.from_pretrained(unet_folder, local_files_only=True)
    adapter = MotionAdapter.from_pretrained(adapter_folder, local_files_only=True)
    UNetMotionModel.from_unet2d(unet, adapter).save_pretrained(out_dir / "unet_main")
    shutil.copytree(image_export / "brushnet", out_dir / "brushnet", dirs_exist_ok=True)
    shutil.copytree(adapter_folder, out_dir / MOTION_ADAPTER_DIR, dirs_exist_ok=True)


def export(run_dir: str | Path, step: int | str = "latest", out_dir: str | Path | None = None,
           compose: str | Path | None = None) -> Path:
    """Export checkpoint ``step`` (int or ``"latest"``) of a run folder (``output_dir/<run name>``).

    ``out_dir`` defaults to ``<run_dir>/export/step_NNNNNNNN`` (``..._composed`` with ``compose``). The folder
    is written next to its final place, flushed, and swapped in by :func:`replace_folder`, so it is never seen
    half-written and a kill at any point leaves the old export or the new one.
    """
    checkpoint = find_checkpoint(run_dir, step)
    suffix = "_composed" if compose else ""
    out = Path(out_dir) if out_dir else Path(run_dir) / "export" / f"step_{checkpoint.name.split('-')[1]}{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staging = Path(tmp) / "export"
        if compose:
            image_export = export_checkpoint(checkpoint, Path(tmp) / "image")
            compose_motion(image_export, motion_adapter_folder(Path(compose), Path(tmp)), staging)
        else:
            export_checkpoint(checkpoint, staging)
        replace_folder(staging, out)
    return out


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def restore_folder(target: Path) -> None:
    """Undo what a kill in the middle of :func:`replace_folder` left: put the old folder back when the new one never
    arrived, or delete it when the swap was done."""
    aside = _aside(target)
    if aside.exists():
        if target.exists():
            shutil.rmtree(aside)
        else:
            aside.rename(target)


def replace_folder(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target`` (same file system), replacing what is there: flush ``new``,
    rename the old ``target`` aside (``.<name>.previous``), rename ``new`` in, flush, then delete the old one.
    A kill between the two renames leaves the old folder aside, which :func:`restore_folder` (run first here)
    puts back."""
    restore_folder(target)
    fsync_tree(new)
    if target.exists():
        target.rename(_aside(target))
    new.rename(target)
    fsync_path(target.parent)
    shutil.rmtree(_aside(target), ignore_errors=True)
