"""Stage-3 models: the policy (what trains, by tuning scope), the frozen reference, their checkpoints and export.

Tuning scopes (``tuning.scope``):

- ``lora`` (default, the roadmap's): a peft LoRA on the main UNet's spatial attention projections
  (:mod:`vipo.models.lora`); UNet base weights, motion modules and BrushNet frozen. The reference is the same
  UNet with the adapter disabled (no second weight copy).
- ``full``: what the model's own SFT stage trains, fully — ``model.stage: 1``: the 2-D UNet and BrushNet;
  ``model.stage: 2``: the motion modules (the research group's best runs, practice.md §3). The reference is a
  frozen copy loaded from the same parent, optionally kept on CPU between its passes (``reference.offload``).

``reference.path`` replaces the reference by another checkpoint (an export folder) in either scope.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import MotionAdapter
from torch import nn

from vipo.models.lora import add_spatial_lora, load_lora_weights_into, merge_lora, save_lora
from vipo.train.diffueraser import FrozenEncoders, load_models
from vipo.train.dpo_step import PairDenoiser, Reference
from vipo.train.recipes.configs import LoRASettings, ReferenceSettings, Stage3ModelSettings, TuningSettings

__all__ = [
    "LoRASettings",
    "ReferenceSettings",
    "Stage3ModelSettings",
    "TuningSettings",
    "build_reference",
    "export_policy",
    "load_policy",
    "save_policy",
]

LORA_DIR = "lora"
MOTION_ADAPTER_DIR = "motion_adapter"


def _load(model: Stage3ModelSettings, device: torch.device, dtype: torch.dtype, unet_from: Path | None,
          brushnet_from: Path | None) -> tuple[FrozenEncoders, nn.Module, nn.Module]:
    """Encoders and the ``unet_main``/``brushnet`` of export folders (None: the layout's defaults)."""
    return load_models(
        model.weights_root, stage=model.stage, device=device, frozen_dtype=dtype,
        unet_path=unet_from / "unet_main" if unet_from else None,
        brushnet_path=brushnet_from / "brushnet" if brushnet_from else None,
    )


def load_policy(model: Stage3ModelSettings, tuning: TuningSettings, device: torch.device, frozen_dtype: torch.dtype,
                weights: Path | None = None, *, seed: int) -> tuple[FrozenEncoders, PairDenoiser]:
    """Frozen encoders and the policy with only the scope's parameters trainable (float32), started from
    ``model.parent`` or, when resuming, from a checkpoint's ``weights`` folder (:func:`save_policy`). A new
    LoRA is initialised from ``seed`` (the run's)."""
    full_stage1 = tuning.scope == "full" and model.stage == 1
    start = weights if full_stage1 and weights is not None else model.parent
    frozen, unet, brushnet = _load(model, device, frozen_dtype, start, start)
    if tuning.scope == "lora":
        unet.requires_grad_(False)
        brushnet.requires_grad_(False)
        add_spatial_lora(unet, tuning.lora.rank, tuning.lora.alpha, tuning.lora.dropout, seed=seed)
        if weights is not None:
            load_lora_weights_into(unet, weights / LORA_DIR)
    elif model.stage == 2:
        unet.freeze_unet2d_params()
        brushnet.requires_grad_(False)
        if weights is not None:
            motion = MotionAdapter.from_pretrained(weights / MOTION_ADAPTER_DIR, local_files_only=True)
            unet.load_motion_modules(motion.to(device))
    return frozen, PairDenoiser(unet, brushnet)


def build_reference(model: Stage3ModelSettings, tuning: TuningSettings, reference: ReferenceSettings,
                    policy: PairDenoiser, device: torch.device, dtype: torch.dtype) -> Reference:
    """The frozen reference for ``policy`` (the unwrapped module). A separate one is built from files, never copied
    from the live policy, so a resumed run gets the original reference; its weights take ``dtype``, the policy's
    (a DeepSpeed bf16 engine casts the policy), so both start bit-identical."""
    if tuning.scope == "lora" and reference.path is None:
        return Reference(policy, adapter_off=True)
    reference_brushnet = reference.path is not None and (reference.path / "brushnet").is_dir()
    brushnet_trains = any(p.requires_grad for p in policy.brushnet.parameters())
    own_brushnet = reference_brushnet or brushnet_trains
    _, unet, brushnet = _load(model, torch.device("cpu") if reference.offload else device, torch.float32,
                              reference.path or model.parent, reference.path if reference_brushnet else model.parent)
    denoiser = PairDenoiser(unet, brushnet if own_brushnet else policy.brushnet).requires_grad_(False).eval()
    own = [unet, brushnet] if own_brushnet else [unet]
    for module in own:
        module.to(device="cpu" if reference.offload else device, dtype=dtype)
    return Reference(denoiser, adapter_off=False, offload=reference.offload, own_modules=own)


def save_policy(policy: PairDenoiser, model: Stage3ModelSettings, tuning: TuningSettings, directory: Path) -> None:
    """Only what trains: ``lora/`` (peft adapter), ``unet_main/`` + ``brushnet/`` (full, stage 1) or
    ``motion_adapter/`` (full, stage 2)."""
    if tuning.scope == "lora":
        save_lora(policy.unet, directory / LORA_DIR)
    elif model.stage == 1:
        policy.unet.save_pretrained(directory / "unet_main")
        policy.brushnet.save_pretrained(directory / "brushnet")
    else:
        policy.unet.save_motion_modules(directory / MOTION_ADAPTER_DIR)


def export_policy(model: Stage3ModelSettings, tuning: TuningSettings, weights: Path, out_dir: Path) -> None:
    """Diffusers folders for inference: ``unet_main/`` (LoRA merged in), ``brushnet/``, plus ``lora/`` (the
    adapter, to load on the parent's ``unet_main`` with :func:`vipo.models.lora.load_lora`) or
    ``motion_adapter/`` (full stage 2)."""
    _, policy = load_policy(model, tuning, torch.device("cpu"), torch.float32, weights, seed=0)  # init overwritten
    policy.requires_grad_(False)
    if tuning.scope == "lora":
        save_lora(policy.unet, out_dir / LORA_DIR)
        merge_lora(policy.unet)
    elif model.stage == 2:
        policy.unet.save_motion_modules(out_dir / MOTION_ADAPTER_DIR)
    policy.unet.save_pretrained(out_dir / "unet_main")
    policy.brushnet.save_pretrained(out_dir / "brushnet")
