"""Entrypoints that `ray job submit` runs (`python -m jobs.<name> <config.yaml> [key=value ...]`)."""
