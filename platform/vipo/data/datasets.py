"""Training datasets: stages 1/2 (:class:`FinetuneDataset`), stage 3 DPO (:class:`DPODataset`), the VAE
(:class:`VaeClipDataset`).

Each dataset works in two steps, so that the same code serves a torch ``Dataset`` and a Ray Data pipeline:

1. ``load_raw(index, epoch)`` decodes one sample into compact numpy arrays (uint8 frames, bool hole masks). Ray
   Data runs this step on its CPU workers (:meth:`to_ray_dataset`), so only uint8 crosses the object store.
2. ``collate(batch)`` turns a batch of raw samples (dict of arrays with a leading batch dimension, the form
   ``iter_torch_batches`` hands over) into training tensors: pixels float32 in [-1, 1] shaped (B,F,3,H,W), masks
   float32 (B,F,1,H,W). On a Ray Train worker: ``shard.iter_torch_batches(batch_size=b,
   collate_fn=dataset.ray_collate_fn())``. ``dataset[i]`` is the same thing for one sample (no batch dimension).

Randomness (clip window, reversal, mask, empty prompt, negative choice) comes from ``(seed, epoch, key)`` only, so
a sample is reproducible whichever worker loads it; the key is the index, or the clip id for shard rows. Call
:meth:`set_epoch` (torch) or pass ``epoch`` to :meth:`to_ray_dataset` for fresh draws each epoch.

Bad input (a corrupt or truncated frame, a frame of a different size, a mask whose size differs from its frames, an
empty folder, a too-short video) raises :class:`~vipo.data.errors.BadSample` naming the file; the dataset records it
in ``dataset.skips`` and moves on to the next index, or re-raises when ``strict``. In the Ray path a bad sample
is dropped and logged with its file name on the worker that met it.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field, model_validator

from vipo.config import Config, ExistingPath
from vipo.data.decode import DPORowDecoder, NegativeForm, NegativePolicy, RayRowGroupDecoder, sample_rng
from vipo.data.errors import BadSample, DataError, SkipLog, strict_error
from vipo.data.sampling import (
    ClipSamplingConfig,
    build_clip_index,
    resize_center_crop,
    resize_frames,
    sample_window,
    vae_frame_indices,
)
from vipo.data.shards import Manifest, open_shard
from vipo.data.sources import SourceConfig, Video, scan_sources
from vipo.masks import MovingMaskConfig, hole_to_condition, random_moving_masks
from vipo.regions import BoundaryPx, decompose, downsample_hole

__all__ = [
    "DPODataConfig",
    "DPODataset",
    "FinetuneDataConfig",
    "FinetuneDataset",
    "VaeClipDataset",
    "VaeDataConfig",
    "shards_for_rank",
    "tokenize_prompt",
]

logger = logging.getLogger(__name__)

Tokenizer = Callable[..., Any]


def tokenize_prompt(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Token ids (L,) int64 of ``text``.

    A Hugging Face tokenizer (anything with ``model_max_length``) is called as the SD training scripts do: padded
    and truncated to ``model_max_length``. Any other callable ``text -> ids`` is used as is.
    """
    if hasattr(tokenizer, "model_max_length"):
        ids = tokenizer(text, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids[0]
    else:
        ids = tokenizer(text)
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def shards_for_rank(paths: Sequence[Path], rank: int, world_size: int) -> list[Path]:
    """The shards worker ``rank`` of ``world_size`` reads when not using Ray Data: every ``world_size``-th one,
    so ranks never overlap and together cover all shards."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(paths)[rank::world_size]


def _tensor(array: np.ndarray) -> torch.Tensor:
    # Ray hands read-only zero-copy batches; torch warns on those, so they are copied (uint8, cheap).
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 (...,F,H,W,3) → float32 (...,F,3,H,W) in [-1, 1]."""
    return _tensor(frames).movedim(-1, -3).float().div(127.5).sub(1.0)


def _hole_planes(hole: np.ndarray) -> torch.Tensor:
    """bool (...,F,H,W) → bool (...,F,1,H,W)."""
    return _tensor(np.asarray(hole, dtype=bool)).unsqueeze(-3)


def _prompt_ids(empty: np.ndarray, ids: torch.Tensor, empty_ids: torch.Tensor) -> torch.Tensor:
    """(B,) bool → (B,L) int64: the empty prompt's ids where ``empty``."""
    chosen = _tensor(np.asarray(empty, dtype=bool))[:, None]
    return torch.where(chosen, empty_ids, ids)


class _TwoStepDataset(torch.utils.data.Dataset, abc.ABC):
    """Shared skip-and-count indexing, epochs and the Ray conversion of the index-based datasets."""

    strict: bool
    seed: int

    def __init__(self) -> None:
        self.skips = SkipLog()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _index_videos(self, config: Any, videos: Sequence[Video] | None, min_frames: int, what: str) -> None:
        """Keep ``config`` (its ``strict``/``seed``) and index the videos (``config.sources`` scanned unless
        given) that have at least ``min_frames`` frames; none → :class:`DataError` with the skip summary."""
        self.config = config
        self.strict = config.strict
        self.seed = config.seed
        if videos is None:
            videos = scan_sources(config.sources, self.skips, config.strict)
        self.index = build_clip_index(videos, min_frames, self.skips, config.strict)
        if not self.index:
            raise DataError(f"{type(self).__name__}: no {what} with at least {min_frames} frames; "
                            f"skipped:\n{self.skips.summary()}")

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def load_raw(self, index: int, epoch: int) -> dict[str, Any]:
        """Sample ``index`` of ``epoch`` as compact numpy arrays; raises :class:`BadSample` on bad input."""

    @abc.abstractmethod
    def collate(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Raw samples stacked along a leading batch dimension → training tensors."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            try:
                raw = self.load_raw(position, self.epoch)
            except BadSample as err:
                self.skips.handle(err, self.strict)
                continue
            batch = self.collate({key: np.asarray(value)[None] for key, value in raw.items()})
            return {key: value[0] for key, value in batch.items()}
        raise DataError(f"{type(self).__name__}: no loadable sample; skipped:\n{self.skips.summary()}")

    def to_ray_dataset(self, epoch: int = 0, num_blocks: int | None = None):
        """A Ray Data dataset of raw samples (one per index, bad ones dropped); collate with
        :meth:`ray_collate_fn`. ``num_blocks`` (default: Ray's choice) bounds how many decode tasks run at once.

        Pass it to a ``TorchTrainer`` (``datasets={"train": ds}``): Ray Train splits it across workers without
        overlap, and each worker reads ``ray.train.get_dataset_shard("train").iter_torch_batches(...)``.
        """
        import ray.data

        ds = ray.data.range(len(self), override_num_blocks=num_blocks)
        return ds.flat_map(_RayIndexLoader(self, epoch))

    def ray_collate_fn(self):
        """The ``collate_fn`` for ``iter_torch_batches`` over :meth:`to_ray_dataset` (wraps :meth:`collate`)."""
        from vipo.data.ray_io import RawBatchCollate

        return RawBatchCollate(self)


class _RayIndexLoader:
    """Ray Data ``flat_map`` UDF: an index row → [raw sample], or [] when the sample is bad (logged)."""

    def __init__(self, dataset: _TwoStepDataset, epoch: int):
        self.dataset = dataset
        self.epoch = epoch

    def __call__(self, row: dict) -> list[dict]:
        try:
            return [self.dataset.load_raw(int(row["id"]), self.epoch)]
        except BadSample as err:
            if self.dataset.strict:
                raise strict_error(err) from err
            logger.warning("skipped %s: %s", err.where, err.reason)
            return []


class FinetuneDataConfig(Config):
    """Stage 1/2 data: clean videos, random moving masks drawn on the fly, a fixed prompt."""

    sources: list[SourceConfig] = Field(min_length=1)
    clip: ClipSamplingConfig = ClipSamplingConfig()
    masks: MovingMaskConfig = MovingMaskConfig()
    prompt: str = "clean background"
    proportion_empty_prompts: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    strict: bool = False


class FinetuneDataset(_TwoStepDataset):
    """DiffuEraser stage 1/2 samples (seed 002 fields). ``dataset[i]`` →

    - ``pixel_values``: float32 (F,3,H,W) in [-1, 1], the clean clip;
    - ``conditioning_pixel_values``: float32 (F,3,H,W), the clip with holes set to -1 (black);
    - ``masks``: float32 (F,1,H,W), the conditioning channel, 1 = known, 0 = hole;
    - ``input_ids``: int64 (L,), the prompt (empty with probability ``proportion_empty_prompts``).

    The mask is drawn at the video's own resolution (as DiffuEraser does, so hole sizes and speeds are relative to
    the source) and resized with the frames (nearest); the masked clip is cut after resizing so that it agrees
    exactly with ``masks``. ``videos`` overrides scanning ``config.sources`` (e.g. videos already scanned).
    """

    def __init__(self, config: FinetuneDataConfig, tokenizer: Tokenizer, videos: Sequence[Video] | None = None):
        super().__init__()
        self._index_videos(config, videos, config.clip.nframes, "video")
        self.input_ids = tokenize_prompt(tokenizer, config.prompt)
        self.empty_ids = tokenize_prompt(tokenizer, "")

    def __len__(self) -> int:
        return len(self.index)

    def load_raw(self, index: int, epoch: int) -> dict[str, Any]:
        """{``frames``: uint8 (F,H,W,3), ``hole``: bool (F,H,W) True = hole, ``empty_prompt``: bool,
        ``video_id``: str, ``frame_indices``: int64 (F,)} at the output resolution."""
        video = self.index[index]
        rng = sample_rng(self.seed, epoch, index)
        window = sample_window(video.num_frames, video.fps, self.config.clip, rng)
        assert window is not None, "build_clip_index keeps only videos with at least nframes frames"
        frames = video.read(window.indices)
        hole = random_moving_masks(len(frames), frames.shape[1], frames.shape[2], int(rng.integers(2**63)),
                                   self.config.masks)
        size = self.config.clip.size
        return {
            "frames": resize_center_crop(frames, size),
            "hole": resize_center_crop(hole, size, "nearest"),
            "empty_prompt": bool(rng.random() < self.config.proportion_empty_prompts),
            "video_id": video.video_id,
            "frame_indices": np.asarray(window.indices),
        }

    def collate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Raw samples with a leading batch dim → ``pixel_values``, ``conditioning_pixel_values``, ``masks``,
        ``input_ids`` shaped (B,F,3,H,W), (B,F,3,H,W), (B,F,1,H,W), (B,L)."""
        pixels = _pixels(batch["frames"])
        hole = _hole_planes(batch["hole"])
        return {
            "pixel_values": pixels,
            "conditioning_pixel_values": pixels.masked_fill(hole, -1.0),
            "masks": hole_to_condition(hole),
            "input_ids": _prompt_ids(batch["empty_prompt"], self.input_ids, self.empty_ids),
        }


class DPODataConfig(Config):
    """Stage 3 data: preference shards and how each sample's negative is chosen.

    ``negative_policy``: ``fixed`` always takes ``negative_kind``; ``uniform`` picks a kind uniformly among those
    the clip has; ``weighted`` picks among the clip's kinds with ``negative_weights`` (kinds without a weight get
    0). Then one negative of that kind is picked uniformly (several seeds may exist); ``selected_only`` restricts
    the choice to negatives the generator marked ``selected``; ``negative_form`` to the hard composite (default),
    the raw output, or either. A clip with no eligible negative is skipped.

    Regions: ``boundary_px`` is the odd side of the dilation kernel in pixels (see :mod:`vipo.regions`);
    ``region_scale`` 1 gives pixel-resolution regions, 8 gives regions at SD-latent resolution (the hole is
    max-pooled first and the kernel scaled, 7 px → 3 latent cells).
    """

    shards: ExistingPath
    negative_policy: NegativePolicy = "uniform"
    negative_kind: str | None = None
    negative_weights: dict[str, Annotated[float, Field(ge=0)]] = {}
    selected_only: bool = False
    negative_form: NegativeForm = "composited"
    boundary_px: BoundaryPx = 7
    region_scale: int = Field(default=1, ge=1)
    prompt: str = "clean background"
    proportion_empty_prompts: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=0, ge=0)
    strict: bool = False

    @model_validator(mode="after")
    def _policy_complete(self) -> "DPODataConfig":
        if self.negative_policy == "fixed" and not self.negative_kind:
            raise ValueError("negative_policy 'fixed' needs negative_kind (e.g. 'blur')")
        if self.negative_policy == "weighted" and not any(w > 0 for w in self.negative_weights.values()):
            raise ValueError("negative_policy 'weighted' needs negative_weights with a positive weight")
        return self


class DPODataset(_TwoStepDataset):
    """Region-Reg-DPO preference pairs from shards (seed 001 fields). ``dataset[i]`` →

    - ``pixel_values_pos`` / ``pixel_values_neg``: float32 (F,3,H,W) in [-1, 1], ground truth / chosen negative;
    - ``conditioning_pos`` / ``conditioning_neg``: the same with holes set to -1 (the masked input; equal for a
      composited negative);
    - ``masks``: float32 (F,1,H,W), conditioning channel, 1 = known, 0 = hole;
    - ``mask_hole``, ``mask_boundary``, ``mask_context``: float32 (F,1,h,w) 0/1, exclusive, summing to 1, at pixel
      (``region_scale=1``) or latent resolution;
    - ``input_ids``: int64 (L,);
    - ``neg_type``: int64 scalar, the negative's kind as an index into ``dataset.negative_kinds`` (sorted kinds
      of all the manifest's shards; an id, not a string, so that batches are all tensors as Ray Train needs);

    Region masks are recomputed here from the stored hole mask, not read from the shards: they are a pure function
    of the hole and ``boundary_px``, so shards stay small and the boundary width can be tuned without regenerating.

    ``rank``/``world_size`` restrict the dataset to :func:`shards_for_rank` (torch DDP without Ray Data).
    """

    def __init__(self, config: DPODataConfig, tokenizer: Tokenizer, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.config = config
        self.strict = config.strict
        self.seed = config.seed
        self.manifest = Manifest.load(config.shards, adopt_unlisted=False)
        self.shard_paths = shards_for_rank(self.manifest.shard_paths(), rank, world_size)
        # (shard number, row group, row within group) of every row the manifest counts.
        self.rows: list[tuple[int, int, int]] = []
        for number, path in enumerate(self.shard_paths):
            shard = open_shard(path)
            clip_ids = shard.read(columns=["clip_id"]).column(0).to_pylist()
            starts = np.cumsum([0] + [shard.metadata.row_group(g).num_rows for g in range(shard.num_row_groups)])
            for row in self.manifest.done_rows(path.name, clip_ids):
                group = int(np.searchsorted(starts, row, side="right")) - 1
                self.rows.append((number, group, row - int(starts[group])))
        if not self.rows:
            raise DataError(f"{config.shards}: the manifest lists no clips for this rank ({rank}/{world_size})")
        # Only the `kind` leaf of the negatives column is read: no frame bytes.
        negative_kinds = sorted({
            negative["kind"]
            for path in self.manifest.shard_paths()
            for negatives in open_shard(path).read(columns=["negatives.list.element.kind"]).column(0).to_pylist()
            for negative in negatives
        })
        names = {path.name for path in self.shard_paths}
        self.decoder = DPORowDecoder(
            shards=config.shards,
            negative_kinds=tuple(negative_kinds),
            clip_shards={c: e["shard"] for c, e in self.manifest.clips.items() if e.get("shard") in names},
            policy=config.negative_policy,
            negative_kind=config.negative_kind,
            negative_weights=dict(config.negative_weights),
            selected_only=config.selected_only,
            negative_form=config.negative_form,
            proportion_empty_prompts=config.proportion_empty_prompts,
            seed=config.seed,
        )
        self.input_ids = tokenize_prompt(tokenizer, config.prompt)
        self.empty_ids = tokenize_prompt(tokenizer, "")
        self._group_cache: tuple[tuple[int, int], pa.Table] | None = None

    @property
    def negative_kinds(self) -> list[str]:
        """Names of the ``neg_type`` ids."""
        return list(self.decoder.negative_kinds)

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group_cache"] = None  # decoded row groups stay in the process that read them
        return state

    def _row(self, index: int) -> dict:
        number, group, offset = self.rows[index]
        if self._group_cache is None or self._group_cache[0] != (number, group):
            table = pq.ParquetFile(self.shard_paths[number]).read_row_group(group, columns=self.decoder.columns)
            self._group_cache = ((number, group), table)
        # Only this row becomes Python objects; the group stays Arrow until its other rows are asked for.
        return self._group_cache[1].slice(offset, 1).to_pylist()[0]

    def load_raw(self, index: int, epoch: int) -> dict[str, Any]:
        """See :meth:`DPORowDecoder.decode_row`."""
        return self.decoder.decode_row(self._row(index), epoch, self.shard_paths[self.rows[index][0]].name)

    def collate(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Raw samples with a leading batch dim → the training fields (pixels (B,F,3,H,W), masks (B,F,1,H,W),
        ``input_ids`` (B,L), ``neg_type`` (B,) int64)."""
        pos, neg = _pixels(batch["pos"]), _pixels(batch["neg"])
        hole = _hole_planes(batch["hole"])
        region_hole = hole
        if self.config.region_scale > 1:
            region_hole = downsample_hole(hole, self.config.region_scale)
        regions = decompose(region_hole, self.config.boundary_px, self.config.region_scale)
        out = {
            "pixel_values_pos": pos,
            "pixel_values_neg": neg,
            "conditioning_pos": pos.masked_fill(hole, -1.0),
            "conditioning_neg": neg.masked_fill(hole, -1.0),
            "masks": hole_to_condition(hole),
            "mask_hole": regions[0].float(),
            "mask_boundary": regions[1].float(),
            "mask_context": regions[2].float(),
            "input_ids": _prompt_ids(batch["empty_prompt"], self.input_ids, self.empty_ids),
            "neg_type": _tensor(np.asarray(batch["neg_type"], dtype=np.int64)),
        }
        return out

    def to_ray_dataset(self, epoch: int = 0, num_blocks: int | None = None):
        """Ray Data over this dataset's shards, one item per row group, decoded torch-free on Ray's CPU workers;
        collate with :meth:`ray_collate_fn`. ``num_blocks`` (default: one per row group) bounds how many decode
        tasks run at once. Rows the manifest does not count and bad rows are dropped.

        Row groups are read with pyarrow inside the decode task (not ``ray.data.read_parquet``): the same reader as
        the torch path, and no file-metadata pass before the first sample.
        """
        import ray.data

        items = [{"shard": str(path), "group": group}
                 for path in self.shard_paths for group in range(pq.ParquetFile(path).num_row_groups)]
        ds = ray.data.from_items(items, override_num_blocks=num_blocks or len(items))
        return ds.flat_map(RayRowGroupDecoder(self.decoder, epoch, self.strict))


class VaeDataConfig(Config):
    """Video-VAE data (HM3D panoramas): 4n+1-frame clips resized to ``height`` × ``width`` (no crop: an ERP
    panorama must keep its whole field of view). ``max_frames`` is cut down to the nearest 4n+1."""

    sources: list[SourceConfig] = Field(min_length=1)
    height: int = Field(default=128, ge=8)
    width: int = Field(default=256, ge=8)
    max_frames: int = Field(default=5, ge=5)
    seed: int = Field(default=0, ge=0)
    strict: bool = False


class VaeClipDataset(_TwoStepDataset):
    """One 4n+1-frame clip per room: first and last frame kept, middle frames drawn at random
    (:func:`~vipo.data.sampling.vae_frame_indices`). Rooms with fewer than 5 frames are dropped and counted.
    ``dataset[i]`` → ``pixel_values`` float32 (F,3,H,W) in [-1, 1]; the Wan VAE takes (B,3,F,H,W), i.e.
    ``batch["pixel_values"].transpose(1, 2)``."""

    def __init__(self, config: VaeDataConfig, videos: Sequence[Video] | None = None):
        super().__init__()
        self._index_videos(config, videos, 5, "room")

    def __len__(self) -> int:
        return len(self.index)

    def load_raw(self, index: int, epoch: int) -> dict[str, Any]:
        """{``frames``: uint8 (F,height,width,3), ``frame_indices``: int64 (F,)}."""
        video = self.index[index]
        indices = vae_frame_indices(video.num_frames, self.config.max_frames, sample_rng(self.seed, epoch, index))
        frames = resize_frames(video.read(indices), (self.config.height, self.config.width))
        return {"frames": frames, "frame_indices": np.asarray(indices)}

    def collate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """→ ``pixel_values`` float32 (B,F,3,H,W) in [-1, 1]."""
        return {"pixel_values": _pixels(batch["frames"])}
