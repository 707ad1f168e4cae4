"""Name→shape manifests of the upstream models, kept in ``tests/fixtures/reference`` (see its README)."""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"


def load_manifest(name: str) -> dict:
    path = REFERENCE / name
    assert path.is_file(), f"upstream manifest {path} missing from the repository's test fixtures"
    return json.loads(path.read_text())
