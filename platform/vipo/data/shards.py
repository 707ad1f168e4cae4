"""Preference-data shards: Parquet files of encoded clips, written atomically, listed by a JSON manifest.

A shard folder holds ``shard-*.parquet`` files and ``manifest.json``. One row is one clip (a preference sample):

=================  ==========================================  ============================================
column             Arrow type                                  meaning
=================  ==========================================  ============================================
schema_version     int16                                       :data:`SCHEMA_VERSION`, checked on read
clip_id            string                                      ``<video_id>#<clip_index>``, unique key
video_id           string                                      ``<source>/<video>``
clip_index         int32                                       n-th clip cut from this video
window_start       int32                                       first source frame of the window
seed               int64                                       seed that drew window and mask
frame_indices      list<int32>                                 source frame of each clip frame (in order)
height, width      int32                                       frame size of every image in the row
frame_codec        string                                      ``png``, ``zstd`` or ``jpeg`` (frames, negatives,
                                                               prior)
frames             list<binary>                                ground-truth frames
masks              list<binary>                                PNG, 8-bit grey, 255 = hole, 0 = known
negatives          list<struct<kind, seed, frames, composited,  each negative present: ``kind`` is open
                   scores: map<string,double>, selected,        (hallucination, blur, flicker, diffueraser,
                   meta: JSON string>>                          ...), ``composited`` = known pixels pasted back
prior              struct<kind: string, frames: list<binary>>   prior used (e.g. propainter); frames may be []
generator,         string                                       provenance: generator name and version,
generator_version,                                              config hash of the generating job,
config_hash,
created_at         timestamp[us, UTC]                           and when the row was made
=================  ==========================================  ============================================

Images are stored encoded (PNG, zstd-compressed raw or quality-95 JPEG frames, PNG masks): a 22×512×512 clip of
real video is ~9 MB as PNG and ~2 MB as JPEG instead of 17 MB raw; zstd is lossless like PNG, larger, and decodes
much faster (``benchmarks/bench_data.py``). Parquet does not compress them again. Row groups are small (4 rows by
default) so readers stream rows without holding a whole shard.

Writing: :func:`encode_clip` makes a row from a :class:`ClipRecord`; :class:`ShardWriter` writes rows to one shard
and :meth:`Manifest.add_shard` / :meth:`Manifest.mark_skipped` + :meth:`Manifest.save` record them. From Ray Data,
``ds.write_datasink(vipo.data.ray_io.ClipShardDatasink(folder))`` does all three.

Region masks (hole / boundary / context) are NOT stored: they are a pure function of the hole mask and the
boundary width, recomputed by the loader. That keeps shards small and lets the boundary width be tuned without
regenerating data.

Atomicity and integrity: a shard is written to a hidden temporary name in its store (a local or shared folder, or
an object store through pyarrow's filesystems, see :mod:`vipo.data.storage`) and moved into place only once its
footer is written (fsync first on a local disk), so a killed writer leaves no readable partial shard (at most a
``.*.tmp`` file, which readers ignore). The footer records the sha256 of the row groups and the clip ids
(:func:`verify_shard` checks both), so a truncated or altered shard is detected without trusting its name. The
manifest (see :class:`Manifest`) is rewritten atomically by a single process (the generation driver).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vipo.data.errors import BadSample, DataError
from vipo.data.images import FrameCodec, decode_image, encode_image, stack_same_size
from vipo.data.flow_store import atomic_write_bytes
from vipo.data.storage import TEMP_SUFFIX, ShardStore

__all__ = [
    "CHECKSUM_KEY",
    "CLIP_IDS_KEY",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "SHARD_SCHEMA",
    "ClipRecord",
    "Manifest",
    "Negative",
    "Prior",
    "Provenance",
    "ShardInfo",
    "ShardWriter",
    "decode_frames",
    "decode_hole",
    "encode_clip",
    "make_clip_id",
    "manifest_hash",
    "open_shard",
    "verify_shard",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

NEGATIVE_TYPE = pa.struct([
    ("kind", pa.string()),
    ("seed", pa.int64()),
    ("frames", pa.list_(pa.binary())),
    ("composited", pa.bool_()),
    ("scores", pa.map_(pa.string(), pa.float64())),
    ("selected", pa.bool_()),
    ("meta", pa.string()),
])
PRIOR_TYPE = pa.struct([("kind", pa.string()), ("frames", pa.list_(pa.binary()))])
SHARD_SCHEMA = pa.schema([
    ("schema_version", pa.int16()),
    ("clip_id", pa.string()),
    ("video_id", pa.string()),
    ("clip_index", pa.int32()),
    ("window_start", pa.int32()),
    ("seed", pa.int64()),
    ("frame_indices", pa.list_(pa.int32())),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("frame_codec", pa.string()),
    ("frames", pa.list_(pa.binary())),
    ("masks", pa.list_(pa.binary())),
    ("negatives", pa.list_(NEGATIVE_TYPE)),
    ("prior", PRIOR_TYPE),
    ("generator", pa.string()),
    ("generator_version", pa.string()),
    ("config_hash", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


def make_clip_id(video_id: str, clip_index: int) -> str:
    return f"{video_id}#{clip_index}"


@dataclass
class Negative:
    """A rejected completion of a clip. ``frames``: uint8 (F,H,W,3) RGB."""

    kind: str
    frames: np.ndarray
    seed: int = 0
    composited: bool = True
    scores: dict[str, float] = field(default_factory=dict)
    selected: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prior:
    """The prior the generator used (``kind``, e.g. ``propainter`` or ``none``) and, optionally, its frames."""

    kind: str = "none"
    frames: np.ndarray | None = None


@dataclass
class Provenance:
    """Who made the rows: generator name and version, the generating config's hash, the time."""

    generator: str
    generator_version: str
    config_hash: str
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


@dataclass
class ClipRecord:
    """One preference sample before encoding.

    ``frames``: uint8 (F,H,W,3) RGB ground truth; ``hole``: bool (F,H,W), True = hole; ``frame_indices``: the
    source frame of each clip frame.
    """

    video_id: str
    clip_index: int
    window_start: int
    seed: int
    frame_indices: Sequence[int]
    frames: np.ndarray
    hole: np.ndarray
    negatives: list[Negative] = field(default_factory=list)
    prior: Prior = field(default_factory=Prior)

    @property
    def clip_id(self) -> str:
        return make_clip_id(self.video_id, self.clip_index)


def _encode_all(frames: np.ndarray | None, codec: FrameCodec, jpeg_quality: int) -> list[bytes]:
    return [] if frames is None else [encode_image(f, codec, jpeg_quality) for f in frames]


def encode_clip(clip: ClipRecord, provenance: Provenance, codec: FrameCodec = "png",
                jpeg_quality: int = 95) -> dict:
    """A :class:`ClipRecord` → one shard row (a dict matching :data:`SHARD_SCHEMA`).

    Raises ValueError when the hole mask or a negative does not match the frames' shape.
    """
    num, height, width = clip.frames.shape[:3]
    if clip.hole.shape != (num, height, width):
        raise ValueError(f"{clip.clip_id}: hole mask shape {clip.hole.shape} != frames {(num, height, width)}")
    for negative in clip.negatives:
        if negative.frames.shape != clip.frames.shape:
            raise ValueError(f"{clip.clip_id}: negative {negative.kind!r} shape {negative.frames.shape} "
                             f"!= frames {clip.frames.shape}")
    return {
        "schema_version": SCHEMA_VERSION,
        "clip_id": clip.clip_id,
        "video_id": clip.video_id,
        "clip_index": clip.clip_index,
        "window_start": clip.window_start,
        "seed": clip.seed,
        "frame_indices": [int(i) for i in clip.frame_indices],
        "height": height,
        "width": width,
        "frame_codec": codec,
        "frames": _encode_all(clip.frames, codec, jpeg_quality),
        "masks": [encode_image(np.where(h, 255, 0).astype(np.uint8), "png") for h in clip.hole],
        "negatives": [
            {
                "kind": n.kind,
                "seed": n.seed,
                "frames": _encode_all(n.frames, codec, jpeg_quality),
                "composited": n.composited,
                "scores": list(n.scores.items()),
                "selected": n.selected,
                "meta": json.dumps(n.meta, sort_keys=True),
            }
            for n in clip.negatives
        ],
        "prior": {"kind": clip.prior.kind, "frames": _encode_all(clip.prior.frames, codec, jpeg_quality)},
        "generator": provenance.generator,
        "generator_version": provenance.generator_version,
        "config_hash": provenance.config_hash,
        "created_at": provenance.created_at,
    }


def decode_frames(encoded: Sequence[bytes], where: str, size: tuple[int, int]) -> np.ndarray:
    """Encoded RGB frames → uint8 (F,H,W,3); each must be ``size`` = (height, width), else :class:`BadSample`."""
    frames = [decode_image(data, f"{where}[{i}]") for i, data in enumerate(encoded)]
    _check_size(frames, where, size)
    return np.stack(frames)


def decode_hole(encoded: Sequence[bytes], where: str, size: tuple[int, int]) -> np.ndarray:
    """Encoded masks (255 = hole) → bool (F,H,W), True = hole; each must be ``size`` = (height, width)."""
    masks = [decode_image(data, f"{where}[{i}]", grey=True) for i, data in enumerate(encoded)]
    _check_size(masks, where, size)
    return np.stack(masks) >= 128


def _check_size(images: list[np.ndarray], where: str, size: tuple[int, int]) -> None:
    for i, image in enumerate(images):
        if image.shape[:2] != tuple(size):
            raise BadSample(f"{where}[{i}]", f"size differs from frames: {image.shape[1]}x{image.shape[0]}, "
                                             f"row says {size[1]}x{size[0]}")
    stack_same_size(images, [f"{where}[{i}]" for i in range(len(images))])


def open_shard(path: str | Path) -> pq.ParquetFile:
    """Open a shard after checking it has every column of :data:`SHARD_SCHEMA` and our schema version."""
    path = Path(path)
    try:
        shard = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: not a readable Parquet shard ({err}); delete it and regenerate") from None
    missing = set(SHARD_SCHEMA.names) - set(shard.schema_arrow.names)
    if missing:
        raise DataError(f"{path}: not a vipo shard, columns missing: {sorted(missing)}")
    versions = set(shard.read(columns=["schema_version"]).column(0).to_pylist())
    if versions != {SCHEMA_VERSION} and shard.metadata.num_rows:
        raise DataError(f"{path}: shard schema version {sorted(versions)}, this vipo reads version "
                        f"{SCHEMA_VERSION}; regenerate the shards or use the vipo version that wrote them")
    return shard


CHECKSUM_KEY = "vipo.data_sha256"
"""Footer key: sha256 of every byte before the footer (the row groups), so a shard proves its own integrity."""
CLIP_IDS_KEY = "vipo.clip_ids"
"""Footer key: the clip ids of the rows (JSON list), readable without touching the data."""


@dataclass(frozen=True)
class ShardInfo:
    """A committed shard: file name (relative to its store), row count, the clip ids it holds, the sha256 of its
    row groups (see :data:`CHECKSUM_KEY`) and its size in bytes."""

    name: str
    rows: int
    clip_ids: tuple[str, ...]
    checksum: str = ""
    bytes: int = 0


class _HashingSink:
    """A write-only file that hashes and counts what passes through it (Parquet writes via ``write``)."""

    def __init__(self, stream):
        self.stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.stream.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.stream.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
            self.closed = True


class ShardWriter:
    """Write one shard atomically: rows go to a hidden temp file, :meth:`commit` moves it into place.

    ``path`` is a local path, or ``store`` + ``path`` = a file name in a :class:`~vipo.data.storage.ShardStore`
    (any pyarrow filesystem). The footer records :data:`CHECKSUM_KEY`, :data:`CLIP_IDS_KEY` and ``metadata``.
    The temp name carries ``temp_tag`` (the writing run) so a folder's owner knows whose leftovers it sees.
    Use as a context manager: leaving the block normally commits, an exception deletes the temp file.
    """

    def __init__(self, path: str | Path, row_group_size: int = 4, *, store: ShardStore | None = None,
                 metadata: dict[str, str] | None = None, temp_tag: str | None = None):
        if store is None:
            path = Path(path)
            store, path = ShardStore(str(path.parent)), path.name
        self.store = store
        self.name = str(path)
        self.row_group_size = row_group_size
        self.metadata = dict(metadata or {})
        self._temp = f".{self.name}.{temp_tag or os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
        self._sink: _HashingSink | None = None
        self._writer: pq.ParquetWriter | None = None
        self._clip_ids: list[str] = []
        self.info: ShardInfo | None = None

    @property
    def path(self) -> Path:
        return Path(self.store.path(self.name))

    def write_rows(self, rows: Sequence[dict]) -> None:
        self.write_table(pa.Table.from_pylist(list(rows), schema=SHARD_SCHEMA))

    def write_table(self, table: pa.Table) -> None:
        table = table.select(SHARD_SCHEMA.names)
        if not table.schema.equals(SHARD_SCHEMA):
            # Ray Data widens ints and pickles lists of dicts into an extension type; no cast undoes that, but
            # rebuilding from Python values normalises every such variant.
            table = pa.Table.from_pylist(table.to_pylist(), schema=SHARD_SCHEMA)
        if self._writer is None:
            self.store.ensure()
            stream = (open(self.store.path(self._temp), "wb") if self.store.is_local
                      else self.store.filesystem.open_output_stream(self.store.path(self._temp)))
            self._sink = _HashingSink(stream)
            # Frames are already encoded: Parquet compression, dictionaries and min/max statistics over
            # megabyte binaries only cost time and footer size.
            self._writer = pq.ParquetWriter(self._sink, SHARD_SCHEMA, compression="none", use_dictionary=False,
                                            write_statistics=False)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self._clip_ids.extend(table.column("clip_id").to_pylist())

    def commit(self) -> ShardInfo:
        if self._writer is None or self._sink is None:
            raise ValueError(f"{self.store.where(self.name)}: nothing written; an empty shard is not committed")
        # Every row group is in the sink by now: what it hashed is exactly the bytes before the footer.
        checksum = self._sink.sha256.hexdigest()
        self._writer.add_key_value_metadata({**self.metadata, CHECKSUM_KEY: checksum,
                                             CLIP_IDS_KEY: json.dumps(self._clip_ids)})
        self._writer.close()
        if self.store.is_local:
            # The rename must not overtake the data: without fsync a crash could leave a complete name over a hole.
            self._sink.flush()
            os.fsync(self._sink.stream.fileno())
        self._sink.close()
        self.store.filesystem.move(self.store.path(self._temp), self.store.path(self.name))
        self.info = ShardInfo(self.name, len(self._clip_ids), tuple(self._clip_ids), checksum, self._sink.size)
        return self.info

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if self._sink is not None:
                self._sink.close()
        except OSError:
            pass  # the file is being thrown away; a full disk may refuse even its footer
        finally:
            self.store.delete(self._temp)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


HASH_CHUNK = 8 * 1024 * 1024


def verify_shard(store: ShardStore, name: str) -> tuple[ShardInfo, dict[str, str]]:
    """Check a committed shard of ``store`` → (its :class:`ShardInfo`, its footer metadata).

    Raises :class:`DataError` saying what is wrong: missing, footer unreadable (truncated), no vipo checksum,
    row count and clip ids disagree, or the row groups' sha256 differs from the footer's.
    """
    where = store.where(name)
    if not store.exists(name):
        raise DataError(f"{where}: shard missing")
    try:
        with store.open_input(name) as handle:
            parquet = pq.ParquetFile(handle)
            metadata = {k.decode(): v.decode() for k, v in (parquet.metadata.metadata or {}).items()}
            rows = parquet.metadata.num_rows
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{where}: footer unreadable ({err})") from None
    if CHECKSUM_KEY not in metadata or CLIP_IDS_KEY not in metadata:
        raise DataError(f"{where}: no vipo checksum in the footer")
    clip_ids = tuple(json.loads(metadata[CLIP_IDS_KEY]))
    if len(clip_ids) != rows:
        raise DataError(f"{where}: footer lists {len(clip_ids)} clips for {rows} rows")
    size = store.size(name)
    sha256 = hashlib.sha256()
    with store.open_input(name) as handle:
        handle.seek(size - 8)
        data_end = size - 8 - int.from_bytes(handle.read(4), "little")
        handle.seek(0)
        remaining = data_end
        while remaining > 0:
            chunk = handle.read(min(HASH_CHUNK, remaining))
            if not chunk:
                break
            sha256.update(chunk)
            remaining -= len(chunk)
    if sha256.hexdigest() != metadata[CHECKSUM_KEY]:
        raise DataError(f"{where}: checksum mismatch, the row groups changed after the shard was written")
    return ShardInfo(name, rows, clip_ids, metadata[CHECKSUM_KEY], size), metadata


ClipStatus = Literal["done", "skipped"]


class Manifest:
    """``manifest.json`` of a shard folder: the shards with their row counts and checksums, and each clip's status.

    Format (JSON)::

        {"format": "vipo-shards", "schema_version": 1, "storage": "s3://bucket/prefix" (only when not here),
         "shards": {"shard-<id>.parquet": {"rows": 12, "sha256": "<row groups>", "bytes": 123,
                                           "created_at": "<ISO time>"}, ...},
         "clips": {"<clip_id>": {"status": "done", "shard": "shard-...parquet"},
                   "<clip_id>": {"status": "skipped", "reason": "too few frames: 12 < 22", "input_error": true},
                   ...}}

    Shard files live in ``storage`` (a path or pyarrow filesystem URI; default: the manifest's folder). A
    generation run resumes by skipping :meth:`finished` clips; trainers read :meth:`shard_paths`. Loading can
    adopt verified shards that are in the folder but not listed (a writer that died between committing its shard
    and saving the manifest). A clip written twice counts in the newest shard only.
    """

    def __init__(self, folder: str | Path, shards: dict | None = None, clips: dict | None = None,
                 storage: str | None = None):
        self.folder = Path(folder)
        self.shards: dict[str, dict] = shards or {}
        self.clips: dict[str, dict] = clips or {}
        self.storage = storage

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def store(self) -> ShardStore:
        return ShardStore(self.storage or str(self.folder))

    @classmethod
    def load(cls, folder: str | Path, adopt_unlisted: bool = True) -> "Manifest":
        """The manifest of ``folder`` (empty when there is none yet)."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"{path}: corrupt manifest ({err}); delete it to rebuild from the shards") from None
            if data.get("schema_version") != SCHEMA_VERSION:
                raise DataError(f"{path}: manifest schema version {data.get('schema_version')}, this vipo reads "
                                f"{SCHEMA_VERSION}")
            manifest = cls(folder, data["shards"], data["clips"], data.get("storage"))
        else:
            manifest = cls(folder)
        if adopt_unlisted and folder.is_dir():
            for name in manifest.unlisted():
                manifest.add_shard(verify_shard(manifest.store, name)[0])
        return manifest

    def unlisted(self) -> list[str]:
        """Shard files in the store that the manifest does not list (temporary files left out)."""
        return [name for name in self.store.list()
                if name.endswith(".parquet") and not name.startswith(".") and name not in self.shards]

    def add_shard(self, info: ShardInfo) -> None:
        self.shards[info.name] = {"rows": info.rows, "sha256": info.checksum, "bytes": info.bytes,
                                  "created_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        for clip_id in info.clip_ids:
            self.clips[clip_id] = {"status": "done", "shard": info.name}

    def remove_shard(self, name: str) -> list[str]:
        """Forget shard ``name``: its clips are to do again. Returns those clip ids."""
        self.shards.pop(name, None)
        lost = [clip_id for clip_id, entry in self.clips.items() if entry.get("shard") == name]
        for clip_id in lost:
            del self.clips[clip_id]
        return lost

    def mark_skipped(self, clip_id: str, reason: str, input_error: bool = False) -> None:
        """Record a skipped clip; ``input_error``: its input was bad (a fixed input makes it worth retrying)."""
        self.clips[clip_id] = {"status": "skipped", "reason": reason, **({"input_error": True} if input_error else {})}

    def input_errors(self) -> list[str]:
        """Clip ids skipped because their input was bad."""
        return [clip_id for clip_id, entry in self.clips.items() if entry.get("input_error")]

    def status(self, clip_id: str) -> ClipStatus | None:
        entry = self.clips.get(clip_id)
        return entry["status"] if entry else None

    def finished(self) -> set[str]:
        """Clip ids a resumed generation run must not redo (done or skipped)."""
        return set(self.clips)

    def done_rows(self, shard_name: str, clip_ids: Sequence[str]) -> list[int]:
        """Row numbers of ``clip_ids`` (a shard's clip column) that this manifest counts as done in that shard."""
        return [i for i, c in enumerate(clip_ids) if self.clips.get(c, {}).get("shard") == shard_name]

    def shard_paths(self) -> list[Path]:
        folder = self.store.local_folder
        if folder is None:
            raise DataError(f"{self.path}: shards are in {self.storage}; readers need them on a local or shared "
                            f"path (copy them next to the manifest or mount the store)")
        return [folder / name for name in sorted(self.shards)]

    @property
    def num_rows(self) -> int:
        return sum(s["rows"] for s in self.shards.values())

    def save(self) -> Path:
        """Write ``manifest.json`` atomically (temp file + fsync + rename)."""
        data = {"format": "vipo-shards", "schema_version": SCHEMA_VERSION, "shards": self.shards,
                "clips": self.clips, **({"storage": self.storage} if self.storage else {})}
        atomic_write_bytes(json.dumps(data, indent=1, sort_keys=True).encode(), self.path)
        return self.path


def manifest_hash(path: str | Path) -> str:
    """sha256 (hex) of a manifest file, or of ``<folder>/manifest.json`` when given its folder: the data identity
    a training run records."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; generate the shards first")
    return hashlib.sha256(path.read_bytes()).hexdigest()
