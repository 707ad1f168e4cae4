"""Stage 3 recipe on tiny on-disk weights and tiny preference shards: configs, the full-fine-tuning reference, export
(merged ``unet_main`` vs the LoRA adapter, both through ``DiffuEraserPipeline``), the DPO-stage-1 + SFT-stage-2
composition, and the recipe end to end through Ray Train's ``TorchTrainer``."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from vipo.config import ConfigError, dump_config, load_config, validate_config
from vipo.losses import DPOHealthError, DPOHealthMonitor
from vipo.data import ClipRecord, DPODataset, Manifest, Negative, Provenance, ShardWriter, encode_clip
from vipo.models.diffueraser_weights import DiffuEraserWeights
from vipo.models.lora import adapter_disabled, load_lora
from vipo.models.tiny import write_tiny_weights
from vipo.models.unet_brushnet import BrushNetUNet
from vipo.pipelines.diffueraser import DiffuEraserPipeline
from vipo.tracking import MemoryLogger
from vipo.train.checkpointing import CONFIG_FILE, PROGRESS_FILE, WEIGHTS_DIR, TrainingProgress
from vipo.train.config import load_train_config
from vipo.train.dpo_models import build_reference, load_policy, save_policy
from vipo.train.dpo_step import pair_predictions, preference_inputs
from vipo.train.engine import WorkerContext
from vipo.train.recipes.stage3 import Stage3Config, Stage3Recipe

FRAMES, SIZE = 4, 32
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "stage3_dpo_demo.yaml"


def preference_clip(index: int) -> ClipRecord:
    """A smooth random 4-frame 32×32 clip, a moving box hole, a blurred composited negative and its raw form."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, (FRAMES, 4, 4, 3), dtype=np.uint8)
    frames = np.stack([cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for f in coarse])
    hole = np.zeros((FRAMES, SIZE, SIZE), bool)
    for t in range(FRAMES):
        hole[t, 8:20, 6 + 2 * t:18 + 2 * t] = True
    blurred = np.stack([cv2.blur(f, (9, 9)) for f in frames])
    composite = np.where(hole[..., None], blurred, frames)
    negatives = [Negative("blur", composite, composited=True), Negative("blur", blurred, composited=False)]
    return ClipRecord("synthetic/clip", index, 0, index, range(FRAMES), frames, hole, negatives)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stage3_shards")
    manifest = Manifest(folder)
    with ShardWriter(folder / "shard-00000.parquet") as writer:
        writer.write_rows([encode_clip(preference_clip(i), Provenance("test", "0", "none")) for i in range(2)])
    manifest.add_shard(writer.info)
    manifest.save()
    return folder


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage3_weights")
    write_tiny_weights(root, seed=0)
    return root


def stage3_config(root: Path, shards: Path, output_dir: Path, **overrides) -> Stage3Config:
    data = {
        "recipe": "stage3", "output_dir": str(output_dir), "tracking": {"enabled": False},
        "model": {"weights_root": str(root)}, "data": {"shards": str(shards)},
        "tuning": {"lora": {"rank": 4, "alpha": 8}},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate_config(Stage3Config, data)


def randomise_lora(policy, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))


def test_configs_validate_and_reject_inconsistent_settings(tmp_path, weights_root, shards):
    demo = load_train_config(DEMO_CONFIG, [f"data.shards={shards}", f"model.weights_root={weights_root}"])
    assert isinstance(demo, Stage3Config)
    assert demo.data.region_scale == 8 and demo.loss.kind == "region_reg_dpo" and demo.tuning.scope == "lora"
    assert Stage3Config.model_fields["tuning"].default.lora.rank == 16
    assert Stage3Config.model_fields["tuning"].default.lora.alpha == 32
    assert demo.noise == "forward"  # standard Diffusion-DPO; inversion is the ablation
    ablation = load_train_config(DEMO_CONFIG, [f"data.shards={shards}", f"model.weights_root={weights_root}",
                                               "noise=inversion", "inversion_steps=4"])
    assert (ablation.noise, ablation.inversion_steps) == ("inversion", 4)
    bad = {
        "data.region_scale=1": "region_scale must be 8",
        "reference.offload=true": "reference.offload needs a separate reference",
        "model.stage=1": "model.stage 1 needs model.parent",
        f"model.parent={shards}": "lacks unet_main/",
        "loss.kind=sigmoid": "loss",
        "noise=ddim": "noise: Input should be 'forward' or 'inversion'",
        "inversion_steps=0": "inversion_steps",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(Stage3Config, DEMO_CONFIG, [f"data.shards={shards}", override])


def stage1_export(root: Path, folder: Path) -> Path:
    """A stage-1 export folder (2-D ``unet_main`` + ``brushnet``) made of the tiny layout's weights."""
    layout = DiffuEraserWeights(root)
    shutil.copytree(layout.unet_2d, folder / "unet_main")
    shutil.copytree(layout.brushnet, folder / "brushnet")
    return folder


def test_full_size_configs_validate_apart_from_their_paths(tmp_path, weights_root, shards):
    parent = stage1_export(weights_root, tmp_path / "parent")
    paths = [f"output_dir={tmp_path}", f"model.weights_root={weights_root}", f"model.parent={parent}",
             f"data.shards={shards}"]
    configs = DEMO_CONFIG.parent
    seed = load_train_config(configs / "stage3_dpo.yaml", paths)
    assert seed.tuning.scope == "lora" and (seed.tuning.lora.rank, seed.tuning.lora.alpha) == (16, 32)
    assert seed.loss.kind == "region_reg_dpo" and seed.loss.beta == 500 and seed.model.stage == 2
    assert 1e-6 <= seed.optim.lr <= 5e-6 and seed.optim.max_grad_norm and seed.model.gradient_checkpointing
    exp11 = load_train_config(configs / "stage3_log_ratio.yaml", paths)
    assert exp11.loss.kind == "log_ratio" and exp11.tuning.scope == "full" and exp11.model.stage == 1
    assert exp11.deepspeed.enabled and exp11.deepspeed.zero_stage == 2 and exp11.precision == "bf16"


@pytest.mark.parametrize("stage", [2, 1])
def test_full_scope_trains_the_stage_modules_against_a_frozen_copy(tmp_path, weights_root, shards, stage):
    model = {"stage": 1, "parent": str(stage1_export(weights_root, tmp_path / "s1"))} if stage == 1 else {}
    cfg = stage3_config(weights_root, shards, tmp_path, tuning={"scope": "full"}, model=model)
    frozen, policy = load_policy(cfg.model, cfg.tuning, torch.device("cpu"), torch.float32, seed=0)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    reference = build_reference(cfg.model, cfg.tuning, cfg.reference, policy, torch.device("cpu"), torch.float32)
    assert reference.denoiser.unet is not policy.unet
    assert not any(p.requires_grad for p in reference.denoiser.parameters())
    if stage == 2:  # motion modules only; the frozen BrushNet is shared and runs once
        assert trainable and all(n.startswith("unet.") and "motion_modules" in n for n in trainable)
        assert reference.denoiser.brushnet is policy.brushnet
    else:  # the 2-D UNet and BrushNet; the reference has its own BrushNet copy
        assert trainable == {n for n, _ in policy.named_parameters()}
        assert reference.denoiser.brushnet is not policy.brushnet
    dataset = DPODataset(cfg.data, frozen.tokenizer)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    inputs = preference_inputs(batch, frozen, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert inputs.regions[0].shape == (2, FRAMES, 1, SIZE // 8, SIZE // 8)
    assert inputs.timesteps.shape == (2,)  # one t per pair, shared by its winner, loser and every frame
    predictions = pair_predictions(policy, policy, reference, inputs, frozen.scheduler, torch.float32)
    # Same weights, different kernels: SDPA picks another fp32 kernel with and without autograd (~5e-7 apart);
    # a wrong or differently-initialised copy is off by orders of magnitude more.
    torch.testing.assert_close(predictions.policy_win, predictions.ref_win, rtol=0, atol=1e-5)
    torch.testing.assert_close(predictions.policy_lose, predictions.ref_lose, rtol=0, atol=1e-5)

    # Resume: a checkpoint holds what trains, and the policy reloads it exactly (the reference stays the parent).
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if name in trainable:
                param.add_(0.01)
    save_policy(policy, cfg.model, cfg.tuning, tmp_path / "weights")
    _, resumed = load_policy(cfg.model, cfg.tuning, torch.device("cpu"), torch.float32, tmp_path / "weights", seed=0)
    resumed_params = dict(resumed.named_parameters())
    assert {n for n, p in resumed_params.items() if p.requires_grad} == trainable
    assert all(torch.equal(resumed_params[n], p) for n, p in policy.named_parameters())


def test_separate_reference_checkpoint_is_loaded_frozen_offloaded_and_not_checked_for_identity(
        tmp_path, weights_root, shards):
    """``reference.path``: the reference is that folder's ``unet_main`` (not the policy with its adapter off), frozen,
    on CPU between passes, sharing the policy's frozen BrushNet when the folder has none; the step-0 identity
    check is off, since policy and reference differ on purpose."""
    from safetensors.torch import load_file, save_file

    from vipo.models.diffueraser_weights import load_diffueraser_components

    other = tmp_path / "other_reference"
    shutil.copytree(DiffuEraserWeights(weights_root).unet_main, other / "unet_main")
    (weights_file,) = (other / "unet_main").glob("*.safetensors")
    gen = torch.Generator().manual_seed(0)
    save_file({key: value + 0.05 * torch.randn(value.shape, generator=gen)
               for key, value in load_file(weights_file).items()}, weights_file)
    cfg = stage3_config(weights_root, shards, tmp_path, reference={"path": str(other), "offload": True})
    recipe = Stage3Recipe(cfg, WorkerContext())
    recipe.setup(None)
    reference, policy = recipe.reference, recipe.engine.model
    assert not reference.adapter_off and reference.offload
    assert reference.denoiser.unet is not policy.unet and reference.denoiser.brushnet is policy.brushnet
    assert not any(p.requires_grad for p in reference.denoiser.unet.parameters())
    expected = load_diffueraser_components(weights_root, stage=2, unet_path=other / "unet_main")["unet"].state_dict()
    got = reference.denoiser.unet.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert not recipe.health.identical_start

    batch = torch.utils.data.default_collate([recipe.loop.dataset[0], recipe.loop.dataset[1]])
    loss, metrics = recipe.compute_loss(batch)  # step 0 with s != 0: no DPOHealthError
    assert metrics["dpo/s"] != 0 and torch.isfinite(loss)
    assert next(reference.denoiser.unet.parameters()).device.type == "cpu"


def test_export_merged_and_adapter_load_in_the_pipeline_and_agree(tmp_path, weights_root, shards):
    cfg = stage3_config(weights_root, shards, tmp_path)
    _, policy = load_policy(cfg.model, cfg.tuning, torch.device("cpu"), torch.float32, seed=0)
    randomise_lora(policy)
    checkpoint = tmp_path / "checkpoint-00000001"
    save_policy(policy, cfg.model, cfg.tuning, checkpoint / WEIGHTS_DIR)
    out = tmp_path / "export"
    Stage3Recipe.export(cfg, checkpoint, out)
    assert {p.name for p in out.iterdir()} == {"unet_main", "brushnet", "lora"}
    _, resumed = load_policy(cfg.model, cfg.tuning, torch.device("cpu"), torch.float32, checkpoint / WEIGHTS_DIR,
                             seed=0)
    lora = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    assert all(p.requires_grad and torch.equal(p, lora[n]) for n, p in resumed.named_parameters() if "lora_" in n)

    gen = torch.Generator().manual_seed(1)
    sample, conditioning = torch.randn(FRAMES, 4, 4, 4, generator=gen), torch.randn(FRAMES, 5, 4, 4, generator=gen)
    text = torch.randn(1, 77, 32, generator=gen)
    args = (sample, torch.tensor([400]), text, conditioning, FRAMES)
    with torch.no_grad():
        trained = policy(*args)
        with adapter_disabled(policy.unet):
            base = policy(*args)
        merged_pipe = DiffuEraserPipeline.from_weights(weights_root, pcm_steps=None, unet_path=out / "unet_main",
                                                       brushnet_path=out / "brushnet")
        adapter_pipe = DiffuEraserPipeline.from_weights(weights_root, pcm_steps=None, brushnet_path=out / "brushnet")
        load_lora(adapter_pipe.unet, out / "lora")
        merged = BrushNetUNet(merged_pipe.unet, merged_pipe.brushnet)(*args)
        adapter = BrushNetUNet(adapter_pipe.unet, adapter_pipe.brushnet)(*args)
    assert (trained - base).abs().max() > 1e-2  # the adapter matters, so a lost alpha/rank scale would show
    # Unfused adapter: the training computation itself. Merged: W + (α/r)·BA folded in fp32, rounding only.
    assert (adapter - trained).abs().max() <= 1e-6
    assert (merged - trained).abs().max() <= 1e-4 * trained.abs().max()

    clip = preference_clip(5)
    for pipe in (merged_pipe, adapter_pipe):
        pipe.set_progress_bar_config(disable=True)
    kwargs = {"seed": 0, "num_inference_steps": 2, "mask_dilation_iter": 0}
    frames_merged = merged_pipe(clip.frames, clip.hole, **kwargs).raw_frames.astype(int)
    frames_adapter = adapter_pipe(clip.frames, clip.hole, **kwargs).raw_frames.astype(int)
    assert np.abs(frames_merged - frames_adapter).max() <= 1  # one 8-bit level: rounding of near-equal outputs


def test_compose_a_dpo_stage1_lora_run_with_sft_stage2_motion_modules(tmp_path, weights_root, shards):
    from jobs.export import run as export_run

    parent = stage1_export(weights_root, tmp_path / "stage1_export")
    stage2_export = tmp_path / "stage2_export"
    shutil.copytree(DiffuEraserWeights(weights_root).motion_adapter, stage2_export / "motion_adapter")
    cfg = stage3_config(weights_root, shards, tmp_path, model={"stage": 1, "parent": str(parent)})
    _, policy = load_policy(cfg.model, cfg.tuning, torch.device("cpu"), torch.float32, seed=0)
    assert isinstance(policy.unet, UNet2DConditionModel)
    randomise_lora(policy)
    checkpoint = tmp_path / "run" / "checkpoint-00000001"
    save_policy(policy, cfg.model, cfg.tuning, checkpoint / WEIGHTS_DIR)
    (checkpoint / CONFIG_FILE).write_text(yaml.safe_dump(dump_config(cfg)))
    (checkpoint / PROGRESS_FILE).write_text(TrainingProgress(step=1).to_json())

    export_run(tmp_path / "run", "latest", tmp_path / "hybrid", compose=str(stage2_export))
    hybrid = UNetMotionModel.from_pretrained(tmp_path / "hybrid" / "unet_main", local_files_only=True)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    lora_a = policy.unet.get_submodule(name).lora_A["dpo"].weight
    lora_b = policy.unet.get_submodule(name).lora_B["dpo"].weight
    base = policy.unet.get_submodule(name).base_layer.weight
    expected = base + (8 / 4) * lora_b @ lora_a  # the DPO-tuned spatial weight, alpha/rank = 2
    assert torch.allclose(hybrid.get_submodule(name).weight, expected, atol=1e-6)
    adapter = MotionAdapter.from_pretrained(stage2_export / "motion_adapter", local_files_only=True)
    motion = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(hybrid.state_dict()[motion], adapter.state_dict()[motion])


def test_health_warnings_go_to_the_log_and_mlflow_tags(tmp_path, weights_root, shards, capsys):
    recipe = Stage3Recipe(stage3_config(weights_root, shards, tmp_path), WorkerContext())
    logger = MemoryLogger()
    recipe.loop = SimpleNamespace(progress=TrainingProgress(), logger=logger)
    recipe.health = DPOHealthMonitor(stuck_steps=3)
    still = {"s": torch.zeros(2), "logit": torch.zeros(2), "dgr": torch.full((2,), 250.0)}
    for step in range(3):
        recipe.loop.progress.step = step
        recipe._check_health(still)
        recipe._check_health(still)  # a second micro-batch of the same step is not counted again
    assert list(logger.tags) == ["vipo.health.stuck_at_ln2"]
    assert "DPO health [stuck_at_ln2]" in capsys.readouterr().err
    recipe.loop.progress.step, recipe._checked_step = 0, -1
    recipe.health = DPOHealthMonitor()
    with pytest.raises(DPOHealthError):
        recipe._check_health({**still, "logit": torch.tensor([0.5, 0.0])})


def test_recipe_end_to_end_through_ray_train(ray_local, tmp_path, weights_root, shards):
    from mlflow.tracking import MlflowClient

    from vipo.train.runner import fit

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = stage3_config(
        weights_root, shards, tmp_path, name="stage3-e2e", seed=3,
        scaling={"num_workers": 1}, optim={"lr": 1e-3, "max_steps": 2},
        checkpointing={"every_n_steps": 2}, validation={"every_n_steps": 2, "num_videos": 1, "num_inference_steps": 1},
        tracking={"enabled": True, "tracking_uri": tracking_uri, "experiment": "stage3-test"},
    )
    result = fit(cfg)
    assert result.error is None
    export = cfg.run_dir / "export" / "step_00000002"
    assert (export / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (export / "unet_main" / "config.json").is_file()

    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("stage3-test").experiment_id])[0]
    assert run.data.tags["vipo.parent_checkpoint"] == str(DiffuEraserWeights(weights_root).unet_main.parent)
    assert run.data.tags["vipo.manifest_hash"] != "none"
    assert not [tag for tag in run.data.tags if tag.startswith("vipo.health")]
    history = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("dpo/dgr", "dpo/s", "dpo/implicit_acc", "loss", "grad_norm", "dpo/s_boundary")}
    assert all(len(values) == 2 for values in history.values())
    # Step 1 ran at policy = reference: s = 0, L = ln 2, DGR = β′/2, accuracy ½ (the step-0 health check passed).
    assert history["dpo/s"][0] == 0 and history["dpo/implicit_acc"][0] == 0.5
    assert history["loss"][0] == pytest.approx(math.log(2)) and history["dpo/dgr"][0] == pytest.approx(250.0)
    assert history["dpo/s"][1] != 0 and history["grad_norm"][0] > 0
    images = client.list_artifacts(run.info.run_id, "images")
    assert images, "no sample inpaintings were logged"
