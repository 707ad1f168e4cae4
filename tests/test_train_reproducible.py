"""Every random draw comes from the run's seed: the LoRA initialisation, dropout, noise and data order. Two stage-3
runs with one config are bit-identical, and a killed + resumed run equals an uninterrupted one (in process, one
worker, tiny models)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from test_stage3_recipe import shards, stage3_config, weights_root  # noqa: F401  (fixtures)

from vipo.models.diffueraser_weights import DiffuEraserWeights
from vipo.models.lora import LORA_WEIGHT_NAME, add_spatial_lora
from vipo.train.checkpointing import find_checkpoint, list_checkpoints
from vipo.train.engine import WorkerContext
from vipo.train.loop import InjectedFailure
from vipo.train.recipes.stage3 import Stage3Recipe


def test_lora_init_comes_from_the_seed_and_leaves_the_global_rng_alone(weights_root):  # noqa: F811
    def lora_a(seed: int) -> dict[str, torch.Tensor]:
        unet = UNet2DConditionModel.from_pretrained(DiffuEraserWeights(weights_root).unet_2d, local_files_only=True)
        torch.randn(3)  # whatever the global RNG did before
        add_spatial_lora(unet, rank=2, alpha=2, seed=seed)
        return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_A" in n}

    first, again, other = lora_a(0), lora_a(0), lora_a(1)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)

    unet = UNet2DConditionModel.from_pretrained(DiffuEraserWeights(weights_root).unet_2d, local_files_only=True)
    state = torch.get_rng_state()
    add_spatial_lora(unet, rank=2, alpha=2, seed=0)
    assert torch.equal(torch.get_rng_state(), state)


def run(cfg, checkpoint: Path | None = None) -> None:
    torch.randn(5)  # a different global RNG state at every start: the run must not depend on it
    recipe = Stage3Recipe(cfg, WorkerContext())
    try:
        recipe.setup(checkpoint)
        recipe.train()
    finally:
        recipe.cleanup()


def adapters(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {step: load_file(folder / "weights" / "lora" / LORA_WEIGHT_NAME)
            for step, folder in list_checkpoints(run_dir).items()}


def test_two_stage3_runs_are_bit_identical_and_killed_plus_resumed_equals_uninterrupted(
        tmp_path, weights_root, shards):  # noqa: F811
    def config(name: str, **overrides):
        # LoRA dropout draws from the global RNG every step: its state must be seeded and carried by checkpoints.
        return stage3_config(weights_root, shards, tmp_path, name=name, seed=7, export_on_finish=False,
                             optim={"lr": 1e-3, "max_steps": 4}, checkpointing={"every_n_steps": 2, "keep_last_k": 5},
                             tuning={"lora": {"rank": 4, "alpha": 8, "dropout": 0.2}}, **overrides)

    run(config("first"))
    run(config("second"))
    first, second = adapters(tmp_path / "first"), adapters(tmp_path / "second")
    assert list(first) == list(second) == [2, 4]
    for step in (2, 4):
        assert first[step].keys() == second[step].keys()
        assert all(torch.equal(first[step][k], second[step][k]) for k in first[step]), f"step {step} differs"
    assert not all(torch.equal(first[2][k], first[4][k]) for k in first[2])  # training moved the adapter

    killed = config("killed", failure={"inject_at_step": 3})
    with pytest.raises(InjectedFailure):
        run(killed)
    assert list(list_checkpoints(killed.run_dir)) == [2]
    run(killed, find_checkpoint(killed.run_dir))  # what a relaunch resumes from
    resumed = adapters(killed.run_dir)
    assert all(torch.equal(first[4][k], resumed[4][k]) for k in first[4]), "resumed run differs from uninterrupted"
