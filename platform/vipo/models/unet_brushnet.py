"""The DiffuEraser main UNet: a stock diffusers UNet with BrushNet's dense residuals added inside its blocks.

Stage 1 uses ``UNet2DConditionModel`` and stage 2 ``UNetMotionModel`` (SD1.5 + AnimateDiff v1-5-2 motion
adapter); both keep their stock modules and state dicts, so released ``unet_main`` folders load unchanged. Only
the forward pass differs from diffusers', and it is written here by driving the stock blocks layer by layer
(``vipo.models.unet_layers``):

- the ``conv_in`` output is stored as the first skip, *then* the first down residual is added;
- after every (ResNet -> spatial transformer) layer, down and up, the next residual is added before the temporal
  module (motion UNet) and before the state is stored as a skip; after every down/upsampler as well;
- the mid residual follows the mid block (2-D), or sits inside DiffuEraser's motion mid block (see
  ``run_mid_block``).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel, UNetMotionModel
from torch import nn

from vipo.models.brushnet import BrushNetModel, BrushNetOutput
from vipo.models.unet_layers import (
    LayerContext,
    MotionMidBlockOrder,
    down_residual_count,
    per_frame_rows,
    per_frame_timesteps,
    run_down_blocks,
    run_mid_block,
    run_up_blocks,
    time_embedding,
    up_residual_count,
)

# UNet features DiffuEraser does not use; the forward below does not implement them.
_UNSUPPORTED_CONFIG = (
    "class_embed_type",
    "addition_embed_type",
    "encoder_hid_dim_type",
    "time_embedding_act_fn",
    "time_cond_proj_dim",
    "center_input_sample",
)


def _check_unet(unet: nn.Module, num_frames: int | None, num_samples: int) -> None:
    if not isinstance(unet, (UNet2DConditionModel, UNetMotionModel)):
        raise TypeError(f"expected a diffusers UNet2DConditionModel or UNetMotionModel, got {type(unet).__name__}")
    used = [key for key in _UNSUPPORTED_CONFIG if unet.config.get(key)]
    if used or unet.config.get("time_embedding_type", "positional") != "positional":
        raise ValueError(f"unsupported UNet config for DiffuEraser: {used or ['time_embedding_type']}")
    if isinstance(unet, UNetMotionModel) and num_frames is None:
        raise ValueError("a motion UNet needs num_frames (frames per clip)")
    if num_frames is not None and num_samples % num_frames != 0:
        raise ValueError(f"{num_samples} latents do not split into clips of num_frames={num_frames}")


def _check_residuals(unet: nn.Module, residuals: BrushNetOutput) -> None:
    expected = (down_residual_count(unet.down_blocks), up_residual_count(unet.up_blocks))
    got = (len(residuals.down_block_res_samples), len(residuals.up_block_res_samples))
    if got != expected:
        raise ValueError(f"BrushNet gave (down, up) = {got} residuals; this UNet takes {expected}")


def unet_forward_with_brushnet(
    unet: UNet2DConditionModel | UNetMotionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | float | int,
    encoder_hidden_states: torch.Tensor,
    brushnet_output: BrushNetOutput | None = None,
    *,
    num_frames: int | None = None,
    motion_mid_block: MotionMidBlockOrder = "diffueraser",
) -> torch.Tensor:
    """Predict noise with a stock diffusers UNet plus BrushNet residuals.

    Args:
        unet: ``UNet2DConditionModel`` (stage 1) or ``UNetMotionModel`` (stage 2), SD1.5 style.
        sample: noisy latents, ``(N, 4, h, w)`` with ``N = B * F``, frames of a clip contiguous.
        timestep: scalar, or 1-D with 1, B (per clip, repeated over its frames) or N entries.
        encoder_hidden_states: ``(N, L, D)`` or per clip ``(B, L, D)``.
        brushnet_output: residuals from ``BrushNetModel`` for the same N latents; ``None`` adds nothing.
        num_frames: frames per clip, required for a motion UNet (its temporal modules see clips of F frames).
        motion_mid_block: ``"diffueraser"`` (default; what released weights expect) or ``"diffusers"`` (stock
            order; with no residuals the output then equals ``unet(...)``).

    Returns:
        Noise prediction, ``(N, 4, h, w)``.
    """
    num_samples = sample.shape[0]
    _check_unet(unet, num_frames, num_samples)
    if brushnet_output is not None:
        _check_residuals(unet, brushnet_output)
    down_residuals = brushnet_output.down_block_res_samples if brushnet_output is not None else None
    # 1. time and text embeddings, one row per frame
    timesteps = per_frame_timesteps(timestep, num_samples, sample.device)
    context = LayerContext(
        temb=time_embedding(unet, timesteps, sample.dtype),
        encoder_hidden_states=per_frame_rows(encoder_hidden_states, num_samples),
        num_frames=num_frames if isinstance(unet, UNetMotionModel) else None,
    )
    # 2. conv_in; its skip is stored before the first residual is added
    hidden = unet.conv_in(sample)
    skips = [hidden]
    if down_residuals is not None:
        hidden = hidden + down_residuals[0]
    # 3. down, mid, up with residuals inside the blocks
    hidden, down_skips = run_down_blocks(
        unet.down_blocks, hidden, context, None if down_residuals is None else down_residuals[1:]
    )
    skips += down_skips
    hidden = run_mid_block(
        unet.mid_block,
        hidden,
        context,
        None if brushnet_output is None else brushnet_output.mid_block_res_sample,
        motion_order=motion_mid_block,
    )
    hidden, _ = run_up_blocks(
        unet.up_blocks,
        hidden,
        skips,
        context,
        None if brushnet_output is None else brushnet_output.up_block_res_samples,
    )
    # 4. output head
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)


class BrushNetUNet(nn.Module):
    """BrushNet and the main UNet as one module: the denoiser that pipelines run and trainers wrap.

    Attributes:
        unet: stock ``UNet2DConditionModel`` (stage 1) or ``UNetMotionModel`` (stage 2).
        brushnet: ``BrushNetModel``, run per frame.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel | UNetMotionModel,
        brushnet: BrushNetModel,
        motion_mid_block: MotionMidBlockOrder = "diffueraser",
    ):
        super().__init__()
        self.unet = unet
        self.brushnet = brushnet
        self.motion_mid_block = motion_mid_block

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        conditioning: torch.Tensor,
        num_frames: int | None = None,
        conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        """Noise prediction ``(N, 4, h, w)`` for noisy latents ``sample`` ``(N, 4, h, w)``.

        ``conditioning`` is ``(N, 5, h, w)``: masked-image latent (4) + mask (1 = known, 0 = hole); the other
        arguments are as in ``unet_forward_with_brushnet``.
        """
        residuals = self.brushnet(
            sample, timestep, encoder_hidden_states, conditioning, conditioning_scale=conditioning_scale
        )
        return unet_forward_with_brushnet(
            self.unet,
            sample,
            timestep,
            encoder_hidden_states,
            residuals,
            num_frames=num_frames,
            motion_mid_block=self.motion_mid_block,
        )
