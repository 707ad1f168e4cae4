"""ProPainter video inpainting: frames + hole masks -> inpainted frames.

Per sub-video: RAFT flow (fp32) -> flow completion -> image propagation -> generator over sliding local windows with
reference frames. The video is cut into sub-videos of ``subvideo_length`` frames, each processed with
``context_length`` extra frames on both sides, so device memory is bounded by the sub-video, not the video; only the
current sub-video's tensors live on the device. A video that fits in one sub-video is processed exactly as the
upstream ``inference_propainter.py`` does (same windows, references and running average).

Weights are the released files in one folder (``weights/propainter/`` in the project layout)::

    raft-things.pth  recurrent_flow_completion.pth  ProPainter.pth
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.models.optical_flow import RAFT, raft_large
from tqdm.auto import tqdm

from vipo.config import validate_config
from vipo.models.propainter import (
    BidirectionalRAFT,
    InpaintGenerator,
    RecurrentFlowCompleteNet,
    convert_raft_state_dict,
    propagate_images,
    raft_state_dict_to_upstream,
)
from vipo.pipelines.configs import DIFFUERASER_PRIOR, WEIGHT_FILES, ProPainterConfig

__all__ = [
    "DIFFUERASER_PRIOR",
    "WEIGHT_FILES",
    "ProPainterConfig",
    "ProPainterPipeline",
    "dilate_holes",
    "random_models",
    "reference_indices",
    "save_random_propainter_weights",
    "subvideo_spans",
]

MIN_PROCESSING_SIZE = 16


def dilate_holes(holes: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation of (F,H,W) bool holes with a 3x3 cross, ``iterations`` times (as upstream's
    ``scipy.ndimage.binary_dilation``). Returns (F,H,W) bool."""
    if iterations == 0:
        return holes.copy()
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return np.stack([cv2.dilate(h.astype(np.uint8), cross, iterations=iterations) > 0 for h in holes])


def reference_indices(neighbors: list[int], length: int, stride: int) -> list[int]:
    """Every ``stride``-th frame of a clip of ``length`` frames that is not among the local ``neighbors``."""
    return [i for i in range(0, length, stride) if i not in neighbors]


def subvideo_spans(num_frames: int, subvideo_length: int, context_length: int) -> list[tuple[int, int, int, int]]:
    """``(start, end, clip_start, clip_end)`` per sub-video: frames [start, end) are output from a run over
    [clip_start, clip_end), the sub-video plus ``context_length`` frames each side (at least 2 frames)."""
    spans = []
    for start in range(0, num_frames, subvideo_length):
        end = min(num_frames, start + subvideo_length)
        clip_end = min(num_frames, end + context_length)
        clip_start = max(0, min(start - context_length, clip_end - 2))
        spans.append((start, end, clip_start, clip_end))
    return spans


def _raft_pairs_per_batch(width: int) -> int:
    # Upstream runs RAFT over clips of 12/8/4/2 frames for widths up to 640/720/1280/beyond.
    for max_width, clip_frames in ((640, 12), (720, 8), (1280, 4)):
        if width <= max_width:
            return clip_frames - 1
    return 1


def random_models(seed: int, generator: bool = True) -> tuple[RAFT, RecurrentFlowCompleteNet, InpaintGenerator | None]:
    """The three networks with random weights drawn from ``seed`` (RAFT, then flow completion, then the generator,
    so leaving the generator out does not change the other two)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return raft_large(weights=None), RecurrentFlowCompleteNet(), InpaintGenerator() if generator else None


def save_random_propainter_weights(weights_dir: str | Path, seed: int = 0) -> Path:
    """Write random-weight ``raft-things.pth``, ``recurrent_flow_completion.pth`` and ``ProPainter.pth`` in the
    published format (RAFT with upstream, ``module.``-prefixed names) into ``weights_dir``; returns it.
    :meth:`ProPainterPipeline.from_pretrained` on it equals :meth:`ProPainterPipeline.from_random` with ``seed``."""
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    raft, flow_completion, generator = random_models(seed)
    torch.save(raft_state_dict_to_upstream(raft.state_dict()), weights_dir / WEIGHT_FILES["raft"])
    torch.save(flow_completion.state_dict(), weights_dir / WEIGHT_FILES["flow_completion"])
    torch.save(generator.state_dict(), weights_dir / WEIGHT_FILES["generator"])
    return weights_dir


class ProPainterPipeline:
    """ProPainter inference. Call with uint8 RGB frames (F,H,W,3) and bool holes (F,H,W), True = hole."""

    def __init__(self, raft: RAFT, flow_completion: RecurrentFlowCompleteNet, generator: InpaintGenerator,
                 config: ProPainterConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or ProPainterConfig()
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.config.fp16 and self.device.type == "cuda" else torch.float32
        self.flow = BidirectionalRAFT(raft, iterations=self.config.raft_iterations).to(self.device)
        self.flow_completion = flow_completion.to(self.device).eval().requires_grad_(False)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        if self.dtype == torch.float16:
            self.flow_completion.half()
            self.generator.half()

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, device: str | torch.device = "cpu",
                        **knobs) -> "ProPainterPipeline":
        """Load the released weights from ``weights_dir``; ``knobs`` are :class:`ProPainterConfig` fields."""
        config = validate_config(ProPainterConfig, knobs, source="ProPainterPipeline")
        paths = {name: Path(weights_dir) / file for name, file in WEIGHT_FILES.items()}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"ProPainter weight file not found: {path} "
                                        f"(put {', '.join(WEIGHT_FILES.values())} in {path.parent})")
        builders = {"raft": lambda: raft_large(weights=None), "flow_completion": RecurrentFlowCompleteNet,
                    "generator": InpaintGenerator}
        models = {}
        for name, build in builders.items():
            try:
                state_dict = torch.load(paths[name], map_location="cpu", weights_only=True)
            except Exception as err:  # torch.load fails in many ways (pickle, zip, EOF) on a bad file
                raise ValueError(f"{paths[name]}: cannot be read as a PyTorch checkpoint "
                                 f"({type(err).__name__}); download it again") from None
            models[name] = model = build()
            try:
                if name == "raft":
                    state_dict = convert_raft_state_dict(state_dict)
                model.load_state_dict(state_dict, strict=True)
            except (RuntimeError, KeyError) as err:
                detail = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
                raise ValueError(f"{paths[name]}: not a ProPainter {name} checkpoint: {detail}") from None
        return cls(config=config, device=device, **models)

    @classmethod
    def from_random(cls, seed: int = 0, device: str | torch.device = "cpu", **knobs) -> "ProPainterPipeline":
        """The real architecture with random weights (tests, demos)."""
        config = validate_config(ProPainterConfig, knobs, source="ProPainterPipeline")
        raft, flow_completion, generator = random_models(seed)
        return cls(raft, flow_completion, generator, config=config, device=device)

    def processing_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the models run at: input size x ``resize_ratio``, rounded down to multiples of 8."""
        ratio = self.config.resize_ratio
        return int(height * ratio) // 8 * 8, int(width * ratio) // 8 * 8

    def check_inputs(self, frames: np.ndarray, hole_masks: np.ndarray) -> None:
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
                and frames.shape[-1] == 3):
            raise ValueError(f"frames must be a uint8 array (F,H,W,3) RGB, got "
                             f"{getattr(frames, 'dtype', type(frames))} {getattr(frames, 'shape', '')}")
        if not (isinstance(hole_masks, np.ndarray) and hole_masks.dtype == np.bool_):
            raise ValueError(f"hole_masks must be a bool array (F,H,W), True = hole, got "
                             f"{getattr(hole_masks, 'dtype', type(hole_masks))}; convert uint8 masks with mask > 127")
        if hole_masks.shape != frames.shape[:3]:
            raise ValueError(f"hole_masks shape {hole_masks.shape} does not match frames {frames.shape[:3]}")
        if frames.shape[0] < 2:
            raise ValueError(f"ProPainter needs at least 2 frames for optical flow, got {frames.shape[0]}")
        h, w = self.processing_size(*frames.shape[1:3])
        if min(h, w) < MIN_PROCESSING_SIZE:
            raise ValueError(f"processing size {h}x{w} (input {frames.shape[1]}x{frames.shape[2]}, resize_ratio "
                             f"{self.config.resize_ratio}) is below {MIN_PROCESSING_SIZE} px; use larger frames")

    def _windows(self, clip_length: int, keep: range) -> list[tuple[list[int], list[int]]]:
        """(local neighbours, references) of each generator window that touches a frame in ``keep``."""
        stride = max(1, self.config.neighbor_length // 2)
        windows = []
        for center in range(0, clip_length, stride):
            neighbors = list(range(max(0, center - stride), min(clip_length, center + stride + 1)))
            if any(i in keep for i in neighbors):
                windows.append((neighbors, reference_indices(neighbors, clip_length, self.config.ref_stride)))
        return windows

    @torch.no_grad()
    def _inpaint_clip(self, frames: np.ndarray, holes: np.ndarray, keep: range, bar: tqdm) -> np.ndarray:
        """Run one clip. frames (T,h,w,3) uint8, holes (T,h,w) bool -> (len(keep),h,w,3) float32 in [0,255] for the
        clip frames in ``keep``: the prediction averaged over windows inside the holes, the input outside."""
        # 1. Tensors on the device, frames in [-1,1], holes 1 = hole.
        video = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).unsqueeze(0).float() / 127.5 - 1
        hole = torch.from_numpy(holes).to(self.device)[None, :, None].float()

        # 2. Optical flow in fp32, then everything else in the pipeline's dtype.
        flows = self.flow(video, pairs_per_batch=_raft_pairs_per_batch(video.shape[-1]))
        video, hole = video.to(self.dtype), hole.to(self.dtype)
        flows_forward, flows_backward = (flow.to(self.dtype) for flow in flows)

        # 3. Complete the flows inside the holes.
        flows_forward, flows_backward = self.flow_completion.complete_flows(flows_forward, flows_backward, hole)

        # 4. Image propagation: copy known pixels along the completed flows.
        propagated, hole_updated = propagate_images(video * (1 - hole), flows_forward, flows_backward, hole)

        # 5. Generator over local windows; overlapping windows are running-averaged 0.5/0.5 as upstream.
        result = frames[keep.start:keep.stop].astype(np.float32)
        written = np.zeros(len(keep), dtype=bool)
        for neighbors, references in self._windows(len(frames), keep):
            ids = neighbors + references
            prediction = self.generator(
                propagated[:, ids], flows_forward[:, neighbors[:-1]], flows_backward[:, neighbors[:-1]],
                hole[:, ids], hole_updated[:, ids], num_local_frames=len(neighbors))
            prediction = ((prediction[0].float() + 1) * 127.5).clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()
            for i, frame in zip(neighbors, prediction):
                if i not in keep:
                    continue
                k = i - keep.start
                composed = np.where(holes[i, :, :, None], frame, frames[i].astype(np.float32))
                result[k] = 0.5 * result[k] + 0.5 * composed if written[k] else composed
                written[k] = True
            bar.update(1)
        return result

    def __call__(self, frames: np.ndarray, hole_masks: np.ndarray) -> np.ndarray:
        """Inpaint a video.

        Args:
            frames: (F,H,W,3) uint8 RGB.
            hole_masks: (F,H,W) bool, True = hole.

        Returns:
            (F,H,W,3) uint8: pixels outside the holes dilated by ``mask_dilation`` (see :func:`dilate_holes`) equal
            the input; inside, the inpainted content.
        """
        # 1. Validate.
        self.check_inputs(frames, hole_masks)
        num_frames, height, width = hole_masks.shape

        # 2. Resize to the processing size (multiples of 8) and dilate the holes there, as upstream.
        h, w = self.processing_size(height, width)
        resized = (h, w) != (height, width)
        interpolation = cv2.INTER_AREA if h * w < height * width else cv2.INTER_LINEAR
        small_frames = np.stack([cv2.resize(f, (w, h), interpolation=interpolation) for f in frames]) \
            if resized else frames
        small_holes = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                                for m in hole_masks]) if resized else hole_masks
        small_holes = dilate_holes(small_holes, self.config.mask_dilation)

        # 3. Sub-videos: run each clip, keep its own frames, composite them at the input size.
        output = frames.copy()
        spans = subvideo_spans(num_frames, self.config.subvideo_length, self.config.context_length)
        total_windows = sum(len(self._windows(ce - cs, range(s - cs, e - cs))) for s, e, cs, ce in spans)
        with tqdm(total=total_windows, desc="ProPainter", unit="window", disable=not self.config.progress) as bar:
            for start, end, clip_start, clip_end in spans:
                keep = range(start - clip_start, end - clip_start)
                inpainted = self._inpaint_clip(small_frames[clip_start:clip_end], small_holes[clip_start:clip_end],
                                               keep, bar)
                for idx, frame in zip(range(start, end), inpainted):
                    inside = small_holes[idx]
                    if resized:
                        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
                        inside = cv2.resize(inside.astype(np.uint8), (width, height),
                                            interpolation=cv2.INTER_NEAREST).astype(bool) | hole_masks[idx]
                    output[idx] = np.where(inside[..., None], np.rint(frame).clip(0, 255), frames[idx])
        return output
