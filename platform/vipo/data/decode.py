"""Torch-free decoding of shard rows into raw DPO samples: the step Ray Data's CPU workers run.

Nothing here imports torch, so a Ray Data worker that only decodes starts in a fraction of a second instead of
paying torch's import; the tensors are built later by :meth:`vipo.data.DPODataset.collate` on the trainer.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq

from vipo.data.errors import BadSample, strict_error
from vipo.data.shards import decode_frames, decode_hole

__all__ = ["DPORowDecoder", "NegativePolicy", "RayRowGroupDecoder", "sample_rng"]

logger = logging.getLogger(__name__)

NegativePolicy = Literal["fixed", "uniform", "weighted"]
# Shards keep each negative raw and hard-composited (prediction in the hole, GT outside). Training pairs use the
# composite by default: a raw loser also differs from the winner outside the hole, a trivially learnt preference.
NegativeForm = Literal["composited", "raw", "any"]


def sample_rng(seed: int, epoch: int, key: int | str) -> np.random.Generator:
    """The generator for one sample: a function of (seed, epoch, key) only; string keys hash with crc32."""
    if isinstance(key, str):
        key = zlib.crc32(key.encode())
    return np.random.default_rng([seed, epoch, key])


@dataclass(frozen=True)
class DPORowDecoder:
    """Turns a shard row into a raw DPO sample under a negative-choice policy (see :class:`DPODataConfig`).

    ``negative_kinds`` is the id vocabulary of ``neg_type``; ``clip_shards`` maps each clip id the manifest counts
    to its shard file name (rows elsewhere are superseded copies).
    """

    shards: Path
    negative_kinds: tuple[str, ...]
    clip_shards: Mapping[str, str]
    policy: NegativePolicy = "uniform"
    negative_kind: str | None = None
    negative_weights: Mapping[str, float] = field(default_factory=dict)
    selected_only: bool = False
    negative_form: NegativeForm = "composited"
    proportion_empty_prompts: float = 0.0
    seed: int = 0

    @property
    def columns(self) -> list[str]:
        """Shard columns a row must carry."""
        # Not "prior": the generator records which prior a negative used, not its frames, and no stage reads them.
        return ["clip_id", "height", "width", "frames", "masks", "negatives"]

    def choose_negative(self, negatives: Sequence[dict], rng: np.random.Generator) -> int | None:
        """Index into ``negatives`` (dicts with ``kind``, ``selected``, ``composited``) under the policy, or None
        if none fits.

        The kind is drawn first (uniformly or by weight among the kinds the clip has, so several seeds of one kind
        do not outweigh the others), then one negative of that kind uniformly.
        """
        eligible = [
            i for i, n in enumerate(negatives)
            if (n["selected"] or not self.selected_only)
            and (self.negative_form == "any" or n["composited"] == (self.negative_form == "composited"))
        ]
        kinds = sorted({negatives[i]["kind"] for i in eligible})
        if self.policy == "fixed":
            kinds = [k for k in kinds if k == self.negative_kind]
        weights = np.array([self.negative_weights.get(k, 0.0) if self.policy == "weighted" else 1.0 for k in kinds])
        if not kinds or weights.sum() <= 0:
            return None
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        return int(rng.choice([i for i in eligible if negatives[i]["kind"] == kind]))

    def decode_row(self, row: Mapping[str, Any], epoch: int, shard_name: str) -> dict[str, Any]:
        """A shard row → raw sample: ``pos``/``neg`` uint8 (F,H,W,3), ``hole`` bool (F,H,W) True = hole,
        ``neg_type`` int (index into ``negative_kinds``), ``empty_prompt`` bool, ``clip_id`` str. Raises
        :class:`BadSample` naming shard, clip and image."""
        where = f"{self.shards / shard_name}:{row['clip_id']}"
        size = (int(row["height"]), int(row["width"]))
        rng = sample_rng(self.seed, epoch, row["clip_id"])
        negatives = list(row["negatives"])
        choice = self.choose_negative(negatives, rng)
        if choice is None:
            kinds = sorted({n["kind"] for n in negatives})
            raise BadSample(where, f"no negative for policy {self.policy}: clip has {kinds}")
        raw = {
            "pos": decode_frames(row["frames"], f"{where}:frames", size),
            "neg": decode_frames(negatives[choice]["frames"], f"{where}:negatives[{choice}]", size),
            "hole": decode_hole(row["masks"], f"{where}:masks", size),
            "neg_type": self.negative_kinds.index(negatives[choice]["kind"]),
            "empty_prompt": bool(rng.random() < self.proportion_empty_prompts),
            "clip_id": row["clip_id"],
        }
        if not len(raw["pos"]) == len(raw["neg"]) == len(raw["hole"]):
            raise BadSample(where, f"frame counts differ: {len(raw['pos'])} frames, {len(raw['neg'])} negative "
                                   f"frames, {len(raw['hole'])} masks")
        return raw


@dataclass(frozen=True)
class RayRowGroupDecoder:
    """Ray Data ``flat_map`` UDF: a ``{"shard": path, "group": n}`` item → the raw samples of that row group.

    Rows the manifest does not count (superseded copies) are left out; a bad row is left out and logged with its
    file, or re-raised when ``strict``.
    """

    decoder: DPORowDecoder
    epoch: int
    strict: bool = False

    def __call__(self, item: dict) -> list[dict]:
        path = Path(item["shard"])
        rows = pq.ParquetFile(path).read_row_group(int(item["group"]), columns=self.decoder.columns).to_pylist()
        samples = []
        for row in rows:
            if self.decoder.clip_shards.get(row["clip_id"]) != path.name:
                continue
            try:
                samples.append(self.decoder.decode_row(row, self.epoch, path.name))
            except BadSample as err:
                if self.strict:
                    raise strict_error(err) from err
                logger.warning("skipped %s: %s", err.where, err.reason)
        return samples
