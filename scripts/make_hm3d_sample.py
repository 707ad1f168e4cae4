"""Build the bundled ERP-like panorama rooms under ``data/sample/HM3D`` (HM3D's ``<area>/<room>/output`` layout).

Run from the repository root: ``python scripts/make_hm3d_sample.py`` (``--out`` to write elsewhere).

Each room is a synthetic 64×128 equirectangular panorama of a box room: a bright ceiling cap and a dark floor cap
(the poles), wall corners as vertical lines, the ceiling/floor edges as the sinusoids a box makes in ERP, and
square lamps on the walls (the straight edges a VAE rounds off). Frames are the same room seen with the camera
turned (longitude roll) and slightly dimmed. ``area0/room2`` has only 3 frames, so the 4n+1 clip sampler drops
it. Output is deterministic (PNG, ~40 KB in all).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

HEIGHT, WIDTH = 64, 128
ROOMS = {("area0", "room0"): 6, ("area0", "room1"): 5, ("area0", "room2"): 3, ("area1", "room0"): 5}


def panorama(rng: np.random.Generator) -> np.ndarray:
    """One (H, W, 3) uint8 ERP view of a box room with random colours, corner positions and lamps."""
    longitude = (np.arange(WIDTH) + 0.5) / WIDTH * 2 * np.pi - np.pi
    latitude = np.pi / 2 - (np.arange(HEIGHT) + 0.5) / HEIGHT * np.pi
    wall, ceiling, floor, lamp = rng.integers(40, 220, size=(4, 3))
    image = np.broadcast_to(wall, (HEIGHT, WIDTH, 3)).copy()
    # A box's horizontal ceiling/floor edges: tan(lat) = h / distance-to-wall, distance ∝ 1/cos(longitude - corner).
    offset = rng.uniform(0, np.pi / 2)
    distance = 1 / np.maximum(np.abs(np.cos(((longitude - offset) % (np.pi / 2)) - np.pi / 4)), 1e-3)
    edge = np.arctan(1.0 / distance)
    image[latitude[:, None] > edge[None]] = ceiling
    image[latitude[:, None] < -edge[None]] = floor
    for corner in offset + np.pi / 4 + np.arange(4) * np.pi / 2:
        column = int(((corner + np.pi) % (2 * np.pi)) / (2 * np.pi) * WIDTH)
        image[HEIGHT // 5: -HEIGHT // 5, column] = 0
    for _ in range(2):
        top, left = rng.integers(HEIGHT // 4, HEIGHT // 2 - 6), rng.integers(0, WIDTH - 8)
        image[top:top + 6, left:left + 6] = lamp
    return image


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    for (area, room), count in ROOMS.items():
        folder = out / area / room / "output"
        folder.mkdir(parents=True, exist_ok=True)
        base = panorama(rng)
        for index in range(count):
            turned = np.roll(base, shift=index * 5, axis=1).astype(np.float32) * (1 - 0.03 * index)
            Image.fromarray(turned.clip(0, 255).astype(np.uint8)).save(folder / f"panorama_{index:04d}.png",
                                                                       optimize=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample/HM3D"))
    main(parser.parse_args().out)
