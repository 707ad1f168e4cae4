"""Preference shards: round trip, schema version, atomic writes, manifest, Ray Data sink."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import pickle
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vipo.data import (
    MANIFEST_NAME,
    BadSample,
    SAMPLE_DATA_ROOT,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    ClipRecord,
    DataError,
    Manifest,
    Negative,
    Prior,
    Provenance,
    ShardInfo,
    ShardWriter,
    decode_frames,
    decode_hole,
    encode_clip,
    manifest_hash,
    open_shard,
)
from vipo.data.images import decode_image, encode_image, read_frames
from vipo.data.shards import CHECKSUM_KEY, verify_shard
from vipo.data.storage import ShardStore

PROVENANCE = Provenance("vipo.generate", "0.1.0", "abc123", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))


def make_clip(clip_index: int, frames: int = 3, size=(16, 24), seed: int = 0,
              video_id: str = "davis/bear") -> ClipRecord:
    rng = np.random.default_rng(seed + clip_index)
    gt = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
    hole = np.zeros((frames, *size), bool)
    hole[:, 4:10, 5:15] = True
    return ClipRecord(
        video_id=video_id, clip_index=clip_index, window_start=7, seed=seed + clip_index,
        frame_indices=[7, 9, 11][:frames], frames=gt, hole=hole,
        negatives=[
            Negative("blur", rng.integers(0, 256, gt.shape, dtype=np.uint8), seed=1, scores={"lpips": 0.25}),
            Negative("flicker", rng.integers(0, 256, gt.shape, dtype=np.uint8), seed=2, composited=False,
                     selected=False, meta={"segments": 2}),
        ],
        prior=Prior("propainter", rng.integers(0, 256, gt.shape, dtype=np.uint8)),
    )


def write_shard(folder, name, clips, codec="png", row_group_size=2) -> ShardInfo:
    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(folder / name, row_group_size) as writer:
        writer.write_rows([encode_clip(c, PROVENANCE, codec) for c in clips])
    return writer.info


def test_png_round_trip_is_exact(tmp_path):
    clips = [make_clip(i) for i in range(5)]
    info = write_shard(tmp_path, "shard-0.parquet", clips)
    assert (info.name, info.rows, info.clip_ids) == ("shard-0.parquet", 5, tuple(f"davis/bear#{i}" for i in range(5)))
    assert info.bytes == (tmp_path / "shard-0.parquet").stat().st_size
    shard = open_shard(tmp_path / "shard-0.parquet")
    assert shard.num_row_groups == 3 and shard.metadata.num_rows == 5  # row groups of 2 stream small
    rows = shard.read().to_pylist()
    for clip, row in zip(clips, rows):
        size = (row["height"], row["width"])
        assert size == (16, 24) and row["frame_codec"] == "png" and row["schema_version"] == SCHEMA_VERSION
        np.testing.assert_array_equal(decode_frames(row["frames"], "gt", size), clip.frames)
        np.testing.assert_array_equal(decode_hole(row["masks"], "m", size), clip.hole)
        for negative, stored in zip(clip.negatives, row["negatives"]):
            np.testing.assert_array_equal(decode_frames(stored["frames"], "n", size), negative.frames)
            assert (stored["kind"], stored["seed"], stored["composited"], stored["selected"]) == (
                negative.kind, negative.seed, negative.composited, negative.selected)
            assert dict(stored["scores"]) == negative.scores and json.loads(stored["meta"]) == negative.meta
        assert row["prior"]["kind"] == "propainter"
        np.testing.assert_array_equal(decode_frames(row["prior"]["frames"], "p", size), clip.prior.frames)
        assert (row["video_id"], row["clip_index"], row["window_start"], row["seed"], row["frame_indices"]) == (
            clip.video_id, clip.clip_index, 7, clip.seed, [7, 9, 11])
        assert (row["generator"], row["generator_version"], row["config_hash"], row["created_at"]) == (
            "vipo.generate", "0.1.0", "abc123", PROVENANCE.created_at)


def test_masks_are_png_255_hole(tmp_path):
    from PIL import Image
    import io

    write_shard(tmp_path, "s.parquet", [make_clip(0)])
    row = pq.read_table(tmp_path / "s.parquet").to_pylist()[0]
    with Image.open(io.BytesIO(row["masks"][0])) as mask:
        assert mask.format == "PNG" and mask.mode == "L"
        values = np.asarray(mask)
    assert set(np.unique(values)) == {0, 255} and (values[4:10, 5:15] == 255).all()


def test_jpeg_frames_are_close_and_smaller(tmp_path):
    clip = make_clip(0, size=(64, 64))
    clip.frames = read_frames(sorted((SAMPLE_DATA_ROOT / "JPEGImages/480p/bunny").glob("*.jpg"))[:3])[:, :64, :64]
    for negative in clip.negatives:
        negative.frames = clip.frames.copy()
    clip.prior.frames = None
    write_shard(tmp_path, "png.parquet", [clip], "png")
    write_shard(tmp_path, "jpg.parquet", [clip], "jpeg")
    row = pq.read_table(tmp_path / "jpg.parquet").to_pylist()[0]
    assert row["frame_codec"] == "jpeg" and row["prior"]["frames"] == []
    frames = decode_frames(row["frames"], "gt", (64, 64))
    assert np.abs(frames.astype(int) - clip.frames).mean() < 2.5  # quality 95 on a real image
    np.testing.assert_array_equal(decode_hole(row["masks"], "m", (64, 64)), clip.hole)  # masks stay lossless
    assert os.path.getsize(tmp_path / "jpg.parquet") < os.path.getsize(tmp_path / "png.parquet")


def test_encode_rejects_mismatched_shapes():
    clip = make_clip(0)
    clip.hole = clip.hole[:, :8]
    with pytest.raises(ValueError, match="hole mask shape"):
        encode_clip(clip, PROVENANCE)
    clip = make_clip(0)
    clip.negatives[0].frames = clip.negatives[0].frames[:2]
    with pytest.raises(ValueError, match="negative 'blur' shape"):
        encode_clip(clip, PROVENANCE)


def test_schema_version_and_foreign_files_rejected(tmp_path):
    write_shard(tmp_path, "s.parquet", [make_clip(0)])
    table = pq.read_table(tmp_path / "s.parquet")
    future = table.set_column(0, "schema_version", pa.array([SCHEMA_VERSION + 1], pa.int16()))
    pq.write_table(future, tmp_path / "future.parquet")
    with pytest.raises(DataError, match=r"future.parquet: shard schema version \[2\], this vipo reads version 1"):
        open_shard(tmp_path / "future.parquet")
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(DataError, match="not a vipo shard, columns missing"):
        open_shard(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet shard"):
        open_shard(tmp_path / "junk.parquet")
    assert SHARD_SCHEMA.names[0] == "schema_version"


def test_zstd_frames_round_trip_exactly_and_name_a_truncated_frame(tmp_path):
    clips = [make_clip(i) for i in range(2)]
    write_shard(tmp_path, "shard-z.parquet", clips, codec="zstd")
    rows = open_shard(tmp_path / "shard-z.parquet").read().to_pylist()
    for clip, row in zip(clips, rows):
        assert row["frame_codec"] == "zstd"
        np.testing.assert_array_equal(decode_frames(row["frames"], "gt", (16, 24)), clip.frames)
        np.testing.assert_array_equal(decode_frames(row["negatives"][0]["frames"], "n", (16, 24)),
                                      clip.negatives[0].frames)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(decode_image(encode_image(grey, "zstd"), "g", grey=True), grey)
    frame = rows[0]["frames"][1]
    with pytest.raises(BadSample, match=r"gt\[1\].*corrupt or truncated"):
        decode_frames([rows[0]["frames"][0], frame[: len(frame) // 2]], "gt", (16, 24))


def test_checksum_covers_the_row_groups_and_verify_names_what_is_wrong(tmp_path):
    info = write_shard(tmp_path, "shard-0.parquet", [make_clip(i) for i in range(3)])
    path = tmp_path / "shard-0.parquet"
    data = path.read_bytes()
    footer_length = int.from_bytes(data[-8:-4], "little")
    # Independent reference: sha256 of every byte before the Parquet footer (layout from the Parquet spec).
    assert info.checksum == hashlib.sha256(data[: len(data) - 8 - footer_length]).hexdigest()
    assert pq.ParquetFile(path).metadata.metadata[CHECKSUM_KEY.encode()].decode() == info.checksum
    store = ShardStore(str(tmp_path))
    verified, footer = verify_shard(store, "shard-0.parquet")
    assert verified == info and json.loads(footer["vipo.clip_ids"]) == list(info.clip_ids)

    flipped = bytearray(data)
    flipped[100] ^= 0xFF  # inside the first row group
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="shard-0.parquet: checksum mismatch"):
        verify_shard(store, "shard-0.parquet")
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="shard-0.parquet: footer unreadable"):
        verify_shard(store, "shard-0.parquet")
    path.unlink()
    with pytest.raises(DataError, match="shard-0.parquet: shard missing"):
        verify_shard(store, "shard-0.parquet")


def test_store_writes_through_a_pyarrow_filesystem_uri(tmp_path):
    store = ShardStore(f"file://{tmp_path}/bucket/prefix")
    assert not store.is_local or store.local_folder == tmp_path / "bucket" / "prefix"
    with ShardWriter("shard-u.parquet", store=store, metadata={"vipo.content_hash": "abc"}) as writer:
        writer.write_rows([encode_clip(make_clip(0), PROVENANCE)])
    assert store.list() == ["shard-u.parquet"]  # no temp file left
    info, footer = verify_shard(store, "shard-u.parquet")
    assert info == writer.info and footer["vipo.content_hash"] == "abc"
    restored = pickle.loads(pickle.dumps(store))  # what a Ray worker receives: the URI, resolved there
    assert restored == store and restored.list() == ["shard-u.parquet"]


def test_exception_mid_write_leaves_nothing(tmp_path):
    write_shard(tmp_path, "shard-0.parquet", [make_clip(0)])
    manifest = Manifest.load(tmp_path)
    manifest.save()
    before = manifest_hash(tmp_path)
    with pytest.raises(RuntimeError, match="generator crashed"):
        with ShardWriter(tmp_path / "shard-1.parquet") as writer:
            writer.write_rows([encode_clip(make_clip(1), PROVENANCE)])
            raise RuntimeError("generator crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, "shard-0.parquet"]
    assert manifest_hash(tmp_path) == before
    assert Manifest.load(tmp_path).shard_paths() == [tmp_path / "shard-0.parquet"]


def _write_then_hang(folder, ready):
    writer = ShardWriter(folder / "shard-9.parquet", row_group_size=1)
    writer.write_rows([encode_clip(make_clip(i), PROVENANCE) for i in range(3)])
    ready.set()
    signal.pause()  # killed here: rows written, footer and rename never happen


def test_writer_killed_mid_shard_leaves_no_readable_partial(tmp_path):
    context = multiprocessing.get_context("fork")  # inherits the imported modules: starts in milliseconds
    ready = context.Event()
    child = context.Process(target=_write_then_hang, args=(tmp_path, ready))
    child.start()
    assert ready.wait(30)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not (tmp_path / "shard-9.parquet").exists()
    (temp,) = tmp_path.iterdir()
    assert temp.name.startswith(".shard-9.parquet.") and temp.name.endswith(".tmp") and temp.stat().st_size > 0
    with pytest.raises(pa.ArrowInvalid):
        pq.ParquetFile(temp)  # no footer: a partial file can never pass as a shard
    manifest = Manifest.load(tmp_path)  # readers and resume ignore it
    assert manifest.shards == {} and manifest.clips == {}


def test_manifest_status_resume_and_hash(tmp_path):
    manifest = Manifest.load(tmp_path)
    assert manifest.shards == {} and not (tmp_path / MANIFEST_NAME).exists()
    manifest.add_shard(write_shard(tmp_path, "shard-a.parquet", [make_clip(0), make_clip(1)]))
    manifest.mark_skipped("davis/bear#2", "too few frames: 12 < 22")
    path = manifest.save()
    assert manifest_hash(tmp_path) == manifest_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()

    loaded = Manifest.load(tmp_path)
    assert loaded.num_rows == 2 and loaded.shard_paths() == [tmp_path / "shard-a.parquet"]
    assert loaded.status("davis/bear#0") == "done" and loaded.status("davis/bear#2") == "skipped"
    assert loaded.clips["davis/bear#2"]["reason"] == "too few frames: 12 < 22"
    assert loaded.status("davis/bear#3") is None
    assert loaded.finished() == {"davis/bear#0", "davis/bear#1", "davis/bear#2"}

    loaded.add_shard(write_shard(tmp_path, "shard-b.parquet", [make_clip(3)]))
    loaded.save()
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert data["format"] == "vipo-shards" and set(data["shards"]) == {"shard-a.parquet", "shard-b.parquet"}
    with pytest.raises(DataError, match="manifest not found"):
        manifest_hash(tmp_path / "nowhere")


def test_manifest_hash_changes_with_content(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.mark_skipped("v#0", "corrupt")
    manifest.save()
    first = manifest_hash(tmp_path)
    manifest.mark_skipped("v#1", "corrupt")
    manifest.save()
    assert manifest_hash(tmp_path) != first


def test_manifest_adopts_unlisted_shard_and_dedups(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.add_shard(write_shard(tmp_path, "shard-a.parquet", [make_clip(0), make_clip(1)]))
    manifest.save()
    # A writer renamed shard-b into place, then died before saving the manifest; clip 1 was regenerated in it.
    write_shard(tmp_path, "shard-b.parquet", [make_clip(1), make_clip(2)])
    resumed = Manifest.load(tmp_path)
    assert set(resumed.shards) == {"shard-a.parquet", "shard-b.parquet"}
    assert resumed.clips["davis/bear#1"]["shard"] == "shard-b.parquet"
    assert resumed.done_rows("shard-a.parquet", ["davis/bear#0", "davis/bear#1"]) == [0]
    assert resumed.done_rows("shard-b.parquet", ["davis/bear#1", "davis/bear#2"]) == [0, 1]
    # Trainers read exactly what the manifest file says.
    assert set(Manifest.load(tmp_path, adopt_unlisted=False).shards) == {"shard-a.parquet"}
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DataError, match="corrupt manifest"):
        Manifest.load(tmp_path)


@pytest.mark.ray
def test_ray_datasink_writes_shards_and_manifest(tmp_path, ray_local):
    import ray

    from vipo.data.ray_io import ClipShardDatasink

    rows = [dict(encode_clip(make_clip(i, frames=2, size=(8, 8)), PROVENANCE), skip_reason="") for i in range(4)]
    skipped = dict(rows[0], clip_id="davis/bear#9", skip_reason="unreadable video file")
    ds = ray.data.from_items(rows + [skipped], override_num_blocks=2)
    ds.write_datasink(ClipShardDatasink(tmp_path, run_tag="t0", row_group_size=1))
    manifest = Manifest.load(tmp_path, adopt_unlisted=False)
    assert manifest.num_rows == 4 and all(p.name.startswith("shard-t0-") for p in manifest.shard_paths())
    assert manifest.clips["davis/bear#9"] == {"status": "skipped", "reason": "unreadable video file"}
    read = pa.concat_tables([open_shard(p).read() for p in manifest.shard_paths()])
    assert sorted(read.column("clip_id").to_pylist()) == [f"davis/bear#{i}" for i in range(4)]
    assert read.schema.field("negatives").type == SHARD_SCHEMA.field("negatives").type
    first = read.filter(pa.compute.equal(read["clip_id"], "davis/bear#0")).to_pylist()[0]
    np.testing.assert_array_equal(decode_frames(first["frames"], "gt", (8, 8)),
                                  make_clip(0, frames=2, size=(8, 8)).frames)
    assert not list(tmp_path.glob(".*.tmp"))
