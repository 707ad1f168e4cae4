"""Weights for the evaluation demo and tests: random ProPainter, tiny random DiffuEraser, a random stage-3 LoRA.

``python -m evaluation.demo_weights runs/demo/weights`` writes what ``jobs/configs/eval_demo.yaml`` reads::

    <root>/propainter/    raft-things.pth, recurrent_flow_completion.pth, ProPainter.pth (random)
    <root>/diffueraser/   the upstream layout with tiny random models (vipo.models.tiny)
    <root>/stage3_lora/   a peft LoRA adapter (adapter_config.json + adapter_model.safetensors) on the tiny main
                          UNet's spatial attention, random and non-zero: a stand-in for a stage-3 adapter

Every model is untrained: outputs are noise, only the plumbing is real.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["write_demo_weights", "write_random_lora"]

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def write_random_lora(unet_dir: Path, out_dir: Path, rank: int = 2, seed: int = 0) -> Path:
    """A peft LoRA adapter folder for the diffusers UNet saved in ``unet_dir``, with random (non-zero) A and B on
    its spatial attention projections (motion modules excluded)."""
    import torch
    from diffusers import UNetMotionModel
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = UNetMotionModel.from_pretrained(unet_dir, local_files_only=True)
    targets = [name for name, _ in unet.named_modules()
               if name.endswith(LORA_TARGETS) and ".attentions." in name and "motion_modules" not in name]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(seed)
    unet.add_adapter(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(get_peft_model_state_dict(unet), out_dir / "adapter_model.safetensors")
    config.save_pretrained(str(out_dir))
    return out_dir


def write_demo_weights(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the three weight folders under ``root`` → ``{"propainter", "diffueraser", "stage3_lora"}`` paths."""
    from vipo.models.tiny import write_tiny_weights
    from vipo.pipelines.propainter import save_random_propainter_weights

    root = Path(root)
    paths = {"propainter": save_random_propainter_weights(root / "propainter", seed=seed)}
    layout = write_tiny_weights(root / "diffueraser", seed=seed)
    paths["diffueraser"] = layout.root
    paths["stage3_lora"] = write_random_lora(layout.unet_main, root / "stage3_lora", seed=seed)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m evaluation.demo_weights <folder>   (e.g. runs/demo/weights)")
    for name, path in write_demo_weights(sys.argv[1]).items():
        print(f"{name}: {path}")
