"""``diffueraser+lora``: DiffuEraser with a stage-3 LoRA, from a stage-3 export or from its adapter folder.

A stage-3 export (``vipo export`` of a stage-3 run, :func:`vipo.train.dpo_models.export_policy`) holds
``unet_main/`` with the LoRA merged in, ``brushnet/`` and ``lora/``; the adapter folder is ``lora/``
(``pytorch_lora_weights.safetensors``, :mod:`vipo.models.lora`), loaded onto the base layout's ``unet_main`` and
merged.

The roadmap's trap is forgetting the LoRA at inference: the base model is then scored under the LoRA's name. So
the adapter is checked to be applied: merging it must change the weights of every module it has tensors for, and
a merged export's ``unet_main`` must differ from the base layout's. Either failure is an error naming the folder.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from evaluation.methods.base import Inpaint, register_method
from evaluation.methods.diffueraser import DiffuEraserMethod, export_model_paths
from vipo.config import ExistingPath

__all__ = ["DiffuEraserLoraMethod", "apply_lora", "find_adapter"]

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # vipo.models.lora.LORA_WEIGHT_NAME, without importing torch


def find_adapter(folder: Path) -> tuple[Literal["adapter", "export"], Path]:
    """``("adapter", folder)`` for a LoRA adapter folder, ``("export", folder)`` for a stage-3 export
    (``unet_main/``); anything else is a ``FileNotFoundError`` saying what was expected."""
    if (folder / LORA_WEIGHTS).is_file():
        return "adapter", folder
    if (folder / "unet_main" / "config.json").is_file():
        return "export", folder
    raise FileNotFoundError(f"{folder}: neither a stage-3 LoRA adapter folder ({LORA_WEIGHTS}) nor a stage-3 export "
                            f"(unet_main/, brushnet/, lora/; `vipo export <stage-3 run dir>` writes one)")


def _lora_modules(weights: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        return {key.split(".lora_")[0] for key in handle.keys() if ".lora_" in key}


def apply_lora(unet, folder: Path) -> list[str]:
    """Merge the adapter in ``folder`` into ``unet`` (``vipo.models.lora.load_lora(fuse=True)``) and check it took:
    every module the file has LoRA tensors for must exist and change → their names. ``ValueError`` otherwise
    (a file for another architecture, or an untrained adapter whose B matrices are zero)."""
    import torch

    from vipo.models.lora import load_lora

    targets = sorted(_lora_modules(folder / LORA_WEIGHTS))
    modules = dict(unet.named_modules())
    unknown = [name for name in targets if name not in modules]
    if not targets or unknown:
        raise ValueError(f"{folder / LORA_WEIGHTS}: " + (f"{len(unknown)} LoRA modules are not in the UNet, e.g. "
                         f"{unknown[0]!r}" if unknown else "no LoRA tensors ('.lora_' names)"))
    before = {name: modules[name].weight.detach().clone() for name in targets}
    load_lora(unet, folder, fuse=True)
    modules = dict(unet.named_modules())
    unchanged = [name for name in targets if torch.equal(modules[name].weight, before[name])]
    if unchanged:
        raise ValueError(f"{folder}: merging the LoRA left {len(unchanged)} of {len(targets)} modules unchanged "
                         f"(e.g. {unchanged[0]}): B = 0, an untrained adapter? Refusing to score the base model "
                         f"under the LoRA's name")
    return targets


def _same_weights(folder: Path, base: Path) -> bool:
    """Whether every tensor name the two model folders' safetensors files share holds equal values."""
    import torch
    from safetensors import safe_open

    with ExitStack() as stack:
        base_tensors = {}
        for file in sorted(base.glob("*.safetensors")):
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            base_tensors.update(dict.fromkeys(handle.keys(), handle))
        shared = 0
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key in base_tensors:
                        if not torch.equal(handle.get_tensor(key), base_tensors[key].get_tensor(key)):
                            return False
                        shared += 1
    if shared == 0:
        raise ValueError(f"{folder} and {base} share no tensor name; cannot check that the LoRA was merged")
    return True


@register_method
class DiffuEraserLoraMethod(DiffuEraserMethod):
    """DiffuEraser (``weights`` layout, as ``diffueraser``) with the stage-3 LoRA of ``adapter``."""

    kind: Literal["diffueraser+lora"] = "diffueraser+lora"
    adapter: ExistingPath
    """A stage-3 export folder (its merged ``unet_main/`` and ``brushnet/`` are used) or a LoRA adapter folder
    (e.g. the export's ``lora/``), merged into the base layout's ``unet_main``."""

    weight_fields = ("weights", "prior", "adapter")
    checkpoint_field = "adapter"

    def model_paths(self) -> tuple[Path | None, Path | None]:
        form, folder = find_adapter(self.adapter)
        return export_model_paths(folder) if form == "export" else (None, None)

    def weight_paths(self) -> list[Path]:
        form, folder = find_adapter(self.adapter)
        return super().weight_paths() + ([folder / LORA_WEIGHTS] if form == "adapter" else [])

    def load(self, device: str) -> Inpaint:
        from vipo.models.diffueraser_weights import DiffuEraserWeights

        form, folder = find_adapter(self.adapter)
        if form == "export":
            base = DiffuEraserWeights(self.weights).unet_main
            if _same_weights(folder / "unet_main", base):
                raise ValueError(f"{folder}/unet_main equals the base {base}: the stage-3 LoRA was not merged "
                                 f"into this export")
            return self._inpaint_with(self.build_pipeline(device))
        pipeline = self.build_pipeline(device)
        apply_lora(pipeline.unet, folder)
        return self._inpaint_with(pipeline)
