"""Entrypoints that `ray job submit` runs (`python -m jobs.<name> <config.yaml> [key=value ...]`)."""

# First, before anything imports vipo: puts this checkout's platform/ ahead of an installed vipo (the code shipped
# with `ray job submit --working-dir` is the code that runs).
import evaluation  # noqa: F401
