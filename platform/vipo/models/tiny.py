"""Tiny random DiffuEraser components (a few channels; 32x32 frames -> 4x4 latents) for tests and the demo.

``write_tiny_weights`` saves them in exactly the upstream weights layout (``vipo.models.diffueraser_weights``), so
everything downstream loads them with the same code as the full-size checkpoints. The architecture is SD1.5's
(four blocks, two layers each, cross-attention in three; AnimateDiff-style motion adapter), only narrower.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, MotionAdapter, PNDMScheduler, UNet2DConditionModel, UNetMotionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from vipo.models.brushnet import BrushNetModel
from vipo.models.diffueraser_weights import DiffuEraserWeights

TINY_FRAME_SIZE = 32
TINY_BLOCK_OUT_CHANNELS = (16, 16, 32, 32)
TINY_TEXT_DIM = 32
TINY_NORM_GROUPS = 4

TINY_UNET_CONFIG = {
    "sample_size": TINY_FRAME_SIZE // 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": TINY_BLOCK_OUT_CHANNELS,
    "layers_per_block": 2,
    "norm_num_groups": TINY_NORM_GROUPS,
    "cross_attention_dim": TINY_TEXT_DIM,
    "attention_head_dim": 2,  # diffusers' SD1.5 naming: this is the number of heads
}

TINY_MOTION_ADAPTER_CONFIG = {
    "block_out_channels": TINY_BLOCK_OUT_CHANNELS,
    "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1,
    "motion_num_attention_heads": 2,
    "motion_norm_num_groups": TINY_NORM_GROUPS,
    "motion_max_seq_length": 32,
    "use_motion_mid_block": True,
}

TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": TINY_NORM_GROUPS,
    "sample_size": TINY_FRAME_SIZE,
    "scaling_factor": 0.18215,
}

# SD1.5's scheduler_config.json: every DiffuEraser sampler and the training DDPMScheduler derive from it.
SD15_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

# The tiny stand-in for trained (non-zero) BrushNet output convs; zero convs would make BrushNet a no-op.
_TINY_ZERO_CONV_STD = 0.1
_TINY_PCM_LORA_RANK = 2


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges (every byte is a token), 77 tokens long like SD1.5's."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *alphabet, *(f"{char}</w>" for char in alphabet)]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[], model_max_length=77)


def tiny_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=2 * TINY_TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=TINY_TEXT_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**TINY_UNET_CONFIG)


def tiny_motion_adapter() -> MotionAdapter:
    return MotionAdapter(**TINY_MOTION_ADAPTER_CONFIG)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(**TINY_VAE_CONFIG)


def tiny_brushnet(unet: UNet2DConditionModel) -> BrushNetModel:
    """``BrushNetModel.from_unet`` with random output convs, standing in for a trained checkpoint."""
    brushnet = BrushNetModel.from_unet(unet)
    with torch.no_grad():
        for conv in (*brushnet.brushnet_down_blocks, brushnet.brushnet_mid_block, *brushnet.brushnet_up_blocks):
            nn.init.normal_(conv.weight, std=_TINY_ZERO_CONV_STD)
            nn.init.normal_(conv.bias, std=_TINY_ZERO_CONV_STD)
    return brushnet


def _save_text_encoder(text_encoder: CLIPTextModel, folder: Path) -> None:
    """The files ``CLIPTextModel.save_pretrained`` writes; its own ``save_pretrained`` imports DeepSpeed (~10 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    text_encoder.config.save_pretrained(folder)
    save_file(text_encoder.state_dict(), folder / "model.safetensors", metadata={"format": "pt"})


def _write_tiny_pcm_lora(unet: UNet2DConditionModel, path: Path) -> None:
    """A random LoRA on the UNet's spatial attention projections, saved in diffusers' LoRA file format."""
    unet.add_adapter(
        LoraConfig(
            r=_TINY_PCM_LORA_RANK,
            lora_alpha=_TINY_PCM_LORA_RANK,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,  # random B as well, so the LoRA visibly changes the UNet
        )
    )
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        path.parent, unet_lora_layers=get_peft_model_state_dict(unet), weight_name=path.name
    )
    unet.delete_adapters(unet.active_adapters())


def write_tiny_weights(root: str | Path, seed: int = 0) -> DiffuEraserWeights:
    """Write tiny random weights in the full-size layout under ``root`` and return that layout.

    The stage-2 ``unet_main`` is ``UNetMotionModel.from_unet2d(unet, adapter)`` and the BrushNet is derived from
    the same 2-D UNet, as upstream. A 2-step PCM LoRA file is included.
    """
    layout = DiffuEraserWeights(Path(root).expanduser())
    torch.manual_seed(seed)
    unet = tiny_unet()
    vae = tiny_vae()
    tokenizer = tiny_tokenizer()
    adapter = tiny_motion_adapter()

    unet.save_pretrained(layout.unet_2d)
    vae.save_pretrained(layout.sd15 / "vae")
    vae.save_pretrained(layout.vae)
    _save_text_encoder(tiny_text_encoder(tokenizer), layout.text_encoder)
    tokenizer.save_pretrained(layout.tokenizer)
    PNDMScheduler(**SD15_SCHEDULER_CONFIG).save_pretrained(layout.scheduler)
    adapter.save_pretrained(layout.motion_adapter)
    tiny_brushnet(unet).save_pretrained(layout.brushnet)
    UNetMotionModel.from_unet2d(unet, adapter).save_pretrained(layout.unet_main)
    _write_tiny_pcm_lora(unet, layout.pcm_lora(2))
    return layout
