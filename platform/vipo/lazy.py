"""Package namespaces that import a name's submodule only when the name is first used.

``vipo.data`` and ``vipo.models.propainter`` re-export many names whose modules import torch or diffusers; a
caller that needs one light submodule (a Ray Data worker decoding rows, a config validating a loss block) should
not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, list[str]], namespace: dict[str, Any],
                 eager: tuple[str, ...] = ()) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``, whose lazy names are ``{submodule: [name, ...]}``
    and whose ``eager`` names are defined in the package itself.

    A resolved name is stored in ``namespace`` (the package's ``globals()``), so it is imported once.
    """
    module_of = {name: module for module, names in exports.items() for name in names}
    names = sorted([*eager, *module_of])

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
