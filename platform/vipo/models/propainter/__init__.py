"""ProPainter (ICCV 2023), re-implemented from its description and checkpoint-compatible with the released weights.

- :class:`BidirectionalRAFT` (torchvision ``raft_large``) and :func:`convert_raft_state_dict` for ``raft-things.pth``
- :class:`RecurrentFlowCompleteNet` for ``recurrent_flow_completion.pth``
- :class:`InpaintGenerator` for ``ProPainter.pth``
- :class:`Discriminator` (T-PatchGAN, training only)
- :func:`propagate_images`, the parameter-free image propagation between flow completion and the generator
"""

from vipo.models.propainter.discriminator import Discriminator
from vipo.models.propainter.flow_completion import FlowCompletionOutput, RecurrentFlowCompleteNet
from vipo.models.propainter.inpaint_generator import InpaintGenerator
from vipo.models.propainter.propagation import flow_consistency, flow_warp, propagate_images
from vipo.models.propainter.raft import BidirectionalRAFT, convert_raft_state_dict, raft_state_dict_to_upstream

__all__ = [
    "BidirectionalRAFT",
    "Discriminator",
    "FlowCompletionOutput",
    "InpaintGenerator",
    "RecurrentFlowCompleteNet",
    "convert_raft_state_dict",
    "flow_consistency",
    "flow_warp",
    "propagate_images",
    "raft_state_dict_to_upstream",
]
