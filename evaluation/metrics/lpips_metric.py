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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lpips
import torch
from torch import Tensor
from torchvision import models

from evaluation.metrics.inputs import VideoLike, mean_over_scored_frames, true_span
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


@torch.inference_mode()
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
    on GPU; 2 on CPU), channels-last, each chunk only over the box its scored pixels and the pixels where pred and
    target differ need (plus the trunk's receptive field), each layer only where later layers and its own map
    read it: the same values as the whole frame, see :func:`_scored_map_sums`.
    """
    pred, target, scored = prepare_inputs(pred, target, mask, region, boundary_px)
    net = get_lpips() if net is None else net
    net.to(pred.device)
    frame_chunk = frame_chunk or (16 if pred.is_cuda else 2)
    b, f, c, h, w = pred.shape
    scored = scored.reshape(b * f, h, w).float()
    pixels = scored.sum(dim=(1, 2))
    frames = (pixels > 0).nonzero().squeeze(1)  # frames with nothing to score never reach the network
    pred, target = pred.reshape(b * f, c, h, w).float(), target.reshape(b * f, c, h, w).float()
    if len(frames) < b * f:  # copies whole frames: only when some are left out
        pred, target = pred[frames], target[frames]
    differs = (pred != target).any(dim=1)
    geometry = _trunk_geometry(net)
    sums = torch.zeros_like(pixels)
    for start in range(0, len(frames), frame_chunk):
        chunk = slice(start, start + frame_chunk)
        sums[frames[chunk]] = _scored_map_sums(net, geometry, pred[chunk], target[chunk], scored[frames[chunk]],
                                               differs[chunk])
    per_frame = (sums / pixels).reshape(b, f)
    return mean_over_scored_frames(per_frame, (pixels > 0).reshape(b, f))


@dataclass(frozen=True)
class _LayerGeometry:
    """Where feature ``i`` of a trunk output reads the input: ``[start + i·jump, start + i·jump + field)``."""

    jump: int
    start: int
    field: int
    layers: tuple[tuple[int, int, int], ...]
    """(kernel, stride, padding) of every conv/pool up to this output, for its size."""
    slice_layers: int
    """How many of ``layers`` (the last ones) belong to this output's own slice of the trunk."""

    def size(self, pixels: int) -> int:
        for kernel, stride, padding in self.layers:
            pixels = (pixels + 2 * padding - kernel) // stride + 1
        return pixels


def _trunk_geometry(net: lpips.LPIPS) -> list[_LayerGeometry]:
    """The receptive field, stride and offset of each LPIPS layer, read from the trunk's modules."""
    jump, start, field, layers, geometry = 1, 0, 1, [], []
    for index in range(1, net.net.N_slices + 1):
        before = len(layers)
        for module in getattr(net.net, f"slice{index}"):
            if isinstance(module, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
                kernel, stride, padding = (v if isinstance(v, int) else v[0]
                                           for v in (module.kernel_size, module.stride, module.padding))
                start -= padding * jump
                field += (kernel - 1) * jump
                jump *= stride
                layers.append((kernel, stride, padding))
        geometry.append(_LayerGeometry(jump, start, field, tuple(layers), len(layers) - before))
    return geometry


def _bilinear_rows(layer: _LayerGeometry, full: int, first: int, last: int, crop_offset: int, crop_size: int,
                   like: Tensor) -> Tensor:
    """``(last-first, crop_size)`` weights that upsample a crop's feature rows to output rows ``first..last-1``
    exactly as ``F.interpolate(size=full_frame, mode="bilinear", align_corners=False)`` does on the whole frame."""
    features = layer.size(full)
    y = torch.arange(first, last, dtype=torch.float64, device=like.device)
    source = ((y + 0.5) * (features / full) - 0.5).clamp(min=0)
    low = source.floor()
    high = (low + 1).clamp(max=features - 1)
    weight_high = source - low
    rows = torch.zeros(last - first, crop_size, dtype=torch.float64, device=like.device)
    index = torch.arange(last - first, device=like.device)
    rows.index_put_((index, low.long() - crop_offset), 1 - weight_high, accumulate=True)
    rows.index_put_((index, high.long() - crop_offset), weight_high, accumulate=True)
    return rows.to(like.dtype)


def _reached_rows(geometry: list[_LayerGeometry], full: int, first: int, last: int) -> tuple[int, int]:
    """The output rows whose map can be non-zero when inputs differ only in rows ``first..last-1``: those whose
    bilinear upsampling reads, in some layer, a feature whose receptive field overlaps those rows."""
    rows = torch.arange(full, dtype=torch.float64)
    reached = torch.zeros(full, dtype=torch.bool)
    for layer in geometry:
        features = layer.size(full)
        low = max(0, -(-(first - layer.start - layer.field + 1) // layer.jump))
        high = min(features - 1, (last - 1 - layer.start) // layer.jump)
        source = ((rows + 0.5) * (features / full) - 0.5).clamp(min=0).floor()
        reached |= (source >= low - 1) & (source <= high)
    return true_span(reached) or (0, 0)


def _slice_input_span(layers: tuple[tuple[int, int, int], ...], size: int, span: tuple[int, int]) -> tuple[int, int]:
    """The span of a slice's input (``size`` long) that its ``layers`` read to produce outputs ``span``."""
    sizes = [size]
    for kernel, stride, padding in layers[:-1]:
        sizes.append((sizes[-1] + 2 * padding - kernel) // stride + 1)
    low, high = span
    for (kernel, stride, padding), size in zip(reversed(layers), reversed(sizes)):
        low, high = max(0, low * stride - padding), min(size, (high - 1) * stride - padding + kernel)
    return low, high


def _level_spans(geometry: list[_LayerGeometry], full: int, first: int, last: int) -> list[tuple[int, int]]:
    """The spans (in each level's whole-frame coordinates) that the trunk must compute for output rows
    ``first..last-1``: the input crop, then each layer's output.

    A layer's span is what its bilinear upsampling reads for those rows plus what the next slice reads to compute
    its own span — a pyramid narrowing towards the deep layers, instead of every layer over the input crop's
    whole receptive field. Each start is aligned down to the stride still ahead, so every crop stays a sub-grid of
    the whole frame's features and each feature is computed from exactly the inputs it has on the whole frame.
    """
    spans: list[tuple[int, int]] = []
    needed_below: tuple[int, int] | None = None  # what the next slice reads from this level
    for index in reversed(range(len(geometry))):
        layer = geometry[index]
        features = layer.size(full)
        scale = features / full
        low = int(max((first + 0.5) * scale - 0.5, 0))
        high = min(int(max((last - 0.5) * scale - 0.5, 0)) + 1, features - 1) + 1
        if needed_below is not None:
            low, high = min(low, needed_below[0]), max(high, needed_below[1])
        align = geometry[-1].jump // layer.jump
        spans.append((low // align * align, high))
        below_size = geometry[index - 1].size(full) if index else full
        needed_below = _slice_input_span(layer.layers[len(layer.layers) - layer.slice_layers:], below_size,
                                         spans[-1])
    align = geometry[-1].jump
    spans.append((needed_below[0] // align * align, needed_below[1]))
    return spans[::-1]


def _trunk_outputs(net: lpips.LPIPS, geometry: list[_LayerGeometry], crop: Tensor,
                   row_spans: list[tuple[int, int]], col_spans: list[tuple[int, int]]) -> list[Tensor]:
    """The trunk's layer outputs on an input ``crop`` covering ``row_spans[0]`` × ``col_spans[0]``, each cut to
    its level's spans before the next slice runs (see :func:`_level_spans`)."""
    features = net.scaling_layer(crop)
    top, left = row_spans[0][0], col_spans[0][0]  # where ``features`` starts in its level's coordinates
    outputs = []
    for index, layer in enumerate(geometry):
        features = getattr(net.net, f"slice{index + 1}")(features)
        stride = layer.jump // (geometry[index - 1].jump if index else 1)
        top, left = top // stride, left // stride
        (row_start, row_stop), (col_start, col_stop) = row_spans[index + 1], col_spans[index + 1]
        features = (features.narrow(2, row_start - top, row_stop - row_start)
                    .narrow(3, col_start - left, col_stop - col_start))
        top, left = row_start, col_start
        outputs.append(features)
    return outputs


def _scored_map_sums(net: lpips.LPIPS, geometry: list[_LayerGeometry], pred: Tensor, target: Tensor,
                     scored: Tensor, differs: Tensor) -> Tensor:
    """Σ over scored pixels of the LPIPS spatial map of each frame ``(n, 3, H, W)`` → ``(n,)``, computed on a crop.

    The map is needed only at the scored pixels and is 0 wherever no layer's receptive field reaches a pixel where
    pred and target differ (a hard composite differs only in the hole). So the trunk runs on the box around those
    pixels plus the receptive-field margin, aligned to the stride, each layer only over the features the layers
    after it and its own upsampling need (pred and target in one batch, channels-last), and each layer's map is
    upsampled with the whole frame's bilinear weights: the values equal the whole-frame map's (tested), at a
    fraction of the cost.
    """
    n, _, h, w = pred.shape
    spans = []
    for axis, full in ((1, h), (2, w)):
        # Per frame first, then over the chunk: reducing (frames, rows) at once is ~10x slower on CPU.
        scored_span = true_span(scored.amax(dim=3 - axis).amax(dim=0) > 0)
        differing = true_span(differs.amax(dim=3 - axis).amax(dim=0))
        if scored_span is None or differing is None:
            return scored.new_zeros(n)
        reached = _reached_rows(geometry, full, *differing)
        first, last = max(scored_span[0], reached[0]), min(scored_span[1], reached[1])
        if first >= last:
            return scored.new_zeros(n)
        spans.append((first, last, _level_spans(geometry, full, first, last)))
    (top, bottom, row_spans), (left, right, col_spans) = spans
    window = (slice(None), slice(None), slice(*row_spans[0]), slice(*col_spans[0]))
    crop = torch.cat([pred[window], target[window]]).mul_(2).sub_(1).contiguous(memory_format=torch.channels_last)
    outputs = _trunk_outputs(net, geometry, crop, row_spans, col_spans)
    region = torch.zeros(n, bottom - top, right - left, dtype=pred.dtype, device=pred.device)
    for index, (layer, features) in enumerate(zip(geometry, outputs)):
        pred_features, target_features = lpips.normalize_tensor(features).chunk(2)
        layer_map = net.lins[index]((pred_features - target_features) ** 2)[:, 0]  # (n, rows, cols) at this layer
        rows = _bilinear_rows(layer, h, top, bottom, row_spans[index + 1][0], layer_map.shape[1], layer_map)
        cols = _bilinear_rows(layer, w, left, right, col_spans[index + 1][0], layer_map.shape[2], layer_map)
        region += torch.einsum("ri,nij,cj->nrc", rows, layer_map, cols)
    return (region * scored[:, top:bottom, left:right]).sum(dim=(1, 2))
