"""LoRA on the main UNet's spatial attention projections: the stage-3 (DPO) adapter, saved and loaded with peft.

The adapter targets ``to_q``/``to_k``/``to_v``/``to_out.0`` of the spatial transformers only
(:data:`SPATIAL_ATTENTION_TARGETS`): peft's plain name matching would also hit the motion modules' attention (and
BrushNet's, were it applied there), and the convolutions stay untouched, as the roadmap prescribes. It works on a
2-D ``UNet2DConditionModel`` and on a ``UNetMotionModel`` alike: both name their spatial attention the same way.

Saved format: diffusers' peft format (``save_lora_adapter``), one ``pytorch_lora_weights.safetensors`` whose
metadata holds the peft ``LoraConfig`` (rank, alpha, targets), so loading restores the alpha/rank scaling. At
inference::

    pipeline = DiffuEraserPipeline.from_weights(root, unet_path=<base>/unet_main, brushnet_path=...)
    load_lora(pipeline.unet, <export>/lora, fuse=True)      # or use <export>/unet_main, already merged
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from vipo.models.diffueraser_weights import require_path

__all__ = [
    "ADAPTER_NAME",
    "LORA_WEIGHT_NAME",
    "SPATIAL_ATTENTION_TARGETS",
    "adapter_disabled",
    "add_spatial_lora",
    "load_lora",
    "load_lora_weights_into",
    "merge_lora",
    "save_lora",
]

UNet = UNet2DConditionModel | UNetMotionModel

ADAPTER_NAME = "dpo"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"

SPATIAL_ATTENTION_TARGETS = (
    r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+"
    r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
)
"""peft ``target_modules`` regex (full match on module names relative to the UNet): self- and cross-attention
projections of the spatial transformers (``…attentions.N…``), not ``…motion_modules.N…``, not convs."""


def add_spatial_lora(unet: UNet, rank: int, alpha: float, dropout: float = 0.0,
                     adapter_name: str = ADAPTER_NAME, *, seed: int) -> None:
    """Add a trainable LoRA (B = 0 at init, so the UNet is unchanged) on the spatial attention projections.

    Everything else in ``unet`` keeps its ``requires_grad``; freeze the base weights before calling this. peft
    draws A from torch's global RNG: it is drawn here from ``seed`` (the run's), and the global RNG is left as it
    was, so the same seed gives the same adapter in every process.
    """
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=SPATIAL_ATTENTION_TARGETS)
    cuda = [unet.device] if unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=adapter_name)


def save_lora(unet: UNet, folder: str | Path, adapter_name: str = ADAPTER_NAME) -> Path:
    """Write the adapter to ``folder/pytorch_lora_weights.safetensors`` (peft config in its metadata)."""
    unet.save_lora_adapter(str(folder), adapter_name=adapter_name, weight_name=LORA_WEIGHT_NAME)
    return Path(folder) / LORA_WEIGHT_NAME


def load_lora(unet: UNet, folder: str | Path, fuse: bool = False, adapter_name: str = ADAPTER_NAME) -> None:
    """Load a :func:`save_lora` folder into a plain ``unet`` (inference), with the saved rank and alpha.

    With ``fuse`` the adapter is merged into the weights and its layers removed: ``unet`` is a plain model again,
    equal to the exported merged ``unet_main``.
    """
    weights = require_path(Path(folder).expanduser() / LORA_WEIGHT_NAME, "LoRA adapter weights")
    unet.load_lora_adapter(str(weights.parent), prefix=None, adapter_name=adapter_name, weight_name=LORA_WEIGHT_NAME,
                           local_files_only=True)
    if fuse:
        merge_lora(unet, adapter_name)


def load_lora_weights_into(unet: UNet, folder: str | Path, adapter_name: str = ADAPTER_NAME) -> None:
    """Copy saved adapter weights into an adapter already added to ``unet`` (e.g. to resume training it)."""
    weights = require_path(Path(folder).expanduser() / LORA_WEIGHT_NAME, "LoRA adapter weights")
    result = set_peft_model_state_dict(unet, load_file(weights), adapter_name=adapter_name)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing or result.unexpected_keys:
        raise ValueError(f"{weights}: adapter does not match the model (missing {missing[:3]}, unexpected "
                         f"{list(result.unexpected_keys)[:3]}); was it trained with another rank or target set?")


def merge_lora(unet: UNet, adapter_name: str = ADAPTER_NAME) -> None:
    """Fold the adapter into the base weights and remove every LoRA layer (diffusers' fuse + unload)."""
    unet.fuse_lora(adapter_names=[adapter_name])
    unet.unload_lora()


@contextlib.contextmanager
def adapter_disabled(unet: UNet) -> Iterator[None]:
    """Run ``unet`` as its base model (every adapter off): the LoRA reference pass, with no second weight copy."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()
