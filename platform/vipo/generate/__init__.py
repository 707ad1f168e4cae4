"""Preference-data generation: negatives of video clips made by actor pools on Ray Data, written as shards.

Per clip window: decode, K random moving holes seeded from the sample ids, each configured negative kind
(:mod:`vipo.generate.kinds`) per hole and seed, scores against the ground truth, the quality gate and band, then
encoded rows (raw and hard-composited negatives) written by the workers into shards, with a manifest (kept by the
driver, from small commit records) that keeps every candidate's scores.
:func:`generate` runs it; ``jobs/generate.py`` is the ``vipo generate`` entry point.
"""

from vipo.generate.candidates import Candidate, QualityBand, QualityGate, Scorer, hard_composite, judge
from vipo.generate.config import GenerateConfig, StageConfig, WriterConfig
from vipo.generate.job import ErrorBudgetExceeded, Executor, OutputExistsError, generate, shards_dir
from vipo.generate.lease import OutputLease, OutputLockedError
from vipo.generate.kinds import KIND_REGISTRY, Clip, KindConfig, KindOutput, NegativeKind, register_kind
from vipo.generate.models import MODEL_LOADERS, ModelLoadError, ModelSpec
from vipo.generate.plan import SampleResult, WorkItem, WorkResult, derive_seed, plan_work
from vipo.generate.stages import GenerateStage, Resources, build_stages, run_in_process
from vipo.generate.writer import ShardCommit, ShardWriteError, ShardWriteStage, write_in_batches

__all__ = [
    "KIND_REGISTRY",
    "MODEL_LOADERS",
    "Candidate",
    "Clip",
    "ErrorBudgetExceeded",
    "Executor",
    "GenerateConfig",
    "GenerateStage",
    "KindConfig",
    "KindOutput",
    "ModelLoadError",
    "ModelSpec",
    "NegativeKind",
    "OutputExistsError",
    "OutputLease",
    "OutputLockedError",
    "QualityBand",
    "QualityGate",
    "Resources",
    "SampleResult",
    "Scorer",
    "ShardCommit",
    "ShardWriteError",
    "ShardWriteStage",
    "StageConfig",
    "WorkItem",
    "WorkResult",
    "WriterConfig",
    "build_stages",
    "derive_seed",
    "generate",
    "hard_composite",
    "judge",
    "plan_work",
    "register_kind",
    "run_in_process",
    "shards_dir",
    "write_in_batches",
]
