"""ProPainter's inpainting generator: encoder, flow-guided feature propagation, sparse transformer, decoder.

State_dict names and shapes equal ``sczhou/ProPainter:model/propainter.py::InpaintGenerator`` (39,429,667
parameters and 8 ``valid_ind_rolled`` buffers), so the released ``ProPainter.pth`` loads with ``strict=True``. The
image-propagation step that precedes it has no parameters and lives in
:func:`vipo.models.propainter.propagation.propagate_images`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from vipo.models.propainter.modules import ModulatedDeformAlign, Upsample2xConv, init_normal_
from vipo.models.propainter.propagation import flow_consistency, flow_warp, sweep
from vipo.models.propainter.sparse_transformer import PATCH, SoftComposition, SoftSplit, SparseTransformer

__all__ = ["InpaintGenerator"]


class Encoder(nn.Module):
    """5-channel frames (RGB, hole, updated hole) -> 128 channels at 1/4 resolution.

    After four plain convs, the 256-channel map x0 is concatenated group-wise to the input of each of the last four
    (grouped) convs.
    """

    groups = (2, 4, 8, 1)  # of the convs at layers 10, 12, 14, 16

    def __init__(self):
        super().__init__()
        convs = [
            nn.Conv2d(5, 64, 3, stride=2, padding=1),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.Conv2d(128, 256, 3, padding=1),
            nn.Conv2d(256, 384, 3, padding=1),
            nn.Conv2d(640, 512, 3, padding=1, groups=2),
            nn.Conv2d(768, 384, 3, padding=1, groups=4),
            nn.Conv2d(640, 256, 3, padding=1, groups=8),
            nn.Conv2d(512, 128, 3, padding=1),
        ]
        self.layers = nn.ModuleList(layer for conv in convs for layer in (conv, nn.LeakyReLU(0.2, inplace=True)))

    def forward(self, x: Tensor) -> Tensor:
        """(N,5,H,W) -> (N,128,H/4,W/4)."""
        for layer in self.layers[:8]:
            x = layer(x)
        x0 = x
        n, _, h, w = x0.shape
        x = self.layers[9](self.layers[8](x0))
        for i, groups in enumerate(self.groups):
            grouped = torch.cat([x0.view(n, groups, -1, h, w), x.view(n, groups, -1, h, w)], dim=2)
            x = self.layers[11 + 2 * i](self.layers[10 + 2 * i](grouped.view(n, -1, h, w)))
        return x


class FeaturePropagation(nn.Module):
    """Flow-guided bidirectional feature propagation at 1/4 resolution (first-order recurrence).

    Each step warps the carried feature with the flow (bilinear), then a :class:`ModulatedDeformAlign` whose offsets
    are residuals around that flow aligns it; its condition is [current, warped, flow, flow validity, holes (2)].
    A residual refine follows. The forward pass runs over the backward pass's output; a fuse conv combines both.
    """

    directions = ("backward_1", "forward_1")

    def __init__(self, channels: int = 128):
        super().__init__()
        self.deform_align = nn.ModuleDict({
            name: ModulatedDeformAlign(channels, channels, 2 * channels + 5, max_residue=3.0)
            for name in self.directions
        })
        self.backbone = nn.ModuleDict({
            name: nn.Sequential(
                nn.Conv2d(2 * channels + 2, channels, 3, padding=1),
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(channels, channels, 3, padding=1),
            )
            for name in self.directions
        })
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * channels + 2, channels, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def _one_way(self, name: str, features: Tensor, holes: Tensor, flows_pull: Tensor,
                 flows_check: Tensor) -> Tensor:
        outputs: list[Tensor | None] = [None] * features.shape[1]
        propagated = None
        for t, k in sweep(features.shape[1], "backward" if name == "backward_1" else "forward"):
            current, hole = features[:, t], holes[:, t]
            if k is None:
                propagated = current
            else:
                flow = flows_pull[:, k]
                valid = flow_consistency(flow, flows_check[:, k])
                warped = flow_warp(propagated, flow)
                condition = torch.cat([current, warped, flow, valid, hole], dim=1)
                propagated = self.deform_align[name](propagated, condition, flow)
            propagated = propagated + self.backbone[name](torch.cat([current, propagated, hole], dim=1))
            outputs[t] = propagated
        return torch.stack(outputs, dim=1)

    def forward(self, features: Tensor, flows_forward: Tensor, flows_backward: Tensor, holes: Tensor) -> Tensor:
        """features (B,T,C,h,w); flows (B,T-1,2,h,w) at this resolution; holes (B,T,2,h,w) [original, updated].
        Returns (B,T,C,h,w)."""
        backward = self._one_way("backward_1", features, holes, flows_forward, flows_backward)
        forward = self._one_way("forward_1", backward, holes, flows_backward, flows_forward)
        fused = self.fuse(torch.cat([backward, forward, holes], dim=2).flatten(0, 1))
        return fused.view_as(features) + features


class InpaintGenerator(ModelMixin, ConfigMixin):
    """ProPainter generator: (image-propagated) frames + completed flows + holes -> inpainted frames in [-1,1].

    Frames are ordered local frames first (a contiguous run, with flows between them), then reference frames.
    """

    @register_to_config
    def __init__(self):
        super().__init__()
        channels, hidden = 128, 512
        self.encoder = Encoder()
        self.decoder = nn.Sequential(
            Upsample2xConv(channels, 128),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(128, 64, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            Upsample2xConv(64, 64),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 3, 3, padding=1),
        )
        self.ss = SoftSplit(channels, hidden)
        self.sc = SoftComposition(channels, hidden)
        self.feat_prop_module = FeaturePropagation(channels)
        self.transformers = SparseTransformer(depth=8, dim=hidden, num_heads=4, window=(5, 9), pool=4)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self)
        for module in self.modules():
            if isinstance(module, ModulatedDeformAlign):
                module.reset_parameters()
        for layer in self.transformers.transformer:
            # The pooling conv starts as a plain 4x4 average.
            pool = layer.attention.pool_layer
            nn.init.constant_(pool.weight, 1.0 / pool.weight[0].numel())
            nn.init.zeros_(pool.bias)

    def forward(self, frames: Tensor, flows_forward: Tensor, flows_backward: Tensor, holes: Tensor,
                holes_updated: Tensor, num_local_frames: int, t_dilation: int = 2) -> Tensor:
        """Inpaint.

        Args:
            frames: (B,T,3,H,W) in [-1,1], local frames first; H and W multiples of 8.
            flows_forward, flows_backward: (B,L-1,2,H,W) completed flows between the L local frames.
            holes: (B,T,1,H,W) original holes, 1 = hole.
            holes_updated: (B,T,1,H,W) holes left after image propagation.
            num_local_frames: L.
            t_dilation: temporal stride of the transformer's keys.

        Returns:
            (B,L,3,H,W) in [-1,1] in eval mode; (B,T,3,H,W) in training mode, where also the reference frames are
            decoded and every frame's holes select the transformer's masked windows (as upstream trains).
        """
        b, t, _, height, width = frames.shape
        num_local = num_local_frames

        # 1. Encode every frame at 1/4 resolution.
        features = self.encoder(torch.cat([frames, holes, holes_updated], dim=2).flatten(0, 1))
        c, h, w = features.shape[1:]
        features = features.view(b, t, c, h, w)

        # 2. Bring flows and holes to 1/4 resolution.
        flows_small = [
            F.interpolate(flow.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False).view(
                b, num_local - 1, 2, h, w) / 4.0
            for flow in (flows_forward, flows_backward)
        ]
        holes_small = F.interpolate(holes.flatten(0, 1), size=(h, w), mode="nearest").view(b, t, 1, h, w)
        updated_small = F.interpolate(holes_updated[:, :num_local].flatten(0, 1), size=(h, w), mode="nearest")
        prop_holes = torch.cat([holes_small[:, :num_local], updated_small.view(b, num_local, 1, h, w)], dim=2)
        guiding = holes_small if self.training else holes_small[:, :num_local]
        token_holes = F.max_pool2d(guiding.flatten(0, 1), **PATCH)
        token_holes = token_holes.view(b, guiding.shape[1], *token_holes.shape[-2:], 1)

        # 3. Propagate features among the local frames along the flows.
        local = self.feat_prop_module(features[:, :num_local], *flows_small, prop_holes)
        features = torch.cat([local, features[:, num_local:]], dim=1)

        # 4. Sparse transformer over soft-split tokens, composed back as a residual.
        tokens = self.transformers(self.ss(features.flatten(0, 1), b), (h, w), token_holes, t_dilation)
        features = features + self.sc(tokens, (h, w)).view(b, t, c, h, w)

        # 5. Decode.
        decoded = features if self.training else features[:, :num_local]
        output = torch.tanh(self.decoder(decoded.flatten(0, 1)))
        return output.view(b, -1, 3, height, width)
