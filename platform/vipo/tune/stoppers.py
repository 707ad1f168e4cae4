"""Stop rules from the DPO health monitor: a flagged trial is stopped at its next report and never chosen.

Stage 3 reports ``health/<code>`` (1 once :class:`vipo.losses.DPOHealthMonitor` raised ``code``, averaged over
ranks) with every training report. A collapsed DGR, a loss stuck at ln 2 or an exploded winner gap means the DPO
term stopped teaching or teaches the wrong thing, whatever the validation score says at that moment; ASHA must not
promote such a trial, so the stopper ends it and the round marks it failed with the codes.
"""

from __future__ import annotations

from typing import Mapping

from ray.tune.stopper import Stopper

from vipo.losses import HEALTH_CODES

__all__ = ["HealthStopper", "health_marks"]


def health_marks(metrics: Mapping | None) -> list[str]:
    """The health codes a trial's reported ``metrics`` flag (empty: healthy, or a recipe without the monitor)."""
    return [code for code in HEALTH_CODES if (metrics or {}).get(f"health/{code}", 0) > 0]


class HealthStopper(Stopper):
    """Stops a trial as soon as a report carries a health mark; never stops the whole experiment."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(health_marks(result))

    def stop_all(self) -> bool:
        return False
