"""DPO health checks that would otherwise surface days later (dpo.md §3 and §6, issue 8 "Health checks").

The trainer calls :meth:`DPOHealthMonitor.check` every step with the loss stats; it raises at step 0 when the
policy and reference disagree, and returns warnings (to log and to set as MLflow tags) when the DPO gradient weight
collapses at once, the DPO term sits at exactly ln 2 because nothing is being trained, or the winner gap explodes
(the policy drifts away from the winner it should move toward). ``HEALTH_CODES`` are the codes, fit for metric keys
(``health/<code>``) that a Tune stopper reads.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch

__all__ = ["HEALTH_CODES", "DPOHealthError", "DPOHealthMonitor", "HealthWarning"]

HEALTH_CODES = ("dgr_collapse", "stuck_at_ln2", "win_gap_explosion")


class DPOHealthError(RuntimeError):
    """A setup bug that makes the DPO objective meaningless; training must not go on."""


class HealthWarning(NamedTuple):
    """One flagged condition. ``code`` is stable (one of ``HEALTH_CODES``), fit for a tag or metric key."""

    code: str
    step: int
    message: str


class DPOHealthMonitor:
    """Watches the per-pair DPO ``logit`` (β′ŵs, or ½βs for the log-ratio variant) of consecutive steps.

    Args:
        dpo_active: False for the SFT-only control (α ≡ 0): its margin is zero by construction, so nothing is
            checked (pass the loss config's ``has_dpo_term``).
        identical_start: the policy starts equal to the reference (LoRA with B = 0, or full fine-tuning from the
            reference checkpoint). False when a different reference checkpoint is loaded on purpose.
        start_tol: largest |logit| allowed at step 0 when ``identical_start``; the DPO loss is then within
            ln 2 ± 5e-4 (softplus(x) ≈ ln 2 + x/2), while bit-identical passes give exactly 0.
        collapse_steps: the early window in which a collapsed DGR is flagged.
        collapse_ratio: DGR counts as collapsed when its batch mean falls below this fraction of its step-0 value
            (DGR/DGR₀ = 2σ(logit)); 1e-2 is β′s ≈ −5.3.
        stuck_steps: consecutive steps with |logit| ≤ ``stuck_tol`` for every pair before flagging.
        stuck_tol: |logit| this small means the DPO loss equals ln 2 to ~1e-7: policy and reference coincide.
        win_gap_limit: largest winner gap in logit units: the drop of the winner's implicit reward
            ``reward_chosen`` (−β′ŵ·Δw; −½β·g_win for log-ratio), batch mean. Beyond ~10 the policy got so much
            worse than the reference on the ground truth that the winner alone saturates the DPO sigmoid: the
            margin is being won by ruining the winner (a rising winner reward is the normal course of training).
    """

    def __init__(
        self,
        *,
        dpo_active: bool = True,
        identical_start: bool = True,
        start_tol: float = 1e-3,
        collapse_steps: int = 10,
        collapse_ratio: float = 1e-2,
        stuck_steps: int = 50,
        stuck_tol: float = 1e-6,
        win_gap_limit: float = 10.0,
    ) -> None:
        self.dpo_active = dpo_active
        self.identical_start = identical_start
        self.start_tol = start_tol
        self.collapse_steps = collapse_steps
        self.collapse_ratio = collapse_ratio
        self.stuck_steps = stuck_steps
        self.stuck_tol = stuck_tol
        self.win_gap_limit = win_gap_limit
        self.warnings: list[HealthWarning] = []
        self._stuck_run = 0

    def flagged(self, code: str) -> bool:
        """Whether ``code`` was raised at any step so far."""
        return any(warning.code == code for warning in self.warnings)

    def check(self, step: int, stats: Mapping[str, torch.Tensor]) -> list[HealthWarning]:
        """Check one step's loss stats (needs ``logit``; reads ``reward_chosen`` when present, ``s`` and ``dgr`` for
        messages).

        Returns the warnings raised at this step (each condition at most once per run); all of them accumulate in
        :attr:`warnings`. Raises :class:`DPOHealthError` at step 0 if the policy and reference disagree.
        """
        if not self.dpo_active:
            return []
        logit = stats["logit"].detach().float()
        largest = logit.abs().max().item()
        if step == 0 and self.identical_start and largest > self.start_tol:
            margin = stats["s"].detach().float()
            raise DPOHealthError(
                f"step 0: the policy and the reference disagree (max |logit| = {largest:.3g} > {self.start_tol:g}, "
                f"s in [{margin.min().item():.3g}, {margin.max().item():.3g}]); at step 0 the policy must equal the "
                "reference exactly, so s = 0. Check that ε and t are shared by winner and loser and by policy and "
                "reference, that dropout is off in both passes, that policy and reference run in the same dtype "
                "(autocast on both or neither), and that both get the same conditioning. If the reference is a "
                "different checkpoint on purpose, build the monitor with identical_start=False."
            )
        new: list[HealthWarning] = []
        if step < self.collapse_steps and not self.flagged("dgr_collapse"):
            ratio = (2 * torch.sigmoid(logit)).mean().item()
            if ratio < self.collapse_ratio:
                dgr = stats["dgr"].detach().float().mean().item()
                new.append(HealthWarning("dgr_collapse", step, (
                    f"step {step}: DGR collapsed to {dgr:.3g} ({ratio:.2%} of its step-0 value) within the first "
                    f"{self.collapse_steps} steps (mean logit {logit.mean().item():.3g}): the DPO term saturated at "
                    "once and stops teaching. β′ is most likely too large (diffusers convention, start at ~500; "
                    "never multiplied by T = 1000); the learning rate was not the cause in past runs."
                )))
        self._stuck_run = self._stuck_run + 1 if largest <= self.stuck_tol else 0
        if self._stuck_run >= self.stuck_steps and not self.flagged("stuck_at_ln2"):
            new.append(HealthWarning("stuck_at_ln2", step, (
                f"step {step}: the DPO loss has been exactly ln 2 (|logit| <= {self.stuck_tol:g}) for "
                f"{self._stuck_run} steps: the policy still equals the reference. The trained parameters are not "
                "updating (not in the optimizer, zero learning rate, frozen) or the reference pass runs the policy "
                "(adapter not disabled for the reference, or enabled for neither)."
            )))
        if "reward_chosen" in stats and not self.flagged("win_gap_explosion"):
            gap = -stats["reward_chosen"].detach().float().mean().item()
            if not gap <= self.win_gap_limit:  # NaN counts as exploded
                new.append(HealthWarning("win_gap_explosion", step, (
                    f"step {step}: the winner gap exploded: the winner's implicit reward fell by {gap:.3g} > "
                    f"{self.win_gap_limit:g} (β′ times the policy − reference error on the ground truth): the policy "
                    "got much worse on the ground truth. β′ is most likely far too large; or lower the learning "
                    "rate, or add an SFT anchor (ρ > 0)."
                )))
        self.warnings.extend(new)
        return new
