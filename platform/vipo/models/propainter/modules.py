"""Blocks shared by ProPainter's flow-completion network and generator."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

__all__ = ["ModulatedDeformAlign", "Upsample2xConv", "init_normal_"]


class Upsample2xConv(nn.Module):
    """Bilinear x2 upsampling (``align_corners=True``) then a 3x3 conv; ProPainter's "deconv"."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


class ModulatedDeformAlign(nn.Module):
    """Modulated deformable 3x3 conv (DCNv2) whose offsets and modulation come from a condition map.

    ``conv_offset`` (4 convs, LeakyReLU 0.1) maps the condition to 27 channels per deform group: 2x9 offsets as
    ``max_residue * tanh`` (plus the flow, when given, as BasicVSR++-style flow guidance) and 9 sigmoid modulation
    weights. The conv itself is ``torchvision.ops.deform_conv2d``; this module only holds its weight and bias.
    """

    def __init__(self, in_channels: int, out_channels: int, condition_channels: int, max_residue: float,
                 deform_groups: int = 16):
        super().__init__()
        self.max_residue = max_residue
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset = nn.Sequential(
            nn.Conv2d(condition_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(out_channels, 27 * deform_groups, 3, padding=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        # Zero offsets and 0.5 modulation at start: the module begins as a plain (flow-warped) conv.
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(self, x: Tensor, condition: Tensor, flow: Tensor | None = None) -> Tensor:
        """x (N,C_in,H,W), condition (N,C_cond,H,W), flow (N,2,H,W) as (dx, dy) or None -> (N,C_out,H,W)."""
        raw = self.conv_offset(condition)
        num_offsets = raw.shape[1] * 2 // 3  # 18 per group, then 9 modulation weights per group
        offset = self.max_residue * torch.tanh(raw[:, :num_offsets])
        modulation = raw[:, num_offsets:]
        if flow is not None:
            # deform_conv2d reads offsets as (dy, dx) per kernel tap and deform group.
            offset = offset + flow.flip(1).repeat(1, offset.shape[1] // 2, 1, 1)
        return deform_conv2d(x, offset, self.weight, self.bias, padding=1, mask=torch.sigmoid(modulation))


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """ProPainter's GAN-style init: every Conv*/Linear weight ~ N(0, std), biases zero."""
    for child in module.modules():
        if isinstance(child, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.normal_(child.weight, 0.0, std)
            if child.bias is not None:
                nn.init.zeros_(child.bias)
