"""The round summary: one row per trial (round, trial, params, objective, health marks, DGR at the end).

Round 1 asks "is DGR stable?"; the health column answers it. The table is printed by ``vipo tune`` and logged to
the sweep's MLflow run as ``summary.md``.
"""

from __future__ import annotations

import json
import math

__all__ = ["summary_rows", "summary_table"]

COLUMNS = ("round", "trial", "params", "objective", "health", "dgr_end")


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def summary_rows(records: list[dict]) -> list[dict]:
    """Flatten round records (with their ``trials`` and optional ``control``) into table rows."""
    rows = []
    for record in records:
        trials = [*record["trials"], *([record["control"]] if record.get("control") else [])]
        for trial in trials:
            rows.append({
                "round": record["round"],
                "trial": trial["trial"],
                "params": json.dumps(trial["config"], separators=(",", ":")),
                "objective": _number(trial["value"]),
                "health": trial["status"],
                "dgr_end": _number(trial.get("dgr")),
            })
    return rows


def summary_table(records: list[dict], metric: str) -> str:
    """A Markdown table of every trial of every round (``objective`` is ``metric`` at the last report)."""
    header = [c if c != "objective" else f"objective ({metric})" for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary_rows(records):
        lines.append("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)
