"""Metrics and the evaluation/comparison pipeline (depends on vipo, never the reverse).

The `vipo` this imports is the one shipped beside it: under `ray job submit --working-dir .` the uploaded copy's
`platform/` goes ahead of any installed `vipo` on the path, before anything imports `vipo` (`jobs` imports this
package first). Ray workers get the same `vipo` from `vipo.tracking.init_ray` (`py_modules`).
"""

import sys
from pathlib import Path

_PLATFORM = Path(__file__).resolve().parent.parent / "platform"
if (_PLATFORM / "vipo").is_dir() and str(_PLATFORM) not in sys.path:
    sys.path.insert(0, str(_PLATFORM))
