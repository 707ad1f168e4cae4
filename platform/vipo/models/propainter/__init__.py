"""ProPainter (ICCV 2023), re-implemented from its description and checkpoint-compatible with the released weights.

- :class:`BidirectionalRAFT` (torchvision ``raft_large``) and :func:`convert_raft_state_dict` for ``raft-things.pth``
- :class:`RecurrentFlowCompleteNet` for ``recurrent_flow_completion.pth``
- :class:`InpaintGenerator` for ``ProPainter.pth``
- :class:`Discriminator` (T-PatchGAN, training only)
- :func:`propagate_images`, the parameter-free image propagation between flow completion and the generator
"""

from vipo.lazy import lazy_exports

# Lazy: the networks import diffusers (ModelMixin); ``flow_warp`` for a loss, or a config, needs only torch.
_EXPORTS = {
    "vipo.models.propainter.discriminator": ["Discriminator"],
    "vipo.models.propainter.flow_completion": ["FlowCompletionOutput", "RecurrentFlowCompleteNet"],
    "vipo.models.propainter.inpaint_generator": ["InpaintGenerator"],
    "vipo.models.propainter.propagation": ["flow_consistency", "flow_warp", "propagate_images"],
    "vipo.models.propainter.raft": ["BidirectionalRAFT", "convert_raft_state_dict", "raft_state_dict_to_upstream"],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
