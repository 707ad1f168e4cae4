"""The evaluation stage: one method on one actor — read clip → (prior) → inpaint → store → score.

Inference and scoring happen in the same actor, on its device, so frames never travel through the object store;
rows out are one clip's metrics. The model loads lazily, once per actor, only when some clip lacks a stored
prediction (a re-score with new metrics never loads it). A method with a prior (DiffuEraser's ProPainter) takes
the prior method's stored prediction when there is one, else computes and stores it. Stages never import Ray:
:mod:`evaluation.adapter` turns them into actor pools.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation.benchmark import Benchmark
from evaluation.cache import ClipScores, ResultCache
from evaluation.methods import ActorConfig, Inpaint, MethodConfig
from evaluation.scorer import Scorer
from evaluation.scoring import ScoringConfig
from vipo.generate.models import pick_device

__all__ = ["EvaluateStage"]


@dataclass
class EvaluateStage:
    """Evaluates ``method`` on clips of the benchmark at ``benchmark_dir``; results go to ``cache_dir``.

    ``method_hash``/``prior_hash`` are computed once on the driver (hashing weights is not the actors' job).
    """

    label: str
    method: MethodConfig
    method_hash: str
    prior_hash: str | None
    scoring: ScoringConfig
    benchmark_dir: Path
    cache_dir: Path
    reuse_predictions: bool = True
    """Take stored predictions (and priors) instead of running the models; False re-runs them (a noise check)."""
    device: str = field(default="cpu", init=False)

    @property
    def actors(self) -> ActorConfig:
        """Resources and sizes of this stage's actor pool (the method's ``actors``)."""
        return self.method.actors

    def setup(self) -> None:
        """Per actor: pick the device, open the benchmark and cache, build the scorer's networks."""
        self.device = pick_device(self.actors.num_gpus)
        self._benchmark = Benchmark.open(self.benchmark_dir)
        self._cache = ResultCache(self.cache_dir)
        self._scorer = Scorer(self.scoring).setup(self.device)
        self._models: dict[str, Inpaint] = {}

    def _model(self, method: MethodConfig, key: str) -> Inpaint:
        if key not in self._models:
            self._models[key] = method.load(self.device)
        return self._models[key]

    def _stored(self, method_hash: str, clip_id: str) -> np.ndarray | None:
        if not self.reuse_predictions:
            return None
        return self._cache.load_prediction(self._benchmark.hash, method_hash, clip_id)

    def _prior(self, clip_id: str, frames: np.ndarray, hole: np.ndarray) -> np.ndarray | None:
        prior_method = self.method.prior_method()
        if prior_method is None:
            return None
        prior = self._stored(self.prior_hash, clip_id)
        if prior is None:
            prior = self._model(prior_method, "prior")(frames, hole, None)
            self._cache.save_prediction(self._benchmark.hash, self.prior_hash, clip_id, prior)
        return prior

    def process(self, clip_id: str) -> ClipScores:
        """Predict (or read the stored prediction of) one clip and score it."""
        frames, hole = self._benchmark.load_clip(clip_id)
        prediction = self._stored(self.method_hash, clip_id)
        seconds = float("nan")  # inference time is unknown for a prediction made by an earlier run
        try:
            # The hallucination scorers compare with the prior, so it is needed even for a stored prediction.
            needs_prior = prediction is None or self.scoring.needs_prior()
            prior = self._prior(clip_id, frames, hole) if needs_prior else None
            if prediction is None:
                inpaint = self._model(self.method, "method")
                start = time.perf_counter()
                prediction = inpaint(frames, hole, prior)
                seconds = time.perf_counter() - start
        except Exception as err:
            raise RuntimeError(f"method {self.label} failed on clip {clip_id} of benchmark "
                               f"{self._benchmark.name}: {type(err).__name__}: {err}") from err
        if math.isfinite(seconds):
            if prediction.shape != frames.shape or prediction.dtype != np.uint8:
                raise ValueError(f"method {self.label} returned {prediction.dtype} {prediction.shape} for "
                                 f"clip {clip_id}; expected uint8 {frames.shape}")
            self._cache.save_prediction(self._benchmark.hash, self.method_hash, clip_id, prediction)
        metrics, features = self._scorer.score(frames, hole, prediction, prior)
        return ClipScores(clip_id, metrics, seconds, self.device, {"frames": int(len(frames)), **features})

    def process_batch(self, clip_ids: list[str]) -> list[ClipScores]:
        return [self.process(clip_id) for clip_id in clip_ids]
