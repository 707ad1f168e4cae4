"""Statistics shared by evaluation and the Tune confirmation: paired per-clip deltas with bootstrap intervals."""

from vipo.stats.paired import PairedDelta, bootstrap_interval, paired_delta

__all__ = ["PairedDelta", "bootstrap_interval", "paired_delta"]
