"""Weights for the evaluation demo and tests: random ProPainter, tiny random DiffuEraser, a random stage-3 LoRA.

``python -m evaluation.demo_weights runs/demo/weights`` writes what ``jobs/configs/eval_demo.yaml`` reads::

    <root>/propainter/    raft-things.pth, recurrent_flow_completion.pth, ProPainter.pth (random)
    <root>/diffueraser/   the upstream layout with tiny random models (vipo.models.tiny)
    <root>/stage3/        shaped like a stage-3 LoRA export: lora/ (a random, non-zero LoRA on the tiny main UNet's
                          spatial attention), unet_main/ (merged), brushnet/

Every model is untrained: outputs are noise, only the plumbing is real.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["write_demo_weights", "write_stage3_stand_in"]

_LORA_B_STD = 0.1  # B = 0 would be an untrained adapter, which the diffueraser+lora method refuses


def write_stage3_stand_in(unet_dir: Path, brushnet_dir: Path, out_dir: Path, rank: int = 2, seed: int = 0) -> Path:
    """A folder shaped like a stage-3 LoRA export (:func:`vipo.train.dpo_models.export_policy`): ``lora/`` (a
    random, non-zero spatial-attention LoRA on the ``UNetMotionModel`` in ``unet_dir``), ``unet_main/`` (that LoRA
    merged) and ``brushnet/`` (copied)."""
    import shutil

    import torch
    from diffusers import UNetMotionModel

    from vipo.models.lora import add_spatial_lora, merge_lora, save_lora

    unet = UNetMotionModel.from_pretrained(unet_dir, local_files_only=True)
    add_spatial_lora(unet, rank, rank, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * _LORA_B_STD)
    save_lora(unet, out_dir / "lora")
    merge_lora(unet)
    unet.save_pretrained(out_dir / "unet_main")
    shutil.copytree(brushnet_dir, out_dir / "brushnet", dirs_exist_ok=True)
    return out_dir


def write_demo_weights(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the three weight folders under ``root`` → ``{"propainter", "diffueraser", "stage3"}`` paths."""
    from vipo.models.tiny import write_tiny_weights
    from vipo.pipelines.propainter import save_random_propainter_weights

    root = Path(root)
    paths = {"propainter": save_random_propainter_weights(root / "propainter", seed=seed)}
    layout = write_tiny_weights(root / "diffueraser", seed=seed)
    paths["diffueraser"] = layout.root
    paths["stage3"] = write_stage3_stand_in(layout.unet_main, layout.brushnet, root / "stage3", seed=seed)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m evaluation.demo_weights <folder>   (e.g. runs/demo/weights)")
    from vipo.storage import resolve_output_path

    # A relative folder lands under the storage root, as job outputs do (not in a `ray job submit` temp copy).
    for name, path in write_demo_weights(resolve_output_path(sys.argv[1])).items():
        print(f"{name}: {path}")
