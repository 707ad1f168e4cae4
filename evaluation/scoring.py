"""What a benchmark scores: the metric names (:data:`METRICS`) and :class:`ScoringConfig`.

The config is apart from :class:`evaluation.scorer.Scorer`, which computes the metrics, so that validating an
evaluation or training config does not import the metric networks' libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from evaluation.hallucination import HallucinationConfig, PriorDifferenceConfig, model_identity
from evaluation.methods.base import content_hash
from vipo.config import Config, ExistingPath
from vipo.tracking import file_hash

__all__ = ["DEFAULT_METRICS", "EWARP_METRICS", "HALLUCINATION_METRICS", "LPIPS_METRICS", "METRICS",
           "OUTSIDE_METRICS", "MetricInfo", "ScoringConfig", "random_networks"]


@dataclass(frozen=True)
class MetricInfo:
    higher_is_better: bool
    description: str
    per_clip: bool = True
    """False for a distance between sets of clips (VFID): one value per method, no per-clip deltas."""


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo(True, "whole-frame PSNR (dB), as published tables report it"),
    "ssim": MetricInfo(True, "whole-frame SSIM (Gaussian 11, sigma 1.5)"),
    "ssim_win65": MetricInfo(True, "whole-frame SSIM as ProPainter and the group's table report it (skimage, "
                                   "uniform 65x65 window; NaN on frames under 65 px)"),
    "lpips": MetricInfo(False, "whole-frame LPIPS"),
    "psnr_hole": MetricInfo(True, "PSNR over hole pixels only (the group's strict_mask_pixel_psnr)"),
    "ssim_hole": MetricInfo(True, "SSIM map averaged over hole pixels"),
    "lpips_hole": MetricInfo(False, "LPIPS map averaged over hole pixels"),
    "psnr_bbox": MetricInfo(True, "PSNR over the hole's bounding box (the group's 'mask PSNR')"),
    "psnr_boundary_ring": MetricInfo(True, "PSNR over a ring of ring_px around the hole edge"),
    "ewarp_x1000": MetricInfo(False, "warping error x1000 (Lai et al. 2018; flow on the ground truth)"),
    "ewarp_hole_x1000": MetricInfo(False, "warping error x1000 over pixels whose flow touches the hole"),
    "outside_mean_abs": MetricInfo(False, "mean |composite - GT| outside the hole (0 when compositing is right)"),
    "outside_max_abs": MetricInfo(False, "max |composite - GT| outside the hole"),
    "tc_clip": MetricInfo(True, "CLIP temporal consistency: mean cosine similarity of consecutive frames' CLIP "
                                "image embeddings (1 = identical)"),
    "hallucination": MetricInfo(False, "hallucination rate: share of clips the hallucination scorer labels "
                                       "hallucinated (NaN for a method without a prior)"),
    "hallucination_score": MetricInfo(False, "hallucination scorer's per-clip score (prior_difference: share of "
                                             "hole pixels far from the propagated prior)"),
    "vfid": MetricInfo(False, "VFID: Fréchet distance of I3D features, GT vs composite, over all clips", False),
}
"""Every metric the scorer can compute: name → direction and meaning. Values are per clip (frame mean), except
VFID (one distance over the clips; the per-clip I3D features are stored with the scores)."""

DEFAULT_METRICS = [name for name in METRICS if name not in {"tc_clip", "hallucination", "hallucination_score",
                                                             "vfid"}]
"""What is scored unless the config says otherwise: the metrics that need no weights beyond LPIPS/RAFT."""

MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]
HALLUCINATION_METRICS = {"hallucination", "hallucination_score"}
LPIPS_METRICS = {"lpips", "lpips_hole"}
EWARP_METRICS = {"ewarp_x1000", "ewarp_hole_x1000"}
OUTSIDE_METRICS = {"outside_mean_abs", "outside_max_abs"}


class ScoringConfig(Config):
    """Which metrics and the weights they need. Missing LPIPS/RAFT weights are an error, never a silent switch."""

    metrics: list[MetricName] = Field(default_factory=lambda: list(DEFAULT_METRICS), min_length=1)
    lpips_net: Literal["alex", "vgg"] = "alex"
    lpips_backbone_weights: ExistingPath | None = None
    """torchvision ImageNet trunk (.pth); default: the torch hub cache (see ``evaluation.metrics.get_lpips``)."""
    allow_random_lpips_backbone: bool = False
    """Tests and demos only: a random LPIPS trunk when no ImageNet weights exist (the scores are then not LPIPS)."""
    flow: Literal["dis", "raft"] = "dis"
    """Ground-truth flow of the warping error: OpenCV DIS, or torchvision RAFT-large (the group's choice)."""
    raft_weights: ExistingPath | None = None
    ring_px: int = Field(default=3, ge=1)
    i3d_weights: ExistingPath | None = None
    """The RGB I3D state_dict of VFID (``i3d_rgb_imagenet.pt``); required for ``vfid``."""
    allow_random_i3d: bool = False
    """Tests and demos only: a random I3D when no weights are given (the distances are then not VFID)."""
    clip_weights: ExistingPath | None = None
    """A local transformers CLIP folder for ``tc_clip`` (e.g. openai/clip-vit-base-patch32)."""
    allow_random_clip: bool = False
    """Tests and demos only: a small random CLIP tower when no weights are given (the numbers are then not TC)."""
    vfid_batch: int = Field(default=8, ge=1)
    """Videos per I3D forward pass (the ground truth and the composite of a clip go together)."""
    hallucination: HallucinationConfig = PriorDifferenceConfig()

    def flow_note(self) -> str | None:
        """Which ground-truth flow the warping error used (its absolute values depend on it); None without it."""
        if not EWARP_METRICS & set(self.metrics):
            return None
        source = "OpenCV DIS (medium preset)" if self.flow == "dis" else "torchvision RAFT-large"
        return f"warping error: ground-truth flow from {source}"

    def identity(self) -> dict:
        """What determines the scores: the settings plus the content hashes of the LPIPS trunk and RAFT weights
        actually found (config path or torch hub cache; not the paths). Missing weights fail here, before any run."""
        # The metric modules import lpips, torchvision and transformers: only this check and the scorer need them.
        from evaluation.metrics.clip_consistency import get_clip_embedder
        from evaluation.metrics.lpips_metric import _find_backbone_checkpoint, get_lpips
        from evaluation.metrics.vfid import get_i3d
        from evaluation.metrics.warping import _raft_checkpoint

        data = self.model_dump(mode="json", exclude={"lpips_backbone_weights", "raft_weights", "i3d_weights",
                                                     "clip_weights", "hallucination", "vfid_batch"})
        data["metrics"] = sorted(self.metrics)
        wanted = set(self.metrics)
        if LPIPS_METRICS & wanted:
            trunk = _find_backbone_checkpoint(self.lpips_net, self.lpips_backbone_weights)
            if trunk is None and not self.allow_random_lpips_backbone:
                get_lpips(self.lpips_net)  # raises FileNotFoundError naming the file to provide
            data["lpips_trunk"] = file_hash(trunk) if trunk is not None else "random"
        if EWARP_METRICS & wanted and self.flow == "raft":
            data["raft"] = file_hash(_raft_checkpoint(self.raft_weights))
        if "vfid" in wanted:
            if self.i3d_weights is None:
                get_i3d(None, self.allow_random_i3d)  # raises FileNotFoundError unless random is allowed
            data["i3d"] = content_hash([self.i3d_weights]) if self.i3d_weights is not None else "random"
        if "tc_clip" in wanted:
            if self.clip_weights is None:
                get_clip_embedder(None, self.allow_random_clip)
            data["clip"] = content_hash([self.clip_weights]) if self.clip_weights is not None else "random"
        if HALLUCINATION_METRICS & wanted:
            data["hallucination"] = model_identity(self.hallucination)
        return data

    def needs_prior(self) -> bool:
        """Whether scoring compares with the method's prior (the hallucination scorers do)."""
        return bool(HALLUCINATION_METRICS & set(self.metrics))


def random_networks(identity: dict) -> dict[str, str]:
    """Metric name prefix → a sentence, for each metric network that was random in the scoring ``identity``
    (:meth:`ScoringConfig.identity`); reports and logs print them so random numbers are never taken for real."""
    notes = {}
    if identity.get("lpips_trunk") == "random":
        notes["lpips"] = f"LPIPS used a RANDOM {identity.get('lpips_net', '')} trunk: the lpips numbers are not LPIPS"
    if identity.get("i3d") == "random":
        notes["vfid"] = "VFID used a RANDOM I3D: the vfid numbers are not VFID"
    if identity.get("clip") == "random":
        notes["tc_clip"] = "TC used a RANDOM CLIP tower: the tc_clip numbers are not CLIP temporal consistency"
    return notes
