"""Staged Ray Tune search over dotted config keys (the roadmap's ρ/α/β rounds), judged on validation deltas."""

from vipo.tune.config import ConfirmConfig, RoundConfig, TuneConfig
from vipo.tune.staged import SearchResult, run_staged_search, train_trial

__all__ = ["ConfirmConfig", "RoundConfig", "SearchResult", "TuneConfig", "run_staged_search", "train_trial"]
