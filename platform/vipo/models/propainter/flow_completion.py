"""ProPainter's recurrent flow-completion network (RFC): fills optical flow inside video holes.

State_dict names and shapes equal ``sczhou/ProPainter:model/recurrent_flow_completion.py`` (5,079,555 parameters),
so the released ``recurrent_flow_completion.pth`` loads with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from vipo.models.propainter.modules import ModulatedDeformAlign, Upsample2xConv

__all__ = ["FlowCompletionOutput", "RecurrentFlowCompleteNet"]


@dataclass
class FlowCompletionOutput(BaseOutput):
    """flows: (B,T,2,H,W) completed flow (whole frame); edges: (B,T,1,H,W) in [0,1] or None."""

    flows: Tensor
    edges: Tensor | None = None


class P3DBlock(nn.Module):
    """Pseudo-3D conv: a spatial (1,3,3) conv + LeakyReLU, then a temporal (3,1,1) conv with dilation 2."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1)),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.conv2 = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(2, 0, 0), dilation=(2, 1, 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class EdgeDetection(nn.Module):
    """Training-only head predicting flow edges (supervised with Canny edges of the flow magnitude)."""

    def __init__(self, in_channels: int = 2, mid_channels: int = 16):
        super().__init__()
        self.projection = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1), nn.LeakyReLU(0.2, True))
        self.mid_layer_1 = nn.Sequential(nn.Conv2d(mid_channels, mid_channels, 3, padding=1), nn.LeakyReLU(0.2, True))
        self.mid_layer_2 = nn.Sequential(nn.Conv2d(mid_channels, mid_channels, 3, padding=1))
        self.out_layer = nn.Conv2d(mid_channels, 1, 1)

    def forward(self, flow: Tensor) -> Tensor:
        """(N,2,H,W) -> (N,1,H,W) edge probability in [0,1]."""
        projected = self.projection(flow)
        edge = nn.functional.leaky_relu(projected + self.mid_layer_2(self.mid_layer_1(projected)), 0.01)
        return torch.sigmoid(self.out_layer(edge))


class SecondOrderPropagation(nn.Module):
    """BasicVSR++-style bidirectional recurrence with second-order deformable alignment (no flow guidance).

    A backward pass (T-1 -> 0) runs first; the forward pass also sees the backward features. Each step aligns the two
    previous propagated features, then adds a residual refinement; a 1x1 conv fuses both passes.
    """

    directions = ("backward_", "forward_")

    def __init__(self, channels: int = 128):
        super().__init__()
        self.channels = channels
        self.deform_align = nn.ModuleDict({
            name: ModulatedDeformAlign(2 * channels, channels, 3 * channels, max_residue=5.0)
            for name in self.directions
        })
        self.backbone = nn.ModuleDict({
            name: nn.Sequential(
                nn.Conv2d((2 + i) * channels, channels, 3, padding=1),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
            for i, name in enumerate(self.directions)
        })
        self.fusion = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B,T,C,H,W) -> (B,T,C,H,W)."""
        t = x.shape[1]
        passes: dict[str, list[Tensor]] = {}
        for name in self.directions:
            order = range(t - 1, -1, -1) if name == "backward_" else range(t)
            history: list[Tensor] = []  # propagated features in visiting order
            propagated = x.new_zeros(x.shape[0], self.channels, *x.shape[-2:])
            for step, idx in enumerate(order):
                current = x[:, idx]
                if step > 0:
                    second = history[-2] if step > 1 else torch.zeros_like(propagated)
                    condition = torch.cat([propagated, current, second], dim=1)
                    propagated = self.deform_align[name](torch.cat([propagated, second], dim=1), condition)
                extra = [passes["backward_"][idx]] if name == "forward_" else []
                propagated = propagated + self.backbone[name](torch.cat([current, *extra, propagated], dim=1))
                history.append(propagated)
            passes[name] = history[::-1] if name == "backward_" else history
        fused = [self.fusion(torch.cat([b, f], dim=1)) for b, f in zip(passes["backward_"], passes["forward_"])]
        return torch.stack(fused, dim=1) + x


class RecurrentFlowCompleteNet(ModelMixin, ConfigMixin):
    """Completes masked optical flow (B,T,2,H,W) at full resolution; H and W must be multiples of 8.

    Encoder: replicate-padded stem to 1/2, P3D blocks to 1/4 and 1/8, three dilated convs; recurrent second-order
    propagation at 1/8; decoder back to full resolution with a skip from the 1/4 encoder stage.
    """

    @register_to_config
    def __init__(self):
        super().__init__()
        self.downsample = nn.Sequential(
            nn.Conv3d(3, 32, (1, 5, 5), stride=(1, 2, 2), padding=(0, 2, 2), padding_mode="replicate"),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.encoder1 = nn.Sequential(
            P3DBlock(32, 32, 1), nn.LeakyReLU(0.2, inplace=True), P3DBlock(32, 64, 2), nn.LeakyReLU(0.2, inplace=True)
        )
        self.encoder2 = nn.Sequential(
            P3DBlock(64, 64, 1), nn.LeakyReLU(0.2, inplace=True), P3DBlock(64, 128, 2), nn.LeakyReLU(0.2, inplace=True)
        )
        self.mid_dilation = nn.Sequential(*[
            layer for dilation in (3, 2, 1) for layer in (
                nn.Conv3d(128, 128, (1, 3, 3), padding=(0, dilation, dilation), dilation=(1, dilation, dilation)),
                nn.LeakyReLU(0.2, inplace=True),
            )
        ])
        self.feat_prop_module = SecondOrderPropagation(128)
        self.decoder2 = nn.Sequential(
            nn.Conv2d(128, 128, 3, padding=1), nn.LeakyReLU(0.2, True), Upsample2xConv(128, 64), nn.LeakyReLU(0.2, True)
        )
        self.decoder1 = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.LeakyReLU(0.2, True), Upsample2xConv(64, 32), nn.LeakyReLU(0.2, True)
        )
        self.upsample = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.LeakyReLU(0.2, True), Upsample2xConv(32, 2))
        self.edgeDetector = EdgeDetection()

    def forward(self, masked_flows: Tensor, holes: Tensor, predict_edges: bool = False) -> FlowCompletionOutput:
        """Complete one direction of flow.

        Args:
            masked_flows: (B,T,2,H,W) flow with hole pixels zeroed.
            holes: (B,T,1,H,W), 1 = hole.
            predict_edges: also run the training-only edge head.
        """
        b, t, _, h, w = masked_flows.shape
        x = self.downsample(torch.cat([masked_flows, holes], dim=2).transpose(1, 2))  # (B,32,T,H/2,W/2)
        skip = self.encoder1(x)  # (B,64,T,H/4,W/4)
        features = self.mid_dilation(self.encoder2(skip)).transpose(1, 2)  # (B,T,128,H/8,W/8)
        features = self.feat_prop_module(features).flatten(0, 1)
        decoded = self.decoder2(features) + skip.transpose(1, 2).flatten(0, 1)
        flows = self.upsample(self.decoder1(decoded))  # (B*T,2,H,W)
        edges = self.edgeDetector(flows).view(b, t, 1, h, w) if predict_edges else None
        return FlowCompletionOutput(flows=flows.view(b, t, 2, h, w), edges=edges)

    def complete_flows(self, flows_forward: Tensor, flows_backward: Tensor, holes: Tensor) -> tuple[Tensor, Tensor]:
        """Inference: complete both directions and keep the known flow outside the holes.

        Args:
            flows_forward, flows_backward: (B,T-1,2,H,W) as from :class:`BidirectionalRAFT`.
            holes: (B,T,1,H,W) frame holes, 1 = hole. Forward flow t -> t+1 uses frame t's hole, backward flow
                t+1 -> t uses frame t+1's.

        Returns:
            ``(flows_forward, flows_backward)`` completed, same shapes. The backward sequence runs through the same
            weights reversed in time.
        """
        holes_forward, holes_backward = holes[:, :-1], holes[:, 1:]
        predicted_forward = self(flows_forward * (1 - holes_forward), holes_forward).flows
        reversed_backward = (flows_backward * (1 - holes_backward)).flip(1)
        predicted_backward = self(reversed_backward, holes_backward.flip(1)).flows.flip(1)
        return (predicted_forward * holes_forward + flows_forward * (1 - holes_forward),
                predicted_backward * holes_backward + flows_backward * (1 - holes_backward))
