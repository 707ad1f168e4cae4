"""``diffueraser+lora``: DiffuEraser with a stage-3 LoRA, from a stage-3 export or a peft adapter folder.

The roadmap's trap is forgetting the LoRA at inference: the base model is then scored under the new name. So the
adapter is checked to be applied: every LoRA tensor in the file must load into a module of the main UNet, and
after merging, the UNet's weights must differ from the base; a merged export's ``unet_main`` must differ from the
base layout's. Either failure is an error naming the folder.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import torch

from evaluation.methods.base import Inpaint, register_method
from evaluation.methods.diffueraser import DiffuEraserMethod, export_model_paths
from vipo.config import ExistingPath

__all__ = ["DiffuEraserLoraMethod", "apply_lora", "find_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_NAME = "stage3"


def find_adapter(folder: Path) -> tuple[Literal["peft", "merged"], Path]:
    """What ``folder`` holds: a peft adapter (``adapter_config.json`` there or in exactly one subfolder) → the
    adapter folder; else a merged export (``unet_main/``) → ``folder``."""
    if (folder / ADAPTER_CONFIG).is_file():
        return "peft", folder
    children = sorted(child for child in folder.iterdir() if (child / ADAPTER_CONFIG).is_file())
    if len(children) == 1:
        return "peft", children[0]
    if (folder / "unet_main" / "config.json").is_file():
        return "merged", folder
    raise FileNotFoundError(
        f"{folder}: neither a peft LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS[0]}, here or in one subfolder)"
        f" nor a stage-3 export with unet_main/" + (f"; several adapters: {[c.name for c in children]}"
                                                    if children else ""))


def _read_adapter(folder: Path) -> dict[str, torch.Tensor]:
    for name in ADAPTER_WEIGHTS:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no {' or '.join(ADAPTER_WEIGHTS)} next to {ADAPTER_CONFIG}")


def apply_lora(unet: torch.nn.Module, folder: Path) -> list[str]:
    """Merge the peft LoRA in ``folder`` into ``unet`` (a diffusers model) → the names of the modules it changed.

    The adapter is injected into exactly the modules its file has weights for (so a LoRA trained on a 2-D UNet
    leaves a motion UNet's temporal attention alone). Raises ``ValueError`` when a tensor fits no module, when a
    module's LoRA weights are missing, or when merging changes nothing (e.g. an untrained adapter, B = 0).
    """
    from peft import LoraConfig, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(str(folder))
    # PeftModel.save_pretrained prefixes names with the wrapper's path; diffusers-side adapters do not.
    state = {key.removeprefix("base_model.model."): value for key, value in _read_adapter(folder).items()}
    targets = sorted({key.split(".lora_")[0] for key in state if ".lora_" in key})
    if not targets:
        raise ValueError(f"{folder}: the adapter file holds no LoRA tensors (no '.lora_' names)")
    modules = dict(unet.named_modules())
    unknown = [name for name in targets if name not in modules]
    if unknown:
        raise ValueError(f"{folder}: {len(unknown)} LoRA modules are not in the UNet, e.g. {unknown[0]!r}; "
                         f"was the adapter trained on another architecture?")
    before = {name: modules[name].weight.detach().clone() for name in targets}
    config.target_modules = targets
    unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER_NAME)
    missing = [key for key in result.missing_keys if ".lora_" in key and ADAPTER_NAME in key]
    if result.unexpected_keys or missing:
        raise ValueError(f"{folder}: adapter does not fit the UNet ({len(result.unexpected_keys)} unexpected, "
                         f"{len(missing)} missing LoRA tensors, e.g. {(result.unexpected_keys or missing)[0]!r})")
    unet.fuse_lora(adapter_names=[ADAPTER_NAME])
    unet.unload_lora()
    modules = dict(unet.named_modules())
    changed = [name for name in targets if not torch.equal(modules[name].weight, before[name])]
    if not changed:
        raise ValueError(f"{folder}: merging the LoRA changed no UNet weight (all lora_B zero? an untrained "
                         f"adapter); refusing to score the base model under the LoRA's name")
    return changed


def _same_weights(folder: Path, base: Path) -> bool:
    """Whether every tensor name the two model folders' safetensors files share holds equal values."""
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
        raise ValueError(f"{folder} and {base} share no tensor name; cannot check the LoRA was merged")
    return True


@register_method
class DiffuEraserLoraMethod(DiffuEraserMethod):
    """DiffuEraser (``weights`` layout, as ``diffueraser``) with the stage-3 LoRA of ``adapter``."""

    kind: Literal["diffueraser+lora"] = "diffueraser+lora"
    adapter: ExistingPath
    """A peft LoRA adapter folder for the main UNet, or a stage-3 export (LoRA merged into ``unet_main/``)."""

    weight_fields = ("weights", "prior", "adapter")
    checkpoint_field = "adapter"

    def model_paths(self) -> tuple[Path | None, Path | None]:
        form, folder = find_adapter(self.adapter)
        return export_model_paths(folder) if form == "merged" else (None, None)

    def weight_paths(self) -> list[Path]:
        form, folder = find_adapter(self.adapter)
        return super().weight_paths() + ([folder] if form == "peft" else [])

    def load(self, device: str) -> Inpaint:
        from vipo.models.diffueraser_weights import DiffuEraserWeights

        form, folder = find_adapter(self.adapter)
        if form == "merged":
            base = DiffuEraserWeights(self.weights).unet_main
            if _same_weights(folder / "unet_main", base):
                raise ValueError(f"{folder}/unet_main equals the base {base}: the stage-3 LoRA was not merged "
                                 f"into this export")
            return self._inpaint_with(self.build_pipeline(device))
        pipeline = self.build_pipeline(device)
        apply_lora(pipeline.unet, folder)
        return self._inpaint_with(pipeline)
