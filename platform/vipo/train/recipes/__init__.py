"""The recipe registry: a config's ``recipe:`` value → ``"module:Class"``.

Adding a recipe is one file in this folder (a class following :class:`vipo.train.loop.Recipe`; Ray Train runs it
through :func:`vipo.train.loop.run_recipe`), its config class in :mod:`vipo.train.recipes.configs` (set as the
recipe's ``config_class`` and listed in ``RECIPE_CONFIGS``), and one line here. Entries are import strings so that
validating a config imports no recipe (they import diffusers and peft).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vipo.train.loop import Recipe

__all__ = ["RECIPES", "get_recipe", "recipe_module"]

RECIPES: dict[str, str] = {
    "flowcomp": "vipo.train.recipes.flowcomp:FlowCompletionRecipe",
    "propainter": "vipo.train.recipes.propainter:ProPainterRecipe",
    "stage1": "vipo.train.recipes.stage1:Stage1Recipe",
    "stage2": "vipo.train.recipes.stage2:Stage2Recipe",
    "stage3": "vipo.train.recipes.stage3:Stage3Recipe",
    "wan_vae": "vipo.train.recipes.wan_vae:WanVaeRecipe",
}


def recipe_module(name: str) -> ModuleType:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return importlib.import_module(RECIPES[name].split(":")[0])


def get_recipe(name: str) -> type["Recipe"]:
    """The recipe class registered as ``name``."""
    return getattr(recipe_module(name), RECIPES[name].split(":")[1])
