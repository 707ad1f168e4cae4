"""Drive stock diffusers UNet blocks layer by layer.

diffusers' block ``forward`` methods only expose block-level outputs, but DiffuEraser adds a BrushNet residual
after every (ResNet -> spatial transformer) layer and after every down/upsampler, and BrushNet's own decoder has
to emit the state after every up layer. These functions run the *stock* sub-modules of a block (``resnets``,
``attentions``, ``motion_modules``, ``downsamplers``/``upsamplers``) in the stock order, so stock weights, peft
LoRA layers and the blocks' gradient-checkpointing switches all apply unchanged. Nothing here owns parameters.

Tensors flow frame-major as ``(N, C, h, w)`` with ``N = B * F``: the frames of one clip are contiguous, which is
the layout diffusers' temporal modules reshape from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

MotionMidBlockOrder = Literal["diffueraser", "diffusers"]


@dataclass(frozen=True)
class LayerContext:
    """Per-forward inputs shared by every layer.

    Attributes:
        temb: time embedding, ``(N, time_embed_dim)``, one row per frame.
        encoder_hidden_states: text embedding, ``(N, L, D)``, one row per frame.
        num_frames: frames per clip for temporal (motion) modules; ``None`` for purely 2-D models.
    """

    temb: torch.Tensor
    encoder_hidden_states: torch.Tensor
    num_frames: int | None


def per_frame_timesteps(timestep: torch.Tensor | float | int, num_samples: int, device: torch.device) -> torch.Tensor:
    """Broadcast a diffusion timestep to one value per frame.

    Args:
        timestep: a scalar, or a 1-D tensor with 1, ``B`` (one per clip; repeated over its frames) or ``N`` entries.
        num_samples: ``N = B * F``, the number of frames in the batch.

    Returns:
        ``(N,)`` tensor on ``device``.
    """
    timesteps = torch.as_tensor(timestep, device=device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    if timesteps.ndim != 1 or num_samples % timesteps.shape[0] != 0:
        raise ValueError(
            f"timestep must be a scalar or have 1, B or N={num_samples} entries; got shape {tuple(timesteps.shape)}"
        )
    return timesteps.repeat_interleave(num_samples // timesteps.shape[0])


def per_frame_rows(tensor: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Repeat per-clip rows (``(B, ...)``) so that there is one row per frame (``(N, ...)``, frame-major)."""
    if num_samples % tensor.shape[0] != 0:
        raise ValueError(f"cannot spread {tensor.shape[0]} rows over {num_samples} frames")
    return tensor.repeat_interleave(num_samples // tensor.shape[0], dim=0)


def time_embedding(model: nn.Module, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``model.time_embedding(model.time_proj(t))`` for the SD1.5-style models handled here, ``(N, 4 * C0)``."""
    # The sinusoidal projection always returns fp32; the embedding MLP may run in half precision.
    return model.time_embedding(model.time_proj(timesteps).to(dtype=dtype))


def _run_checkpointed(block: nn.Module, function, *args: torch.Tensor | None) -> torch.Tensor:
    """Call ``function(*args)``, through the block's checkpointing function when diffusers enabled it."""
    if torch.is_grad_enabled() and getattr(block, "gradient_checkpointing", False):
        return block._gradient_checkpointing_func(function, *args)
    return function(*args)


def _layer(
    block: nn.Module,
    index: int,
    hidden: torch.Tensor,
    temb: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    residual: torch.Tensor | None,
    num_frames: int | None,
) -> torch.Tensor:
    """One down/up layer: ResNet -> spatial transformer (if any) -> + residual -> temporal module (if any)."""
    hidden = block.resnets[index](hidden, temb)
    if getattr(block, "attentions", None):
        hidden = block.attentions[index](hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
    if residual is not None:
        hidden = hidden + residual
    if getattr(block, "motion_modules", None):
        hidden = block.motion_modules[index](hidden, num_frames=num_frames)
    return hidden


def _layer_count(block: nn.Module, sampler_attribute: str) -> int:
    return len(block.resnets) + (getattr(block, sampler_attribute, None) is not None)


def down_residual_count(down_blocks: Sequence[nn.Module]) -> int:
    """Residuals a down path takes: one on the ``conv_in`` output, one per layer and one per downsampler."""
    return 1 + sum(_layer_count(block, "downsamplers") for block in down_blocks)


def up_residual_count(up_blocks: Sequence[nn.Module]) -> int:
    """Residuals an up path takes: one per layer and one per upsampler."""
    return sum(_layer_count(block, "upsamplers") for block in up_blocks)


def run_down_blocks(
    down_blocks: Sequence[nn.Module],
    hidden: torch.Tensor,
    context: LayerContext,
    residuals: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the down path after ``conv_in``.

    Args:
        hidden: ``conv_in`` output, ``(N, C0, h, w)``, already including any ``conv_in`` residual.
        residuals: ``down_residual_count(down_blocks) - 1`` tensors (the ``conv_in`` residual excluded), added
            after each layer's spatial part and after each downsampler; ``None`` adds nothing.

    Returns:
        The final hidden state and the skip states (one per layer and one per downsampler, in order). Each
        skip is the state after the residual add (and, for motion blocks, after the temporal module).
    """
    pending = iter(residuals) if residuals is not None else None
    skips: list[torch.Tensor] = []
    for block in down_blocks:
        for index in range(len(block.resnets)):
            residual = next(pending) if pending is not None else None
            hidden = _run_checkpointed(
                block,
                partial(_layer, block, index, num_frames=context.num_frames),
                hidden,
                context.temb,
                context.encoder_hidden_states,
                residual,
            )
            skips.append(hidden)
        if block.downsamplers is not None:
            hidden = block.downsamplers[0](hidden)
            if pending is not None:
                hidden = hidden + next(pending)
            skips.append(hidden)
    return hidden, skips


def run_mid_block(
    mid_block: nn.Module,
    hidden: torch.Tensor,
    context: LayerContext,
    residual: torch.Tensor | None = None,
    motion_order: MotionMidBlockOrder = "diffueraser",
) -> torch.Tensor:
    """Run the mid block and add the BrushNet mid residual.

    2-D mid blocks (and motion mid blocks with ``motion_order="diffusers"``) run their stock forward and the
    residual is added to the output. ``motion_order="diffueraser"`` reproduces DiffuEraser's motion mid block,
    whose released weights were trained with it: ResNet0 -> transformer -> ResNet1 -> + residual -> temporal
    module -> ResNet1 *again* (stock diffusers runs transformer -> temporal -> ResNet1).
    """
    motion_modules = getattr(mid_block, "motion_modules", None)
    if not motion_modules:
        hidden = mid_block(hidden, context.temb, encoder_hidden_states=context.encoder_hidden_states)
        return hidden if residual is None else hidden + residual
    if motion_order == "diffusers":
        hidden = mid_block(
            hidden, context.temb, encoder_hidden_states=context.encoder_hidden_states, num_frames=context.num_frames
        )
        return hidden if residual is None else hidden + residual
    if motion_order != "diffueraser":
        raise ValueError(f"motion_order must be 'diffueraser' or 'diffusers', got {motion_order!r}")
    if len(mid_block.attentions) != 1:
        raise ValueError(f"DiffuEraser's motion mid block has one layer; this one has {len(mid_block.attentions)}")

    def quirk(hidden, temb, encoder_hidden_states, residual):
        hidden = mid_block.resnets[0](hidden, temb)
        hidden = mid_block.attentions[0](hidden, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        hidden = mid_block.resnets[1](hidden, temb)
        if residual is not None:
            hidden = hidden + residual
        hidden = motion_modules[0](hidden, num_frames=context.num_frames)
        return mid_block.resnets[1](hidden, temb)

    return _run_checkpointed(mid_block, quirk, hidden, context.temb, context.encoder_hidden_states, residual)


def run_up_blocks(
    up_blocks: Sequence[nn.Module],
    hidden: torch.Tensor,
    skips: Sequence[torch.Tensor],
    context: LayerContext,
    residuals: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run the up path.

    Args:
        hidden: mid-block output, ``(N, C_last, h / 2**k, w / 2**k)``.
        skips: the down path's skip states, the ``conv_in`` output first (the order diffusers keeps them in).
        residuals: ``up_residual_count(up_blocks)`` tensors added after each layer's spatial part and after each
            upsampler; ``None`` adds nothing.

    Returns:
        The final hidden state and the per-layer states (after each layer and after each upsampler, in order),
        which BrushNet turns into its up residuals.
    """
    pending = iter(residuals) if residuals is not None else None
    remaining = list(skips)
    # As in diffusers: when the latent size is not a multiple of the total upsampling factor, every upsampler is
    # told the exact size of the skip state it will be concatenated with.
    upsampling_factor = 2 ** sum(block.upsamplers is not None for block in up_blocks)
    forward_upsample_size = any(size % upsampling_factor != 0 for size in skips[0].shape[-2:])
    outputs: list[torch.Tensor] = []
    for block in up_blocks:
        block_skips = remaining[-len(block.resnets) :]
        del remaining[-len(block.resnets) :]
        for index in range(len(block.resnets)):
            hidden = torch.cat([hidden, block_skips.pop()], dim=1)
            residual = next(pending) if pending is not None else None
            hidden = _run_checkpointed(
                block,
                partial(_layer, block, index, num_frames=context.num_frames),
                hidden,
                context.temb,
                context.encoder_hidden_states,
                residual,
            )
            outputs.append(hidden)
        if block.upsamplers is not None:
            upsample_size = remaining[-1].shape[2:] if forward_upsample_size and remaining else None
            hidden = block.upsamplers[0](hidden, upsample_size)
            if pending is not None:
                hidden = hidden + next(pending)
            outputs.append(hidden)
    return hidden, outputs
