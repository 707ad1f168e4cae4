"""Training datasets: FinetuneDataset (stages 1/2), DPODataset (stage 3), VaeClipDataset; torch and Ray paths."""

from __future__ import annotations

import datetime as dt
import json
import threading

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from vipo.data import (
    SAMPLE_DATA_ROOT,
    BadSample,
    ClipRecord,
    DataError,
    DPODataConfig,
    DPODataset,
    FinetuneDataConfig,
    FinetuneDataset,
    Manifest,
    Negative,
    Prior,
    Provenance,
    ShardWriter,
    VaeClipDataset,
    VaeDataConfig,
    encode_clip,
    shards_for_rank,
)
from vipo.config import ConfigError, validate_config
from vipo.data.datasets import _RayIndexLoader
from vipo.data.images import read_frames

PROVENANCE = Provenance("test", "0", "cafe", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    """A real CLIPTokenizer over a tiny hand-written BPE vocabulary (no download)."""
    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges = []
    for word in ("clean", "background"):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        for part in parts:
            vocab.setdefault(part, len(vocab))
        merged = parts[0]
        for part in parts[1:]:
            merges.append(f"{merged} {part}")
            merged += part
            vocab.setdefault(merged, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=6,
                         pad_token="<|endoftext|>")


def davis_config(**kwargs) -> FinetuneDataConfig:
    data = {"sources": [{"kind": "davis", "root": str(SAMPLE_DATA_ROOT)}],
            "clip": {"nframes": 6, "resolution": [90, 160]}}
    data.update(kwargs)
    return validate_config(FinetuneDataConfig, data)


# --- FinetuneDataset -----------------------------------------------------------------------------------------


def test_finetune_sample_fields_against_the_frames_on_disk(clip_tokenizer):
    dataset = FinetuneDataset(davis_config(), clip_tokenizer)
    assert len(dataset) == 30  # 3 DAVIS train videos × 10
    raw = dataset.load_raw(4, epoch=0)
    sample = dataset[4]
    assert sample["pixel_values"].shape == (6, 3, 90, 160) and sample["masks"].shape == (6, 1, 90, 160)
    # Output size equals the bunny's own size: pixels are exactly the JPEGs at the window's indices.
    video = dataset.index[4]
    expected = read_frames([video.frames[i] for i in raw["frame_indices"]])
    np.testing.assert_allclose(sample["pixel_values"].permute(0, 2, 3, 1).numpy(), expected / 127.5 - 1, atol=1e-6)
    hole = torch.from_numpy(raw["hole"])[:, None]
    assert hole.any() and not hole.all()
    assert torch.equal(sample["masks"], (~hole).float())  # conditioning channel: 1 = known
    masked = sample["conditioning_pixel_values"]
    assert (masked.masked_select(hole) == -1).all()
    assert torch.equal(masked.masked_select(~hole), sample["pixel_values"].masked_select(~hole))
    assert sample["input_ids"].tolist() == [0, 10, 27, 1, 1, 1]  # "clean background", padded
    assert abs(np.diff(raw["frame_indices"])).tolist() == [1] * 5  # DAVIS 24 fps → stride 1


def test_finetune_reproducible_per_seed_epoch_index(clip_tokenizer):
    dataset = FinetuneDataset(davis_config(), clip_tokenizer)
    again = FinetuneDataset(davis_config(), clip_tokenizer)
    first = dataset[7]
    assert all(torch.equal(first[k], again[7][k]) for k in first)
    dataset.set_epoch(1)
    assert not torch.equal(first["masks"], dataset[7]["masks"])
    other_seed = FinetuneDataset(davis_config(seed=5), clip_tokenizer)
    assert not torch.equal(first["masks"], other_seed[7]["masks"])
    reversed_count = sum(np.diff(dataset.load_raw(i, 0)["frame_indices"])[0] < 0 for i in range(30))
    assert 5 <= reversed_count <= 25  # p = 0.5 over 30 draws


def test_finetune_empty_prompts_and_plain_callable_tokenizer():
    ids = {"clean background": [7, 8, 0], "": [0, 0, 0]}
    empty = FinetuneDataset(davis_config(proportion_empty_prompts=1.0), ids.__getitem__)
    assert empty[0]["input_ids"].tolist() == [0, 0, 0]
    some = FinetuneDataset(davis_config(proportion_empty_prompts=0.5), ids.__getitem__)
    drawn = [some.load_raw(i, 0)["empty_prompt"] for i in range(30)]
    assert 5 <= sum(drawn) <= 25


def test_finetune_square_crop_resolution(clip_tokenizer):
    dataset = FinetuneDataset(davis_config(clip={"nframes": 4, "resolution": 32}), clip_tokenizer)
    sample = dataset[12]
    assert sample["pixel_values"].shape == (4, 3, 32, 32)
    assert sample["pixel_values"].min() >= -1 and sample["pixel_values"].max() <= 1


def test_finetune_bad_videos_skipped_and_counted_or_strict(tmp_path, clip_tokenizer):
    for name in ("good", "corrupt", "odd_size", "short"):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(3 if name == "short" else 6):
            Image.fromarray(np.full((12, 16, 3), 40 * i, np.uint8)).save(folder / f"{i:05d}.png")
    (tmp_path / "empty").mkdir()
    for i in range(6):  # every frame of "corrupt" truncated, so every window fails
        data = (tmp_path / "corrupt" / f"{i:05d}.png").read_bytes()
        (tmp_path / "corrupt" / f"{i:05d}.png").write_bytes(data[:40])
    for i in range(6):
        Image.fromarray(np.zeros((12, 20 if i % 2 else 16, 3), np.uint8)).save(tmp_path / "odd_size" / f"{i:05d}.png")
    config = {"sources": [{"kind": "frame_folders", "root": str(tmp_path)}],
              "clip": {"nframes": 5, "resolution": 8}}
    dataset = FinetuneDataset(validate_config(FinetuneDataConfig, config), clip_tokenizer)
    assert len(dataset) == 3 and dataset.skips.counts == {"empty folder": 1, "too few frames": 1}
    assert [v.video_id for v in dataset.index] == ["frame_folders/corrupt", "frame_folders/good",
                                                   "frame_folders/odd_size"]
    assert dataset[0]["pixel_values"].shape == (5, 3, 8, 8)  # corrupt → skipped ahead to "good"
    dataset[2]  # odd_size → wraps around to the corrupt one, then "good"
    where = dict(dataset.skips.entries)
    assert any("corrupt/0000" in w for w in where) and any("odd_size/0000" in w for w in where)
    assert dataset.skips.counts["corrupt or truncated image"] == 2
    assert dataset.skips.counts["frame of different size"] == 1
    strict = validate_config(FinetuneDataConfig, {**config, "strict": True})
    with pytest.raises(BadSample, match=r"corrupt/0000\d.png: corrupt or truncated image.*set strict: false"):
        FinetuneDataset(strict, clip_tokenizer, videos=dataset.index[:1])[0]
    # Ray Data's loader (the Ray Train path) reports it the same way, fix included.
    strict_dataset = FinetuneDataset(strict, clip_tokenizer, videos=dataset.index[:1])
    with pytest.raises(BadSample, match=r"corrupt/0000\d.png: corrupt or truncated image.*set strict: false"):
        _RayIndexLoader(strict_dataset, epoch=0)({"id": 0})
    with pytest.raises(BadSample, match="empty: empty folder"):
        FinetuneDataset(strict, clip_tokenizer)


# --- DPODataset ------------------------------------------------------------------------------------------------


def sample_clip(index: int, kinds=("blur", "flicker", "flicker")) -> ClipRecord:
    """6 real 32×32 frames from the sample data, a moving box hole, negatives made by simple degradations."""
    frames = read_frames(sorted((SAMPLE_DATA_ROOT / "JPEGImages/480p/bunny").glob("*.jpg"))[index:index + 6])
    frames = np.ascontiguousarray(frames[:, 20:52, 40:72])
    hole = np.zeros(frames.shape[:3], bool)
    for t in range(6):
        hole[t, 8:20, 6 + t:18 + t] = True
    negatives = [Negative(kind, np.clip(frames.astype(int) + 30 * (n + 1), 0, 255).astype(np.uint8), seed=n,
                          selected=n != 2) for n, kind in enumerate(kinds)]
    return ClipRecord("davis/bunny", index, index, index, range(index, index + 6), frames, hole, negatives,
                      Prior("propainter", frames[::-1].copy()))


def write_shards(folder, groups: list[list[ClipRecord]]) -> Manifest:
    manifest = Manifest(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for number, clips in enumerate(groups):
        with ShardWriter(folder / f"shard-{number}.parquet", row_group_size=2) as writer:
            writer.write_rows([encode_clip(c, PROVENANCE) for c in clips])
        manifest.add_shard(writer.info)
    manifest.save()
    return manifest


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, [[sample_clip(i) for i in range(3)], [sample_clip(i) for i in range(3, 5)]])
    return folder


def dpo(shard_dir, tokenizer, **kwargs) -> DPODataset:
    return DPODataset(validate_config(DPODataConfig, {"shards": str(shard_dir), **kwargs}), tokenizer)


def test_include_prior_is_gone():
    # The generator never stores prior frames and no stage reads them: the option was removed, not left to fail.
    with pytest.raises(ConfigError, match="include_prior"):
        validate_config(DPODataConfig, {"shards": ".", "include_prior": True})


def test_dpo_fields_match_the_stored_clip(shard_dir, clip_tokenizer):
    dataset = dpo(shard_dir, clip_tokenizer, negative_policy="fixed", negative_kind="blur")
    assert len(dataset) == 5
    sample = dataset[3]
    clip = sample_clip(3)
    expected = {"pixel_values_pos": (6, 3, 32, 32), "pixel_values_neg": (6, 3, 32, 32),
                "conditioning_pos": (6, 3, 32, 32), "conditioning_neg": (6, 3, 32, 32), "masks": (6, 1, 32, 32),
                "mask_hole": (6, 1, 32, 32), "mask_boundary": (6, 1, 32, 32), "mask_context": (6, 1, 32, 32),
                "input_ids": (6,)}
    assert {k: tuple(v.shape) for k, v in sample.items()} == {**expected, "neg_type": ()}
    assert dataset.negative_kinds == ["blur", "flicker"] and sample["neg_type"].item() == 0
    to_pixels = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    assert torch.equal(sample["pixel_values_pos"], to_pixels(clip.frames))  # PNG: exact
    assert torch.equal(sample["pixel_values_neg"], to_pixels(clip.negatives[0].frames))
    hole = torch.from_numpy(clip.hole)[:, None]
    assert torch.equal(sample["masks"], 1 - hole.float())
    assert torch.equal(sample["mask_hole"], hole.float())
    for name in ("pos", "neg"):
        cond, pixels = sample[f"conditioning_{name}"], sample[f"pixel_values_{name}"]
        assert (cond.masked_select(hole) == -1).all()
        assert torch.equal(cond.masked_select(~hole), pixels.masked_select(~hole))
    # Regions against OpenCV: boundary = dilate(hole, 7×7) − hole, context = the rest.
    dilated = np.stack([cv2.dilate(h.astype(np.uint8), np.ones((7, 7), np.uint8)) for h in clip.hole])
    assert torch.equal(sample["mask_boundary"][:, 0], torch.from_numpy((dilated - clip.hole).astype(np.float32)))
    assert torch.equal(sample["mask_context"][:, 0], torch.from_numpy(1 - dilated.astype(np.float32)))
    assert sample["input_ids"].tolist() == [0, 10, 27, 1, 1, 1]


def test_dpo_latent_regions_and_boundary_width(shard_dir, clip_tokenizer):
    wide = dpo(shard_dir, clip_tokenizer, boundary_px=3)[0]
    narrow_band = dpo(shard_dir, clip_tokenizer, boundary_px=9)[0]
    assert wide["mask_boundary"].sum() < narrow_band["mask_boundary"].sum()  # tunable without regenerating
    latent = dpo(shard_dir, clip_tokenizer, region_scale=8)[0]
    assert latent["mask_hole"].shape == (6, 1, 4, 4) and latent["masks"].shape == (6, 1, 32, 32)
    total = latent["mask_hole"] + latent["mask_boundary"] + latent["mask_context"]
    assert torch.equal(total, torch.ones_like(total))
    with pytest.raises(ConfigError, match="boundary_px"):
        validate_config(DPODataConfig, {"shards": str(shard_dir), "boundary_px": 8})


def test_dpo_negative_policies(shard_dir, clip_tokenizer):
    def kinds(dataset, epochs=12):
        return [dataset.negative_kinds[dataset.load_raw(i, e)["neg_type"]]
                for e in range(epochs) for i in range(len(dataset))]

    uniform = kinds(dpo(shard_dir, clip_tokenizer))
    assert 15 <= uniform.count("blur") <= 45  # per kind, not per instance: 1 blur vs 2 flicker, 60 draws
    assert set(kinds(dpo(shard_dir, clip_tokenizer, negative_policy="fixed", negative_kind="flicker"))) == {"flicker"}
    only_blur = dpo(shard_dir, clip_tokenizer, negative_policy="weighted", negative_weights={"blur": 1, "flicker": 0})
    assert set(kinds(only_blur)) == {"blur"}
    skewed = kinds(dpo(shard_dir, clip_tokenizer, negative_policy="weighted",
                       negative_weights={"blur": 1, "flicker": 3}))
    assert 2 <= skewed.count("blur") <= 28  # expected 15 of 60
    # Several flicker seeds: both instances get chosen; selected_only keeps the selected one.
    dataset = dpo(shard_dir, clip_tokenizer, negative_policy="fixed", negative_kind="flicker")
    levels = {float(dataset.load_raw(0, e)["neg"][0, 0, 0, 0]) for e in range(20)}
    assert len(levels) == 2
    dataset = dpo(shard_dir, clip_tokenizer, negative_policy="fixed", negative_kind="flicker", selected_only=True)
    assert len({float(dataset.load_raw(0, e)["neg"][0, 0, 0, 0]) for e in range(20)}) == 1
    with pytest.raises(ConfigError, match="needs negative_kind"):
        validate_config(DPODataConfig, {"shards": str(shard_dir), "negative_policy": "fixed"})
    with pytest.raises(ConfigError, match="positive weight"):
        validate_config(DPODataConfig, {"shards": str(shard_dir), "negative_policy": "weighted"})


def test_dpo_negative_form_defaults_to_the_hard_composite(tmp_path, clip_tokenizer):
    clip = sample_clip(0, kinds=("diffueraser",))
    composite = clip.negatives[0]
    raw = Negative("diffueraser", np.full_like(composite.frames, 7), seed=0, composited=False)
    clip.negatives.append(raw)
    write_shards(tmp_path, [[clip]])
    level = lambda dataset, e: int(dataset.load_raw(0, e)["neg"][0, 0, 0, 0])  # noqa: E731
    default = dpo(tmp_path, clip_tokenizer)
    assert {level(default, e) for e in range(10)} == {int(composite.frames[0, 0, 0, 0])}
    assert {level(dpo(tmp_path, clip_tokenizer, negative_form="raw"), e) for e in range(10)} == {7}
    assert len({level(dpo(tmp_path, clip_tokenizer, negative_form="any"), e) for e in range(20)}) == 2


def test_dpo_bad_rows_skipped_and_named(tmp_path, clip_tokenizer):
    good = sample_clip(0)
    rows = [encode_clip(sample_clip(i), PROVENANCE) for i in range(4)]
    rows[0]["masks"][2] = encode_clip(ClipRecord("x", 0, 0, 0, [0], good.frames[:1, :16, :16],
                                                 good.hole[:1, :16, :16]), PROVENANCE)["masks"][0]
    rows[1]["frames"][4] = rows[1]["frames"][4][:50]  # truncated PNG
    rows[2]["negatives"] = [n for n in rows[2]["negatives"] if n["kind"] != "blur"]
    tmp_path.mkdir(exist_ok=True)
    with ShardWriter(tmp_path / "bad.parquet") as writer:
        writer.write_rows(rows)
    manifest = Manifest(tmp_path)
    manifest.add_shard(writer.info)
    manifest.save()
    dataset = dpo(tmp_path, clip_tokenizer, negative_policy="fixed", negative_kind="blur")
    assert torch.equal(dataset[0]["pixel_values_pos"], dataset[3]["pixel_values_pos"])  # rows 0-2 bad → row 3
    where = [w for w, _ in dataset.skips.entries]
    assert where[0].endswith("bad.parquet:davis/bunny#0:masks[2]")
    assert where[1].endswith("bad.parquet:davis/bunny#1:frames[4]")
    assert where[2].endswith("bad.parquet:davis/bunny#2")
    assert dataset.skips.counts == {"size differs from frames": 1, "corrupt or truncated image": 1,
                                    "no negative for policy fixed": 1}
    strict = dpo(tmp_path, clip_tokenizer, negative_policy="fixed", negative_kind="blur", strict=True)
    with pytest.raises(BadSample, match=r"masks\[2\]: size differs from frames: 16x16, row says 32x32"):
        strict[0]


def test_dpo_reads_only_manifest_rows_and_splits_by_rank(tmp_path, clip_tokenizer):
    manifest = write_shards(tmp_path, [[sample_clip(0), sample_clip(1)], [sample_clip(1)], [sample_clip(2)]])
    assert manifest.clips["davis/bunny#1"]["shard"] == "shard-1.parquet"
    dataset = dpo(tmp_path, clip_tokenizer)
    assert len(dataset) == 3  # the rewritten clip 1 counts once
    paths = manifest.shard_paths()
    parts = [shards_for_rank(paths, r, 2) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == paths and not set(parts[0]) & set(parts[1])
    config = validate_config(DPODataConfig, {"shards": str(tmp_path)})
    lengths = [len(DPODataset(config, clip_tokenizer, rank=r, world_size=2)) for r in range(2)]
    assert lengths == [2, 1]  # shards 0 (clip 0; clip 1 superseded) + 2, and shard 1
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="lists no clips"):
        dpo(tmp_path / "none", clip_tokenizer)


def test_dpo_in_a_torch_dataloader_with_workers(shard_dir, clip_tokenizer):
    dataset = dpo(shard_dir, clip_tokenizer)
    dataset[0]  # fills the row-group cache, which must not travel to the workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert [len(b["neg_type"]) for b in batches] == [2, 2, 1]
    assert batches[0]["pixel_values_pos"].shape == (2, 6, 3, 32, 32) and batches[0]["neg_type"].dtype == torch.int64
    assert torch.equal(batches[2]["pixel_values_neg"][0], dataset[4]["pixel_values_neg"])


# --- Ray Data path -----------------------------------------------------------------------------------------------


def _consume(iterator, batch_size, collate, out, key):
    out[key] = list(iterator.iter_torch_batches(batch_size=batch_size, collate_fn=collate))


@pytest.mark.ray
def test_dpo_ray_dataset_split_across_workers_matches_torch(shard_dir, clip_tokenizer, ray_local):
    dataset = dpo(shard_dir, clip_tokenizer)
    # Ray Train's per-worker split: two streaming iterators, consumed concurrently as two workers would.
    outputs = {}
    threads = [threading.Thread(target=_consume, args=(it, 2, dataset.ray_collate_fn(), outputs, n))
               for n, it in enumerate(dataset.to_ray_dataset(epoch=0, num_blocks=2).streaming_split(2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    batch = outputs[0][0] if outputs[0] else outputs[1][0]
    assert batch["pixel_values_pos"].shape[1:] == (6, 3, 32, 32)
    assert batch["mask_boundary"].shape[1:] == (6, 1, 32, 32) and batch["neg_type"].dtype == torch.int64
    samples = [[{k: v[b] for k, v in batch.items()} for batch in outputs[n] for b in range(len(batch["neg_type"]))]
               for n in range(2)]
    keys = [{float(s["pixel_values_pos"].sum()) for s in part} for part in samples]
    assert not keys[0] & keys[1] and len(samples[0]) + len(samples[1]) == 5  # disjoint, complete
    by_pos = {float(s["pixel_values_pos"].sum()): s for part in samples for s in part}
    for i in range(len(dataset)):  # same samples, same negative choice as the torch path
        expected = dataset[i]
        got = by_pos[float(expected["pixel_values_pos"].sum())]
        for key in ("neg_type", "pixel_values_neg", "conditioning_neg", "masks", "mask_hole", "mask_context",
                    "input_ids"):
            assert torch.equal(got[key], expected[key]), key


@pytest.mark.ray
def test_finetune_ray_dataset(clip_tokenizer, ray_local):
    dataset = FinetuneDataset(davis_config(clip={"nframes": 3, "resolution": 16}), clip_tokenizer)
    ds = dataset.to_ray_dataset(epoch=0, num_blocks=1)  # one decode task: one worker pays the torch import
    batches = list(ds.iter_torch_batches(batch_size=8, collate_fn=dataset.ray_collate_fn()))
    assert sum(len(b["input_ids"]) for b in batches) == 30
    assert batches[0]["pixel_values"].shape == (8, 3, 3, 16, 16) and batches[0]["masks"].shape == (8, 3, 1, 16, 16)
    expected = torch.stack([dataset[i]["masks"] for i in range(30)])
    got = torch.cat([b["masks"] for b in batches])
    assert sorted(m.sum().item() for m in got) == sorted(m.sum().item() for m in expected)


# --- VaeClipDataset ----------------------------------------------------------------------------------------------


def test_vae_clips_keep_first_and_last_and_drop_small_rooms(tmp_path):
    rng = np.random.default_rng(0)
    rooms = {"a1/r1": 12, "a1/r2": 4, "a2/r3": 5}
    for room, count in rooms.items():
        folder = tmp_path / room / "output"
        folder.mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)).save(folder / f"panorama_{i:04d}.png")
    config = validate_config(VaeDataConfig, {"sources": [{"kind": "hm3d", "root": str(tmp_path)}],
                                             "height": 16, "width": 32, "max_frames": 11})
    dataset = VaeClipDataset(config)
    assert len(dataset) == 2 and dataset.skips.counts == {"too few frames": 1}
    assert dataset.skips.entries[0][0].endswith("a1/r2/output")
    raw = dataset.load_raw(0, 0)
    indices = raw["frame_indices"].tolist()
    assert len(indices) == 9 and indices[0] == 0 and indices[-1] == 11
    sample = dataset[0]["pixel_values"]
    assert sample.shape == (9, 3, 16, 32)
    last = np.array(Image.open(tmp_path / "a1/r1/output/panorama_0011.png"))
    assert torch.equal(sample[-1], torch.from_numpy(last).permute(2, 0, 1).float() / 127.5 - 1)
    assert dataset[1]["pixel_values"].shape == (5, 3, 16, 32)
    small = VaeClipDataset(VaeDataConfig(**{**config.model_dump(), "height": 8, "width": 16}))
    assert small[0]["pixel_values"].shape == (9, 3, 8, 16)
