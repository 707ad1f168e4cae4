"""Image and video decoding/encoding with errors that name the file.

Decoding goes through Pillow because it reports a truncated JPEG or PNG as an error (OpenCV may hand back a
partly grey frame); video files go through PyAV (FFmpeg bundled in the wheel). The ``zstd`` frame codec is raw
pixels compressed with Zstandard (pyarrow's codec) behind a small header: lossless like PNG, ~1.6x its size,
decoded about ten times faster (``benchmarks/bench_data.py``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from vipo.data.errors import BadSample

__all__ = [
    "FrameCodec",
    "decode_image",
    "decode_video",
    "encode_image",
    "read_frames",
    "read_image",
    "video_info",
]

FrameCodec = Literal["png", "jpeg", "zstd"]
_DECODE_ERRORS = (OSError, SyntaxError, ValueError)
ZSTD_MAGIC = b"VZS1"
"""Header of a ``zstd`` frame: magic, then height, width, channels as little-endian uint32, then the payload."""
ZSTD_LEVEL = 1
"""Levels above 1 cost 3-4x the encoding time for ~3 % smaller frames; decoding speed is the same."""


def _encode_zstd(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = array.shape[:2]
    channels = array.shape[2] if array.ndim == 3 else 1
    header = ZSTD_MAGIC + np.array([height, width, channels], "<u4").tobytes()
    return header + pa.Codec("zstd", ZSTD_LEVEL).compress(array.tobytes(), asbytes=True)


def _decode_zstd(data: bytes, where: str) -> np.ndarray:
    try:
        height, width, channels = (int(v) for v in np.frombuffer(data, "<u4", count=3, offset=len(ZSTD_MAGIC)))
        raw = pa.Codec("zstd").decompress(data[len(ZSTD_MAGIC) + 12:], decompressed_size=height * width * channels,
                                          asbytes=True)
    except (OSError, ValueError, pa.ArrowInvalid) as err:
        raise BadSample(where, f"corrupt or truncated image: {err}") from None
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.frombuffer(raw, np.uint8).reshape(shape)


def _to_array(image: Image.Image, grey: bool) -> np.ndarray:
    return np.asarray(image.convert("L" if grey else "RGB"))


def decode_image(data: bytes, where: str, grey: bool = False) -> np.ndarray:
    """Encoded PNG/JPEG/zstd bytes → uint8 array (H,W,3) RGB, or (H,W) when ``grey``. Raises :class:`BadSample`."""
    if data[:len(ZSTD_MAGIC)] == ZSTD_MAGIC:
        array = _decode_zstd(data, where)
        return _to_array(Image.fromarray(array), grey) if grey != (array.ndim == 2) else array
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _to_array(image, grey)
    except _DECODE_ERRORS as err:
        raise BadSample(where, f"corrupt or truncated image: {err}") from None


def read_image(path: str | Path, grey: bool = False) -> np.ndarray:
    """An image file → uint8 array (H,W,3) RGB, or (H,W) when ``grey``. Raises :class:`BadSample` naming it."""
    try:
        with Image.open(path) as image:
            return _to_array(image, grey)
    except _DECODE_ERRORS as err:
        raise BadSample(path, f"corrupt or truncated image: {err}") from None


def encode_image(array: np.ndarray, codec: FrameCodec = "png", jpeg_quality: int = 95) -> bytes:
    """uint8 (H,W,3) RGB or (H,W) grey → PNG (lossless, fast deflate), JPEG or zstd (lossless raw) bytes."""
    if codec == "zstd":
        return _encode_zstd(array)
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(array))
    if codec == "png":
        # Level 1: pixels are what matter; higher levels cost 3-4x the time for a few % smaller files.
        image.save(buffer, format="PNG", compress_level=1)
    elif codec == "jpeg":
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown frame codec {codec!r}; use 'png', 'jpeg' or 'zstd'")
    return buffer.getvalue()


def stack_same_size(frames: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Stack frames (each (H,W[,C])) into (F,H,W[,C]); a frame whose size differs from the first is named."""
    first = frames[0].shape
    for frame, name in zip(frames, names):
        if frame.shape != first:
            raise BadSample(name, f"frame of different size: {frame.shape[1]}x{frame.shape[0]} "
                                  f"where {names[0]} is {first[1]}x{first[0]}")
    return np.stack(frames)


def read_frames(paths: Sequence[Path], grey: bool = False) -> np.ndarray:
    """Frame files → uint8 (F,H,W,3) (or (F,H,W) when ``grey``); every frame must have the first one's size."""
    if not paths:
        raise ValueError("read_frames: no paths")
    return stack_same_size([read_image(p, grey) for p in paths], [str(p) for p in paths])


def video_info(path: str | Path) -> tuple[int, float | None]:
    """(number of frames, fps or None) of a video file, from the container header (decoding when it is absent)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else None
            count = stream.frames or sum(1 for _ in container.decode(stream))
    except (av.FFmpegError, IndexError, OSError) as err:
        raise BadSample(path, f"unreadable video file: {err}") from None
    return count, fps


def decode_video(path: str | Path, indices: Iterable[int] | None = None) -> np.ndarray:
    """Decode frames of a video file → uint8 (F,H,W,3) RGB, in the order of ``indices`` (all frames if None).

    Decodes sequentially up to the largest index (clips are short windows, seeking buys little).
    """
    import av

    wanted = None if indices is None else list(indices)
    wanted_set = None if wanted is None else set(wanted)
    last = None if wanted is None else max(wanted)
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        with av.open(str(path)) as container:
            for decoded, frame in enumerate(container.decode(container.streams.video[0]), start=1):
                if wanted_set is None or decoded - 1 in wanted_set:
                    frames[decoded - 1] = frame.to_ndarray(format="rgb24")
                if last is not None and decoded - 1 >= last:
                    break
    except (av.FFmpegError, IndexError, OSError) as err:
        raise BadSample(path, f"unreadable video file: {err}") from None
    if decoded == 0:
        raise BadSample(path, "empty video: no decodable frames")
    order = sorted(frames) if wanted is None else wanted
    missing = [i for i in order if i not in frames]
    if missing:
        raise BadSample(path, f"too few frames: video decodes to {decoded} frames, frame {missing[0]} wanted")
    return np.stack([frames[i] for i in order])
