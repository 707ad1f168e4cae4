"""DPO losses for stage 3: Region-Reg-DPO, the log-ratio variant, timestep weights, config and health checks.

Every loss takes ε and the four ε-predictions (policy/reference × winner/loser) of shape (B, ...) plus the
(hole, boundary, context) region masks, and returns ``(loss, stats)`` with detached per-pair and scalar stats.
"""

from vipo.losses.config import (
    DPOLossConfig,
    LogRatioDPOLossConfig,
    RegionRegDPOLossConfig,
    check_context_alpha,
    compute_dpo_loss,
)
from vipo.losses.health import HEALTH_CODES, DPOHealthError, DPOHealthMonitor, HealthWarning
from vipo.losses.log_ratio_dpo import log_ratio_dpo_loss
from vipo.losses.region_dpo import region_reg_dpo_loss
from vipo.losses.region_terms import REGION_NAMES, RegionTerms, implicit_accuracy, summarize_stats
from vipo.losses.weighting import min_snr_weight

__all__ = [
    "HEALTH_CODES",
    "DPOHealthError",
    "DPOHealthMonitor",
    "DPOLossConfig",
    "HealthWarning",
    "LogRatioDPOLossConfig",
    "REGION_NAMES",
    "RegionRegDPOLossConfig",
    "RegionTerms",
    "check_context_alpha",
    "compute_dpo_loss",
    "implicit_accuracy",
    "log_ratio_dpo_loss",
    "min_snr_weight",
    "region_reg_dpo_loss",
    "summarize_stats",
]
