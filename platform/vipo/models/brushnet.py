"""BrushNet, the DiffuEraser variant (a dense-residual inpainting branch beside the main UNet).

It is a full SD1.5 UNet copy -- encoder, mid block and decoder, cross-attention kept -- without ``conv_in``,
``conv_norm_out`` and ``conv_out``. A 9-channel ``conv_in_condition`` reads ``cat(noisy latent, conditioning)``
and 28 zero-initialised 1x1 convs (for SD1.5: 12 down, 1 mid, 15 up) turn the state after every layer into a
residual that ``vipo.models.unet_brushnet`` adds inside the main UNet. The state-dict layout matches the released
``diffuEraser/brushnet`` checkpoint (its name→shape manifest is a test fixture).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from vipo.models.unet_layers import (
    LayerContext,
    per_frame_rows,
    per_frame_timesteps,
    run_down_blocks,
    run_mid_block,
    run_up_blocks,
    time_embedding,
)


@dataclass
class BrushNetOutput(BaseOutput):
    """Residuals for the main UNet, already multiplied by ``conditioning_scale``.

    Attributes:
        down_block_res_samples: one per ``conv_in`` output, down layer and downsampler (SD1.5: 12), ``(N, C, h', w')``.
        mid_block_res_sample: ``(N, C_last, h / 8, w / 8)`` for SD1.5.
        up_block_res_samples: one per up layer and upsampler (SD1.5: 15), ``(N, C, h', w')``.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor
    up_block_res_samples: tuple[torch.Tensor, ...]


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class BrushNetModel(ModelMixin, ConfigMixin):
    """DiffuEraser's BrushNet (``libs/brushnet_CA.py`` upstream), built from stock diffusers UNet blocks.

    The constructor arguments are the SD1.5 ``UNet2DConditionModel`` arguments that shape the blocks, plus
    ``conditioning_channels`` (masked-image latent + mask = 5). The released ``config.json`` also lists keys of
    unused upstream features (class/addition embeddings, guess-mode pooling, a ControlNet-style conditioning
    embedding that has no weights); diffusers reports them as ignored when loading.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 5,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: int = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
    ):
        super().__init__()
        # Let diffusers build the time embedding and the blocks exactly as it does for the main UNet (same
        # module names, so `from_unet` copies them one to one), then drop the UNet's input/output convs.
        unet = UNet2DConditionModel(
            in_channels=in_channels,
            out_channels=in_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            up_block_types=up_block_types,
            only_cross_attention=only_cross_attention,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
        )
        self.conv_in_condition = nn.Conv2d(
            in_channels + conditioning_channels, block_out_channels[0], kernel_size=3, padding=1
        )
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.up_blocks = unet.up_blocks

        down_channels = [block_out_channels[0]]
        for index, channels in enumerate(block_out_channels):
            is_last = index == len(block_out_channels) - 1
            down_channels += [channels] * (layers_per_block + (not is_last))
        up_channels = []
        for index, channels in enumerate(reversed(block_out_channels)):
            is_last = index == len(block_out_channels) - 1
            up_channels += [channels] * (layers_per_block + 1 + (not is_last))
        self.brushnet_down_blocks = nn.ModuleList(_zero_conv(channels) for channels in down_channels)
        self.brushnet_mid_block = _zero_conv(block_out_channels[-1])
        self.brushnet_up_blocks = nn.ModuleList(_zero_conv(channels) for channels in up_channels)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, conditioning_channels: int = 5) -> BrushNetModel:
        """Initialise from an SD1.5-style UNet, as DiffuEraser does when no BrushNet checkpoint is given.

        The time embedding and all down/mid/up blocks are copied. ``conv_in_condition`` gets the UNet's
        ``conv_in`` kernel on the noisy-latent channels and again on the masked-image-latent channels, zero on the
        remaining (mask) channel(s); the bias is copied. The 28 output convs stay zero, so the initial residuals
        are exactly zero. The result is on the UNet's device, in float32 (a trainable model's precision).
        """
        in_channels = unet.config.in_channels
        if conditioning_channels < in_channels:
            raise ValueError(
                f"conditioning_channels ({conditioning_channels}) must hold a {in_channels}-channel masked-image latent"
            )
        shape_keys = set(inspect.signature(cls.__init__).parameters) - {"self", "conditioning_channels"}
        brushnet = cls(
            conditioning_channels=conditioning_channels,
            **{key: unet.config[key] for key in shape_keys if key in unet.config},
        )
        for name in ("time_embedding", "down_blocks", "mid_block", "up_blocks"):
            getattr(brushnet, name).load_state_dict(getattr(unet, name).state_dict())
        with torch.no_grad():
            kernel = brushnet.conv_in_condition.weight
            kernel.zero_()
            kernel[:, :in_channels] = unet.conv_in.weight
            kernel[:, in_channels : 2 * in_channels] = unet.conv_in.weight
            brushnet.conv_in_condition.bias.copy_(unet.conv_in.bias)
        return brushnet.to(device=unet.device)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        conditioning: torch.Tensor,
        conditioning_scale: float = 1.0,
        return_dict: bool = True,
    ) -> BrushNetOutput | tuple:
        """Compute the main UNet's residuals. BrushNet is 2-D: every frame is an independent sample.

        Args:
            sample: noisy latents, ``(N, 4, h, w)``.
            timestep: scalar, or 1-D with 1, B (per clip, repeated over its frames) or N entries.
            encoder_hidden_states: text embeddings, ``(N, L, D)`` or per clip ``(B, L, D)``.
            conditioning: ``(N, 5, h, w)`` = masked-image latent (4, VAE-scaled) + mask (1 = known, 0 = hole).
            conditioning_scale: factor on every residual (DiffuEraser always uses 1.0).

        Returns:
            ``BrushNetOutput`` (or its fields as a tuple when ``return_dict=False``).
        """
        num_samples = sample.shape[0]
        # 1. time and text embeddings, one row per frame
        timesteps = per_frame_timesteps(timestep, num_samples, sample.device)
        context = LayerContext(
            temb=time_embedding(self, timesteps, sample.dtype),
            encoder_hidden_states=per_frame_rows(encoder_hidden_states, num_samples),
            num_frames=None,
        )
        # 2. 9-channel input: noisy latent in front of the conditioning
        hidden = self.conv_in_condition(torch.cat([sample, conditioning], dim=1))
        # 3. encoder, mid block and decoder of the UNet copy; BrushNet's own skips carry no residuals
        down_states = [hidden]
        hidden, skips = run_down_blocks(self.down_blocks, hidden, context)
        down_states += skips
        mid_state = run_mid_block(self.mid_block, hidden, context)
        _, up_states = run_up_blocks(self.up_blocks, mid_state, down_states, context)
        # 4. zero convs -> residuals
        down = tuple(conv(state) * conditioning_scale for conv, state in zip(self.brushnet_down_blocks, down_states))
        mid = self.brushnet_mid_block(mid_state) * conditioning_scale
        up = tuple(conv(state) * conditioning_scale for conv, state in zip(self.brushnet_up_blocks, up_states))
        if not return_dict:
            return down, mid, up
        return BrushNetOutput(down_block_res_samples=down, mid_block_res_sample=mid, up_block_res_samples=up)
