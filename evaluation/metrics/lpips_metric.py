"""Masked LPIPS: the ``lpips`` package's spatial distance map averaged over the scored pixels.

The package ships only the small linear heads (``lpips/weights/v0.1/{alex,vgg}.pth``); the AlexNet/VGG16 trunk
is torchvision's ImageNet model, which torchvision would download. Nothing may download here, so
:func:`get_lpips` builds the package's network with an empty trunk and fills it from a local torchvision
checkpoint: ``backbone_weights`` or the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where torchvision keeps
its downloads). Without one it refuses, unless the caller explicitly accepts a random trunk (tests, demos).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Literal

import lpips
import torch
from torch import Tensor
from torchvision import models

from evaluation.metrics.inputs import VideoLike, mean_over_scored_frames
from evaluation.metrics.pixel import DEFAULT_BOUNDARY_PX, prepare_inputs
from evaluation.metrics.region_masks import Region

__all__ = ["LpipsNet", "backbone_checkpoint_name", "get_lpips", "masked_lpips"]

LpipsNet = Literal["alex", "vgg"]

_TORCHVISION_WEIGHTS = {
    "alex": models.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": models.VGG16_Weights.IMAGENET1K_V1,
}


def backbone_checkpoint_name(net: LpipsNet) -> str:
    """The file name torchvision caches the ``net`` trunk under, e.g. ``alexnet-owt-7be5be79.pth``."""
    return Path(_TORCHVISION_WEIGHTS[net].url).name


def _find_backbone_checkpoint(net: LpipsNet, backbone_weights: str | Path | None) -> Path | None:
    if backbone_weights is not None:
        path = Path(backbone_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS backbone weights not found: {path} (a torchvision {net} state_dict .pth)")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / backbone_checkpoint_name(net)
    return cached if cached.is_file() else None


def _load_backbone(model: lpips.LPIPS, checkpoint: Path) -> None:
    """Copy torchvision ``features.<i>.*`` tensors into the package's trunk, whose slices keep the index ``<i>``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    trunk = {}
    for name in model.net.state_dict():
        _, index, param = name.split(".")  # "slice2.3.weight" -> features.3.weight
        source = f"features.{index}.{param}"
        if source not in state:
            raise ValueError(f"{checkpoint}: no {source!r}; expected a torchvision {model.pnet_type} state_dict")
        trunk[name] = state[source]
    model.net.load_state_dict(trunk)


@functools.cache
def get_lpips(
    net: LpipsNet = "alex", backbone_weights: str | Path | None = None, allow_random_backbone: bool = False
) -> lpips.LPIPS:
    """The LPIPS v0.1 network (packaged linear heads + ImageNet trunk from a local file), built once and cached.

    The trunk comes from ``backbone_weights`` or the torch hub cache. If neither has it, raises
    ``FileNotFoundError`` naming the file to provide — or, only with ``allow_random_backbone=True``, keeps a random
    trunk and warns that the scores are then not LPIPS. The network is in eval mode with frozen weights.
    """
    if net not in _TORCHVISION_WEIGHTS:
        raise ValueError(f"LPIPS net must be one of {sorted(_TORCHVISION_WEIGHTS)}, got {net!r}")
    checkpoint = _find_backbone_checkpoint(net, backbone_weights)
    if checkpoint is None and not allow_random_backbone:
        name = backbone_checkpoint_name(net)
        raise FileNotFoundError(
            f"LPIPS needs torchvision's ImageNet {net} weights offline: put {name} in "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} or pass backbone_weights=<path> "
            f"(it is {_TORCHVISION_WEIGHTS[net].url})"
        )
    with warnings.catch_warnings():
        # lpips still passes torchvision's deprecated ``pretrained=``; pnet_rand=True makes it False: no download.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, version="0.1", pnet_rand=True, spatial=True, verbose=False)
    if checkpoint is None:
        warnings.warn(
            f"LPIPS {net} trunk is RANDOM (allow_random_backbone=True, no ImageNet weights found): "
            "its scores are not the LPIPS metric",
            stacklevel=2,
        )
    else:
        _load_backbone(model, checkpoint)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def masked_lpips(
    pred: VideoLike,
    target: VideoLike,
    mask: VideoLike | None = None,
    net: lpips.LPIPS | None = None,
    *,
    region: Region = "hole",
    boundary_px: int = DEFAULT_BOUNDARY_PX,
    frame_chunk: int | None = None,
) -> Tensor:
    """Mean of the LPIPS distance map over the scored pixels of each frame, averaged over frames → ``(B,)``.

    pred, target in ``[0, 1]`` (see ``to_video_tensor``); mask and ``region`` as in ``masked_psnr``. ``net`` is an
    ``lpips.LPIPS`` (default :func:`get_lpips` ``()``: AlexNet); it is moved to the inputs' device, and its map is
    the package's ``spatial=True`` output (per-layer maps upsampled to the frame size and summed), whatever
    ``net.spatial`` was set to. On a full mask this is the package's score up to the bilinear upsampling (~1%).
    Lower is better. Frames with a non-empty region go through the network ``frame_chunk`` at a time (default 16
    on GPU; 2 on CPU, where bigger batches measured ~15% more CPU time per frame).
    """
    pred, target, scored = prepare_inputs(pred, target, mask, region, boundary_px)
    net = get_lpips() if net is None else net
    net.to(pred.device)
    frame_chunk = frame_chunk or (16 if pred.is_cuda else 2)
    b, f, c, h, w = pred.shape
    scored = scored.reshape(b * f, 1, h, w).float()
    pixels = scored.sum(dim=(1, 2, 3))
    frames = (pixels > 0).nonzero().squeeze(1)  # frames with nothing to score never reach the network
    pred, target = pred.reshape(b * f, c, h, w)[frames].float(), target.reshape(b * f, c, h, w)[frames].float()
    sums = torch.zeros_like(pixels)
    spatial = net.spatial
    net.spatial = True  # the package reads this flag in forward(); restored below so a caller's net is unchanged
    try:
        for start in range(0, len(frames), frame_chunk):
            chunk = slice(start, start + frame_chunk)
            distance = net(pred[chunk], target[chunk], normalize=True)  # (n, 1, H, W)
            sums[frames[chunk]] = (distance * scored[frames[chunk]]).sum(dim=(1, 2, 3))
    finally:
        net.spatial = spatial
    per_frame = (sums / pixels).reshape(b, f)
    return mean_over_scored_frames(per_frame, (pixels > 0).reshape(b, f))
