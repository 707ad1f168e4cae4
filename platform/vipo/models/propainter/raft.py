"""Optical flow for ProPainter: torchvision's ``raft_large`` fed the way ProPainter feeds its RAFT.

ProPainter ships ``raft-things.pth``, the original RAFT ("things") weights saved from ``DataParallel(RAFT)``. The
network is the same as torchvision's ``raft_large`` (5,257,536 parameters); only the state_dict names differ.
:func:`convert_raft_state_dict` renames an upstream state_dict to torchvision's, :func:`raft_state_dict_to_upstream`
goes the other way (used to write random-weight files in the published format).

Input scaling: ProPainter's RAFT has its ``/255`` normalisation removed and is fed frames already in [-1, 1], which is
also what torchvision's ``raft_large`` expects, so frames in [-1, 1] go in unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.optical_flow import RAFT, raft_large

__all__ = ["BidirectionalRAFT", "convert_raft_state_dict", "raft_state_dict_to_upstream"]

# torchvision's correlation pyramid (4 levels) needs feature maps of at least 16x16, i.e. frames of 128x128.
RAFT_MIN_SIZE = 128


def _rename_rules() -> list[tuple[str, str]]:
    """(upstream prefix, torchvision prefix) pairs; ``{n}``/``{m}`` stand for a layer/block number."""
    rules: list[tuple[str, str]] = []
    for upstream, tv in (("fnet", "feature_encoder"), ("cnet", "context_encoder")):
        rules += [
            (f"{upstream}.conv1.", f"{tv}.convnormrelu.0."),
            (f"{upstream}.norm1.", f"{tv}.convnormrelu.1."),
            (f"{upstream}.conv2.", f"{tv}.conv."),
            (f"{upstream}.layer{{n}}.{{m}}.conv1.", f"{tv}.layer{{n}}.{{m}}.convnormrelu1.0."),
            (f"{upstream}.layer{{n}}.{{m}}.norm1.", f"{tv}.layer{{n}}.{{m}}.convnormrelu1.1."),
            (f"{upstream}.layer{{n}}.{{m}}.conv2.", f"{tv}.layer{{n}}.{{m}}.convnormrelu2.0."),
            (f"{upstream}.layer{{n}}.{{m}}.norm2.", f"{tv}.layer{{n}}.{{m}}.convnormrelu2.1."),
            (f"{upstream}.layer{{n}}.{{m}}.downsample.", f"{tv}.layer{{n}}.{{m}}.downsample."),
        ]
    rules += [
        ("update_block.encoder.convc{n}.", "update_block.motion_encoder.convcorr{n}.0."),
        ("update_block.encoder.convf{n}.", "update_block.motion_encoder.convflow{n}.0."),
        ("update_block.encoder.conv.", "update_block.motion_encoder.conv.0."),
        ("update_block.gru.convz{n}.", "update_block.recurrent_block.convgru{n}.convz."),
        ("update_block.gru.convr{n}.", "update_block.recurrent_block.convgru{n}.convr."),
        ("update_block.gru.convq{n}.", "update_block.recurrent_block.convgru{n}.convq."),
        ("update_block.flow_head.", "update_block.flow_head."),
        ("update_block.mask.0.", "mask_predictor.convrelu.0."),
        ("update_block.mask.2.", "mask_predictor.conv."),
    ]
    return rules


def _prefix_pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{m\}", r"(?P<m>\d+)")
    return re.compile(escaped)


_RULES = [(_prefix_pattern(up), up, _prefix_pattern(tv), tv) for up, tv in _rename_rules()]
# In the upstream BatchNorm context encoder, ``layerN.0.norm3`` is the same module as ``layerN.0.downsample.1``, so
# its state_dict holds those tensors twice; torchvision has only ``downsample.1``.
_UPSTREAM_ALIAS = re.compile(r"cnet\.layer(?P<n>\d+)\.0\.norm3\.(?P<rest>.+)")
_TV_ALIASED = re.compile(r"context_encoder\.layer(?P<n>\d+)\.0\.downsample\.1\.(?P<rest>.+)")


def _rename(key: str, to_torchvision: bool) -> str:
    for up_pattern, up_template, tv_pattern, tv_template in _RULES:
        pattern, template = (up_pattern, tv_template) if to_torchvision else (tv_pattern, up_template)
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict()) + key[match.end():]
    side = "ProPainter RAFT" if to_torchvision else "torchvision raft_large"
    raise KeyError(f"unexpected {side} state_dict key {key!r}: is this a RAFT-large (raft-things) checkpoint?")


def convert_raft_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename ProPainter's ``raft-things.pth`` state_dict to torchvision ``raft_large`` names.

    Accepts keys with or without the ``module.`` prefix of the released file; drops the 10 ``cnet.layer{2,3}.0.norm3``
    aliases. Raises ``KeyError`` naming the first key that is not RAFT-large's.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if _UPSTREAM_ALIAS.fullmatch(key):
            continue
        converted[_rename(key, to_torchvision=True)] = value
    return converted


def raft_state_dict_to_upstream(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`convert_raft_state_dict`: torchvision names to the released file's (``module.``-prefixed,
    aliases included), so the result loads like the published ``raft-things.pth``."""
    upstream: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        upstream["module." + _rename(key, to_torchvision=False)] = value
        alias = _TV_ALIASED.fullmatch(key)
        if alias:
            upstream[f"module.cnet.layer{alias['n']}.0.norm3.{alias['rest']}"] = value
    return upstream


class BidirectionalRAFT(nn.Module):
    """RAFT-large flow over consecutive frame pairs, in both directions, always in fp32.

    Frames smaller than 128 px on a side (torchvision's minimum) are edge-padded for RAFT and the flow cropped back.
    With the released weights::

        raft = raft_large(weights=None)
        raft.load_state_dict(convert_raft_state_dict(torch.load("raft-things.pth", weights_only=True)))
        flows_forward, flows_backward = BidirectionalRAFT(raft)(frames)
    """

    def __init__(self, raft: RAFT | None = None, iterations: int = 20, pairs_per_batch: int = 11):
        super().__init__()
        self.raft = raft if raft is not None else raft_large(weights=None)
        self.raft.eval().requires_grad_(False)
        self.iterations = iterations
        self.pairs_per_batch = pairs_per_batch

    def train(self, mode: bool = True) -> "BidirectionalRAFT":
        # RAFT is frozen everywhere ProPainter uses it; its BatchNorm must keep the released running statistics.
        super().train(mode)
        self.raft.eval()
        return self

    @torch.no_grad()
    def pair_flows(self, sources: Tensor, targets: Tensor, pairs_per_batch: int | None = None) -> Tensor:
        """Flow from each source to its target: (N,3,H,W) x2 in [-1,1] -> (N,2,H,W) in pixels (dx, dy), fp32.

        ``source(p) ~= target(p + flow(p))``. Pairs run in batches of ``pairs_per_batch`` (default: the
        constructor's) to bound memory; batching does not change the result.
        """
        batch = pairs_per_batch or self.pairs_per_batch
        height, width = sources.shape[-2:]
        pad_h, pad_w = max(0, RAFT_MIN_SIZE - height), max(0, RAFT_MIN_SIZE - width)
        flows = []
        for start in range(0, sources.shape[0], batch):
            pair = torch.cat([sources[start:start + batch], targets[start:start + batch]]).float()
            if pad_h or pad_w:
                pair = F.pad(pair, (0, pad_w, 0, pad_h), mode="replicate")
            first, second = pair.chunk(2)
            flow = self.raft(first, second, num_flow_updates=self.iterations)[-1]
            flows.append(flow[..., :height, :width])
        return torch.cat(flows)

    def forward(self, frames: Tensor, pairs_per_batch: int | None = None) -> tuple[Tensor, Tensor]:
        """Frames (B,T,3,H,W) in [-1,1], H and W multiples of 8 -> (flows_forward, flows_backward), each
        (B,T-1,2,H,W) fp32: forward is t -> t+1, backward is t+1 -> t."""
        b, t, c, h, w = frames.shape
        earlier = frames[:, :-1].reshape(-1, c, h, w)
        later = frames[:, 1:].reshape(-1, c, h, w)
        flows = self.pair_flows(torch.cat([earlier, later]), torch.cat([later, earlier]), pairs_per_batch)
        flows_forward, flows_backward = flows.view(2, b, t - 1, 2, h, w).unbind(0)
        return flows_forward, flows_backward
