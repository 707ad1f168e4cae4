"""Metrics and the evaluation/comparison pipeline (depends on vipo, never the reverse)."""
