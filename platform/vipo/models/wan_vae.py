"""The Wan2.1 video VAE (diffusers ``AutoencoderKLWan``) for fine-tuning: loading, checkpointing, fp32 norms, export.

Weights come from a diffusers folder (``from_pretrained``), from the original ``Wan2.1_VAE.pth`` (diffusers'
single-file key conversion, ``convert_wan_vae_to_diffusers``, with a local ``config.json``: nothing downloads), or
are random from a config (tests and the demo). :func:`to_original_state_dict` is the inverse key mapping, checked
against diffusers' own conversion on every export.

diffusers declares ``_supports_gradient_checkpointing = False`` for this class: its blocks thread a per-conv
feature cache (the last frames of every causal conv) from one temporal chunk to the next and mutate it in place,
which a naive recomputation would corrupt. :func:`enable_block_checkpointing` wraps each encoder/decoder block so
that it runs on a private copy of the cache — the original pass and the backward recomputation both start from the
same snapshot — and only the first pass's updates are written back to the model's cache.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanRMS_norm
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "TINY_WAN_VAE_CONFIG",
    "enable_block_checkpointing",
    "load_wan_vae",
    "norms_in_fp32",
    "to_original_state_dict",
]

TINY_WAN_VAE_CONFIG: dict[str, Any] = {
    # The real architecture (its channel multipliers and res blocks: the original key layout depends on them) at
    # base width 2 instead of 96.
    "base_dim": 2, "z_dim": 4, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "temperal_downsample": [False, True, True], "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4,
}


def load_wan_vae(weights: Path | None, config_dir: Path | None = None, tiny_seed: int = 0) -> AutoencoderKLWan:
    """A diffusers folder, an original ``.pth``/``.safetensors`` file (``config_dir``: a folder with the VAE's
    ``config.json``), or — ``weights`` None — the tiny random VAE drawn from ``tiny_seed``."""
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tiny_seed)
            return AutoencoderKLWan(**TINY_WAN_VAE_CONFIG)
    weights = Path(weights)
    if weights.is_dir():
        return AutoencoderKLWan.from_pretrained(weights, local_files_only=True)
    if config_dir is None or not (Path(config_dir) / "config.json").is_file():
        raise FileNotFoundError(
            f"{weights}: an original Wan VAE file needs model.config_dir, a folder holding the diffusers VAE "
            f"config.json (e.g. the 'vae' folder of Wan-AI/Wan2.1-T2V-14B-Diffusers); got {config_dir}"
        )
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers, load_state_dict

    model = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(config_dir))
    model.load_state_dict(convert_wan_vae_to_diffusers(load_state_dict(str(weights))), strict=True)
    return model


# -- gradient checkpointing --------------------------------------------------------------------------------------
def _checkpointed(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(x: torch.Tensor, feat_cache: list | None = None, feat_idx: list[int] = [0], **kwargs) -> torch.Tensor:  # noqa: B006 (diffusers' signature)
        if feat_cache is None or not torch.is_grad_enabled():
            return forward(x, feat_cache=feat_cache, feat_idx=feat_idx, **kwargs)
        snapshot, start = list(feat_cache), feat_idx[0]
        first_pass: list[tuple[list, int]] = []

        def block(x: torch.Tensor) -> torch.Tensor:
            cache, index = list(snapshot), [start]
            out = forward(x, feat_cache=cache, feat_idx=index, **kwargs)
            if not first_pass:  # the recomputation in backward must not touch the live cache
                first_pass.append((cache, index[0]))
            return out

        out = checkpoint(block, x, use_reentrant=False)
        cache, end = first_pass[0]
        feat_cache[start:end] = cache[start:end]
        feat_idx[0] = end
        return out

    return run


def enable_block_checkpointing(vae: AutoencoderKLWan, encoder: bool = True, decoder: bool = True) -> None:
    """Recompute each encoder down block / mid block and decoder mid / up block in backward instead of keeping
    its activations (non-reentrant ``torch.utils.checkpoint``; see the module docstring for the cache)."""
    blocks: list[nn.Module] = []
    if encoder:
        blocks += [*vae.encoder.down_blocks, vae.encoder.mid_block]
    if decoder:
        blocks += [vae.decoder.mid_block, *vae.decoder.up_blocks]
    for block in blocks:
        if isinstance(block, WanAttentionBlock) or "_vipo_plain_forward" in block.__dict__:
            continue  # attention blocks take no cache (and are not in the Wan2.1 encoder's down path)
        block._vipo_plain_forward = block.forward
        block.forward = _checkpointed(block.forward)


# -- precision ---------------------------------------------------------------------------------------------------
def norms_in_fp32(vae: nn.Module) -> int:
    """Run every normalisation layer (Wan's RMS norms; GroupNorm/LayerNorm if any) in float32 under autocast, the
    result cast back to the input's dtype: low-precision statistics are what blows up first. Returns the count."""
    count = 0
    for module in vae.modules():
        if (isinstance(module, (WanRMS_norm, nn.GroupNorm, nn.LayerNorm))
                and "_vipo_plain_forward" not in module.__dict__):
            plain = module.forward

            def forward(x: torch.Tensor, _plain=plain) -> torch.Tensor:
                with torch.autocast(x.device.type, enabled=False):
                    return _plain(x.float()).to(x.dtype)

            module._vipo_plain_forward = plain
            module.forward = forward
            count += 1
    return count


# -- the original key layout -------------------------------------------------------------------------------------
_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
             "conv2": "residual.6", "conv_shortcut": "shortcut"}


def _residual_name(rest: str) -> str:
    for new, old in _RESIDUAL.items():
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def _original_key(key: str, up_offsets: list[int]) -> str:
    fixed = {"quant_conv": "conv1", "post_quant_conv": "conv2", "encoder.conv_in": "encoder.conv1",
             "decoder.conv_in": "decoder.conv1", "encoder.norm_out": "encoder.head.0",
             "decoder.norm_out": "decoder.head.0", "encoder.conv_out": "encoder.head.2",
             "decoder.conv_out": "decoder.head.2"}
    module, _, param = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{param}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.middle.{2 * int(match[2])}.{_residual_name(match[3])}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{match[1]}.middle.1.{match[2]}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
        return f"encoder.downsamples.{match[1]}.{_residual_name(match[2])}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.upsamples.{up_offsets[int(match[1])] + int(match[2])}.{_residual_name(match[3])}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        block = int(match[1])
        return f"decoder.upsamples.{up_offsets[block + 1] - 1}.{match[2]}"
    raise KeyError(f"no original Wan2.1 name for {key!r}")


def to_original_state_dict(vae: AutoencoderKLWan,
                           state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``state`` (default: the VAE's) renamed to the original ``Wan2.1_VAE.pth`` keys. Checked by running diffusers'
    own conversion on the result: it must give back exactly the diffusers names (raises otherwise)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = vae.state_dict() if state is None else state
    # The original decoder lists each up block's res blocks and then its upsampler in one flat ``upsamples``.
    up_offsets = [0]
    for block in vae.decoder.up_blocks:
        up_offsets.append(up_offsets[-1] + len(block.resnets) + len(block.upsamplers or []))
    original = {_original_key(key, up_offsets): value for key, value in state.items()}
    back = convert_wan_vae_to_diffusers(original)
    if set(back) != set(state):
        wrong = sorted(set(back) ^ set(state))[:5]
        raise ValueError(f"the original-layout export does not round-trip through diffusers' conversion: {wrong}")
    return original
