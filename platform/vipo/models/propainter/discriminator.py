"""ProPainter's T-PatchGAN discriminator (used with the hinge loss in training).

State_dict names and shapes equal ``sczhou/ProPainter:model/propainter.py::Discriminator`` built as in its trainer
(``in_channels=3``, spectral norm, no sigmoid): 4,461,728 parameters, 17 state_dict entries.
"""

from __future__ import annotations

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn
from torch.nn.utils import spectral_norm

from vipo.models.propainter.modules import init_normal_

__all__ = ["Discriminator"]


class Discriminator(ModelMixin, ConfigMixin):
    """Six (3,5,5) Conv3d layers with spatial stride 2 (3->32->64->128->128->128->128), LeakyReLU 0.2 between; the
    first five are spectrally normalised and bias-free. A 240x432 clip gives a 4x7 score map per frame."""

    @register_to_config
    def __init__(self, in_channels: int = 3):
        super().__init__()
        channels = [in_channels, 32, 64, 128, 128, 128, 128]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            # The first layer pads time and space by 1 (as upstream), the others space by 2.
            padding = 1 if i == 0 else (1, 2, 2)
            conv = nn.Conv3d(c_in, c_out, (3, 5, 5), stride=(1, 2, 2), padding=padding, bias=i == 5)
            init_normal_(conv)  # before spectral norm, which then keeps it as weight_orig
            if i < 5:
                layers += [spectral_norm(conv), nn.LeakyReLU(0.2, inplace=True)]
            else:
                layers.append(conv)
        self.conv = nn.Sequential(*layers)

    def forward(self, clips: Tensor) -> Tensor:
        """(B,T,C,H,W) in [-1,1] -> (B,T,128,H',W') unbounded scores (real > fake under the hinge loss)."""
        return self.conv(clips.transpose(1, 2)).transpose(1, 2)
