"""ProPainter training losses: the flow-completion network's and the main network's.

Written from the ProPainter paper (Zhou et al., ICCV 2023) and the behaviour of its training code
(``sczhou/ProPainter``: ``model/modules/flow_comp_raft.py``, ``model/modules/flow_loss_utils.py``, ``core/loss.py``).
Conventions: flows (N,2,H,W) or (B,T,2,H,W) in pixels; holes 1 = hole; frames in [-1, 1].

Deliberate differences from upstream, each a fix:

* finite differences of the smoothness terms use only neighbours inside the frame (upstream zero-pads, so the last
  row/column compares the flow against 0);
* the census grey conversion uses the ITU-R 601 weights 0.299/0.587/0.114 (upstream has 0.110 for blue);
* the edge loss is a binary cross-entropy on the edge head's probabilities (upstream applies BCE-with-logits to
  outputs that are already sigmoided).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from vipo.config import Config
from vipo.models.propainter.propagation import flow_warp

__all__ = [
    "FLOW_COMPLETION_PRESETS",
    "INPAINTING_PRESETS",
    "FlowCompletionLossConfig",
    "InpaintingLossConfig",
    "census_loss",
    "charbonnier",
    "flow_completion_loss",
    "flow_edges",
    "balanced_edge_bce",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "hole_valid_l1",
    "second_order_smoothness",
    "first_order_smoothness",
    "warp_confidence",
]

Preset = Literal["seed", "upstream"]
_EPS = 1e-8

FLOW_COMPLETION_PRESETS = {
    "seed": dict(l1_weight=1.0, flow_weight=1.0, warp_weight=0.1, edge_weight=1.0),
    "upstream": dict(l1_weight=0.25, flow_weight=0.25, warp_weight=0.01, edge_weight=1.0),
}
INPAINTING_PRESETS = {
    "seed": dict(hole_weight=1.0, valid_weight=1.0, adversarial_weight=0.01, perceptual_weight=0.1,
                 style_weight=120.0, warp_weight=0.1, flow_weight=0.0),
    "upstream": dict(hole_weight=1.0, valid_weight=1.0, adversarial_weight=0.01, perceptual_weight=0.0,
                     style_weight=0.0, warp_weight=0.0, flow_weight=0.0),
}


def _preset_defaults(presets: dict[str, dict[str, float]], data):
    # A preset fills the weights the config leaves out; an explicit weight always wins.
    if isinstance(data, dict) and data.get("preset", "seed") in presets:
        data = {**presets[data.get("preset", "seed")], **data}
    return data


class FlowCompletionLossConfig(Config):
    """Weights of the flow-completion loss. ``preset`` fills the ones left out:

    * ``seed`` (the training guide): l1 1.0, flow (smoothness) 1.0, warp 0.1, edge 1.0;
    * ``upstream`` (``trainer_flow_w_edge.py``): 0.25 x (L1 + smoothness), warp 0.01, edge 1.0.
    """

    preset: Preset = "seed"
    l1_weight: float = Field(ge=0)
    """Hole L1 + valid L1 of the predicted flow, each normalised by its mask's mean."""
    flow_weight: float = Field(ge=0)
    """First- plus second-order Charbonnier smoothness of the composited flow inside the hole."""
    warp_weight: float = Field(ge=0)
    """Census (ternary) loss of frame t against frame t+1 warped by the composited flow, inside the hole."""
    edge_weight: float = Field(ge=0)
    """Class-balanced BCE of the edge head against Canny edges of the flow magnitude (raw + 5 x composited)."""
    charbonnier_alpha: float = Field(default=0.45, gt=0)
    charbonnier_epsilon: float = Field(default=1e-3, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data):
        return _preset_defaults(FLOW_COMPLETION_PRESETS, data)


class InpaintingLossConfig(Config):
    """Weights of the main network's loss. ``preset`` fills the ones left out:

    * ``seed``: hole/valid L1 1.0, adversarial 0.01, perceptual 0.1, style 120, warp 0.1, flow 0;
    * ``upstream`` (``train_propainter.json``): L1 1.0, adversarial 0.01, everything else 0.

    ``flow_weight`` scales the frozen flow-completion network's hole L1 against RAFT's flow: it is logged, and
    carries no gradient (that network is frozen), exactly as upstream's unused ``flow_weight``. ``warp_weight``
    scales the census loss between output frame t and output frame t+1 warped by the ground-truth forward flow.
    """

    preset: Preset = "seed"
    hole_weight: float = Field(ge=0)
    valid_weight: float = Field(ge=0)
    adversarial_weight: float = Field(ge=0)
    perceptual_weight: float = Field(ge=0)
    style_weight: float = Field(ge=0)
    warp_weight: float = Field(ge=0)
    flow_weight: float = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data):
        return _preset_defaults(INPAINTING_PRESETS, data)


# -- shared terms ------------------------------------------------------------------------------------------------
def hole_valid_l1(prediction: Tensor, target: Tensor, holes: Tensor) -> tuple[Tensor, Tensor]:
    """(hole L1, valid L1): mean |prediction - target| over hole (resp. known) elements, i.e. the masked L1 divided
    by the mask's mean as upstream. ``holes`` broadcasts over the channel dimension."""
    error = (prediction - target).abs()
    holes = holes.to(error.dtype).expand_as(error)
    hole = (error * holes).sum() / holes.sum().clamp_min(_EPS)
    valid = (error * (1 - holes)).sum() / (1 - holes).sum().clamp_min(_EPS)
    return hole, valid


def charbonnier(x: Tensor, alpha: float = 0.45, epsilon: float = 1e-3) -> Tensor:
    """Generalised Charbonnier penalty (x^2 + epsilon^2)^alpha, elementwise."""
    return (x.square() + epsilon**2).pow(alpha)


def _masked_mean(values: list[Tensor], weights: list[Tensor]) -> Tensor:
    # Mean over every difference of every kind, counting the out-of-frame ones (which weigh 0) as upstream does.
    total = sum((v * w).sum() for v, w in zip(values, weights))
    count = sum(v.numel() for v in values)
    return total / count


def first_order_smoothness(flow: Tensor, holes: Tensor, alpha: float = 0.45, epsilon: float = 1e-3) -> Tensor:
    """Charbonnier of the horizontal and vertical forward differences of ``flow`` (N,2,H,W), weighted by the hole
    (N,1,H,W) at the difference's origin; normalised by the number of differences."""
    dx = flow[..., :, :-1] - flow[..., :, 1:]
    dy = flow[..., :-1, :] - flow[..., 1:, :]
    values = [F.pad(charbonnier(d, alpha, epsilon), pad) for d, pad in ((dx, (0, 1)), (dy, (0, 0, 0, 1)))]
    weights = [F.pad(holes[..., :, :-1], (0, 1)), F.pad(holes[..., :-1, :], (0, 0, 0, 1))]
    return _masked_mean(values, weights)


def second_order_smoothness(flow: Tensor, holes: Tensor, alpha: float = 0.45, epsilon: float = 1e-3) -> Tensor:
    """Charbonnier of the second differences of ``flow`` along x, y and both diagonals, weighted by the hole at the
    centre pixel; differences needing a pixel outside the frame weigh 0."""
    centre = flow[..., 1:-1, 1:-1]
    neighbours = {
        "x": (flow[..., 1:-1, :-2], flow[..., 1:-1, 2:]),
        "y": (flow[..., :-2, 1:-1], flow[..., 2:, 1:-1]),
        "diagonal": (flow[..., :-2, :-2], flow[..., 2:, 2:]),
        "antidiagonal": (flow[..., :-2, 2:], flow[..., 2:, :-2]),
    }
    inner = F.pad(holes[..., 1:-1, 1:-1], (1, 1, 1, 1))
    values = [F.pad(charbonnier(a - 2 * centre + b, alpha, epsilon), (1, 1, 1, 1)) for a, b in neighbours.values()]
    return _masked_mean(values, [inner] * len(values))


def _census(frames: Tensor) -> Tensor:
    """Soft census transform of (N,3,H,W) frames in [-1,1]: 9 channels of t / sqrt(0.81 + t^2), t the grey-level
    (0-255) difference of each 3x3 neighbour to the centre (zero padding)."""
    grey = (frames + 1) * 127.5
    grey = (0.299 * grey[:, 0] + 0.587 * grey[:, 1] + 0.114 * grey[:, 2]).unsqueeze(1)
    kernel = torch.eye(9, dtype=grey.dtype, device=grey.device).view(9, 1, 3, 3)
    difference = F.conv2d(grey, kernel, padding=1) - grey
    return difference / torch.sqrt(0.81 + difference.square())


def warp_confidence(current: Tensor, following: Tensor, flow: Tensor) -> Tensor:
    """exp(-50 (sum_c |current - following warped by flow|)^2), (N,1,H,W): ~1 where ``flow`` explains the pixel,
    ~0 where it cannot (occlusions), so the census loss ignores those pixels."""
    return torch.exp(-50.0 * (current - flow_warp(following, flow)).abs().sum(1, keepdim=True).square())


def census_loss(current: Tensor, warped: Tensor, confidence: Tensor, holes: Tensor) -> Tensor:
    """Census (ternary) distance of ``current`` to ``warped`` (N,3,H,W) weighted by ``confidence`` inside
    ``holes`` (N,1,H,W), normalised by the hole's mean."""
    distance = (_census(current) - _census(warped)).square()
    hamming = (distance / (0.1 + distance)).sum(1, keepdim=True)
    return (hamming * confidence * holes).mean() / holes.mean().clamp_min(_EPS)


def flow_edges(flows: Tensor, sigma: float = 2.0, low: float = 0.1, high: float = 0.2) -> Tensor:
    """Edge targets: Canny edges (skimage, ``sigma``, thresholds ``low``/``high``) of each flow's magnitude divided
    by its maximum. (..., 2, H, W) -> (..., 1, H, W) float32 in {0, 1} on the flows' device."""
    from skimage.feature import canny

    magnitude = flows.detach().float().norm(dim=-3).cpu().numpy()
    flat = magnitude.reshape(-1, *magnitude.shape[-2:])
    edges = np.stack([canny(m / max(float(m.max()), _EPS), sigma=sigma, low_threshold=low, high_threshold=high)
                      for m in flat])
    return torch.from_numpy(edges.astype(np.float32)).view(*flows.shape[:-3], 1, *flows.shape[-2:]).to(flows.device)


def balanced_edge_bce(probabilities: Tensor, edges: Tensor) -> Tensor:
    """Class-balanced binary cross-entropy per sample (..., 1, H, W): edge pixels weigh the fraction of non-edge
    pixels and vice versa, so sparse edges are not drowned out; mean over every pixel."""
    p = probabilities.float().reshape(-1, 1, *probabilities.shape[-2:])
    target = edges.float().reshape(p.shape)
    positives = (target > 0.5).float()
    positive_share = positives.mean(dim=(1, 2, 3), keepdim=True)
    weight = (1 - positive_share) * positives + positive_share * (1 - positives)
    bce = -(target * torch.log(p.clamp_min(1e-12)) + (1 - target) * torch.log((1 - p).clamp_min(1e-12)))
    return (weight * bce).mean()


def flow_completion_loss(config: FlowCompletionLossConfig, predicted: tuple[Tensor, Tensor],
                         truth: tuple[Tensor, Tensor], holes: Tensor, frames: Tensor,
                         predicted_edges: tuple[Tensor, Tensor] | None = None,
                         true_edges: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The flow-completion loss over both directions.

    Args:
        predicted, truth: (forward, backward) flows, each (B,T-1,2,H,W); forward t -> t+1 pairs with frame t's hole,
            backward t+1 -> t with frame t+1's (as :meth:`RecurrentFlowCompleteNet.complete_flows`).
        holes: (B,T,1,H,W) frame holes, 1 = hole. frames: (B,T,3,H,W) ground truth in [-1, 1].
        predicted_edges, true_edges: (forward, backward) (B,T-1,1,H,W) edge probabilities / targets, or None.

    Returns ``(total, terms)``; ``terms`` holds every unweighted term, detached.
    """
    c = config
    direction_holes = (holes[:, :-1], holes[:, 1:])
    direction_frames = ((frames[:, :-1], frames[:, 1:]), (frames[:, 1:], frames[:, :-1]))
    terms = {name: frames.new_zeros(()) for name in ("hole_l1", "valid_l1", "smooth1", "smooth2", "warp", "edge")}
    for i, (pred, gt, hole) in enumerate(zip(predicted, truth, direction_holes)):
        composited = pred * hole + gt * (1 - hole)
        hole_term, valid_term = hole_valid_l1(pred, gt, hole)
        flat, flat_hole = composited.flatten(0, 1), hole.flatten(0, 1)
        current, following = (f.flatten(0, 1) for f in direction_frames[i])
        terms["hole_l1"] = terms["hole_l1"] + hole_term
        terms["valid_l1"] = terms["valid_l1"] + valid_term
        terms["smooth1"] = terms["smooth1"] + first_order_smoothness(
            flat, flat_hole, c.charbonnier_alpha, c.charbonnier_epsilon)
        terms["smooth2"] = terms["smooth2"] + second_order_smoothness(
            flat, flat_hole, c.charbonnier_alpha, c.charbonnier_epsilon)
        confidence = warp_confidence(current, following, gt.flatten(0, 1))
        terms["warp"] = terms["warp"] + census_loss(current, flow_warp(following, flat), confidence, flat_hole)
        if predicted_edges is not None and true_edges is not None:
            edge, target = predicted_edges[i], true_edges[i]
            composited_edge = edge * hole + target * (1 - hole)
            terms["edge"] = terms["edge"] + balanced_edge_bce(edge, target) + 5 * balanced_edge_bce(composited_edge,
                                                                                                      target)
    total = (c.l1_weight * (terms["hole_l1"] + terms["valid_l1"])
             + c.flow_weight * (terms["smooth1"] + terms["smooth2"])
             + c.warp_weight * terms["warp"] + c.edge_weight * terms["edge"])
    return total, {name: value.detach() for name, value in terms.items()}


# -- main network ------------------------------------------------------------------------------------------------
def hinge_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """(mean ReLU(1 - D(real)) + mean ReLU(1 + D(fake))) / 2."""
    return (F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()) / 2


def hinge_generator_loss(fake_scores: Tensor) -> Tensor:
    """-mean D(fake)."""
    return -fake_scores.mean()
