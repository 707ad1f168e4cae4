"""Staged Ray Tune search over dotted config keys (the roadmap's ρ/α/β rounds)."""

from vipo.tune.config import RoundConfig, TuneConfig
from vipo.tune.staged import run_staged_search, train_trial

__all__ = ["RoundConfig", "TuneConfig", "run_staged_search", "train_trial"]
