"""Perceptual and style losses on torchvision VGG-19 features (ImageNet weights from a local file).

The trunk is ``torchvision.models.vgg19().features`` up to the deepest requested ReLU; weights come from a local
torchvision state_dict file (``vgg19-dcbb9e9d.pth``: ``weights`` in the config, else the torch hub cache). Nothing
downloads. A random trunk is used only when the config allows it, and :attr:`VGGFeatures.source` says so.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from vipo.config import Config, ExistingPath

__all__ = ["VGG19_CHECKPOINT", "VGG19_RELU", "VGGFeatures", "VGGLossConfig", "perceptual_style_losses"]

VGG19_CHECKPOINT = "vgg19-dcbb9e9d.pth"
VGG19_RELU = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
"""Index of each ReLU output in ``vgg19().features``."""
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGLossConfig(Config):
    """Where the VGG-19 trunk comes from and which layers count (name -> weight)."""

    weights: ExistingPath | None = None
    """torchvision VGG-19 state_dict file; default: ``<torch hub>/checkpoints/vgg19-dcbb9e9d.pth``."""
    allow_random: bool = False
    """Demos and tests without the file: a random trunk (not a perceptual loss; recorded in the run)."""
    layers: dict[str, float] = Field(default_factory=lambda: {name: 1.0 for name in VGG19_RELU})


class VGGFeatures(nn.Module):
    """Frozen VGG-19 feature extractor: frames in [-1, 1] (N,3,H,W) -> {layer: features}."""

    def __init__(self, config: VGGLossConfig, seed: int = 0):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        unknown = set(config.layers) - set(VGG19_RELU)
        if unknown:
            raise ValueError(f"vgg.layers: unknown {sorted(unknown)}; known: {', '.join(VGG19_RELU)}")
        self.layers = {VGG19_RELU[name]: name for name in config.layers}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a random trunk (when allowed) is the same in every process
            # vgg19().features without building the 120M-parameter classifier.
            trunk = make_layers(cfgs["E"])[: max(self.layers) + 1]
        path = config.weights or Path(torch.hub.get_dir()) / "checkpoints" / VGG19_CHECKPOINT
        if Path(path).is_file():
            state = torch.load(path, map_location="cpu", weights_only=True)
            kept = {key.removeprefix("features."): value for key, value in state.items()
                    if key.startswith("features.") and int(key.split(".")[1]) < len(trunk)}
            trunk.load_state_dict(kept, strict=True)
            self.source = str(path)
        elif config.allow_random:
            self.source = "RANDOM (not a perceptual loss)"
        else:
            raise FileNotFoundError(f"VGG-19 weights not found at {path}: put torchvision's {VGG19_CHECKPOINT} "
                                    f"there or set loss.vgg.weights (loss.vgg.allow_random only for tests)")
        self.trunk = trunk.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "VGGFeatures":
        super().train(mode)
        self.trunk.eval()
        return self

    def forward(self, frames: Tensor) -> dict[str, Tensor]:
        x = ((frames + 1) / 2 - self.mean) / self.std
        features = {}
        for index, layer in enumerate(self.trunk):
            x = layer(x)
            if index in self.layers:
                features[self.layers[index]] = x
        return features


def _gram(features: Tensor) -> Tensor:
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def perceptual_style_losses(vgg: VGGFeatures, prediction: Tensor, target: Tensor,
                            layer_weights: dict[str, float]) -> tuple[Tensor, Tensor]:
    """(perceptual, style): sum over layers of weight x L1 between the features, and between their Gram matrices
    (normalised by C·H·W). ``prediction``/``target`` (N,3,H,W) in [-1, 1]; the target is not differentiated."""
    predicted = vgg(prediction)
    with torch.no_grad():
        reference = vgg(target)
    perceptual = sum(w * F.l1_loss(predicted[k], reference[k]) for k, w in layer_weights.items())
    style = sum(w * F.l1_loss(_gram(predicted[k]), _gram(reference[k])) for k, w in layer_weights.items())
    return perceptual, style
