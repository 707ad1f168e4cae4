"""Training runner pieces without models: config validation, the DeepSpeed config, checkpoint helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vipo.config import ConfigError
from vipo.data import SAMPLE_DATA_ROOT
from vipo.train.checkpointing import (
    PROGRESS_FILE,
    TrainingProgress,
    atomic_save,
    capture_rng,
    checkpoint_dir_name,
    find_checkpoint,
    restore_rng,
)
from vipo.train.config import load_train_config
from vipo.train.deepspeed import deepspeed_config
from vipo.train.engine import TorchEngine, WorkerContext

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
DEMO = CONFIGS / "stage1_demo.yaml"


def demo_config(tmp_path: Path, *overrides: str, config: Path = DEMO):
    return load_train_config(config, [f"output_dir={tmp_path}", f"model.weights_root={tmp_path / 'w'}", *overrides])


# -- configs ---------------------------------------------------------------------------------------------------

def test_demo_configs_validate_and_choose_their_recipe(tmp_path):
    stage1 = demo_config(tmp_path)
    stage2 = demo_config(tmp_path, config=CONFIGS / "stage2_demo.yaml")
    assert type(stage1).__name__ == "Stage1Config" and type(stage2).__name__ == "Stage2Config"
    assert stage1.run_dir == tmp_path / "stage1-demo"
    assert stage1.scaling.num_workers == 2 and not stage1.scaling.use_gpu


def test_every_recipe_runs_the_config_class_its_config_validates_into():
    # Configs validate through RECIPE_CONFIGS (no model imports); workers run get_recipe(name): the two must agree.
    from vipo.train.recipes import RECIPES, get_recipe
    from vipo.train.recipes.configs import RECIPE_CONFIGS

    assert set(RECIPE_CONFIGS) == set(RECIPES)
    for name, config_class in RECIPE_CONFIGS.items():
        assert get_recipe(name).config_class is config_class, name
        assert config_class.model_fields["recipe"].default == name


def test_full_size_configs_validate_apart_from_their_paths(tmp_path):
    for name in ("stage1.yaml", "stage2.yaml"):
        cfg = load_train_config(CONFIGS / name, [
            f"output_dir={tmp_path}", f"model.weights_root={tmp_path}", "model.pretrained_stage1_path=null",
            f"data.sources.0.root={SAMPLE_DATA_ROOT}", f"data.sources.1.root={tmp_path}",
        ])
        assert cfg.deepspeed.enabled and cfg.deepspeed.zero_stage == 2 and cfg.deepspeed.offload_optimizer
        assert cfg.precision == "bf16"


def test_data_seed_follows_the_run_seed_unless_set(tmp_path):
    assert demo_config(tmp_path, "seed=5").data.seed == 5
    assert demo_config(tmp_path, "seed=5", "data.seed=2").data.seed == 2


def test_stage_default_clip_lengths(tmp_path):
    def without_nframes(name: str) -> Path:
        text = (CONFIGS / name).read_text().replace("    nframes: 4\n", "")
        path = tmp_path / name
        path.write_text(text)
        return path

    assert demo_config(tmp_path, config=without_nframes("stage1_demo.yaml")).data.clip.nframes == 10
    assert demo_config(tmp_path, config=without_nframes("stage2_demo.yaml")).data.clip.nframes == 22


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("recipe=stage9", "recipe: unknown recipe 'stage9'"),
        ("optim.lrr=1", "optim.lrr: unknown key"),
        ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage: Input should be less than or equal to 3"),
        ("deepspeed.enabled=true", "deepspeed.enabled needs scaling.use_gpu: true"),
        ("precision=fp16", "precision fp16 needs GPUs"),
        ("name=a/b", "name: use letters"),
        ("model.tiny_weights_seed=null", "weights_root does not exist"),
        ("data.clip.nframes=0", "data.clip.nframes: Input should be greater than or equal to 1"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        demo_config(tmp_path, override)
    text = str(err.value)
    assert "\n" not in text and message in text, text
    assert text.startswith(str(DEMO))


# -- DeepSpeed config: DeepSpeed's own parser must read back what the config asked for ----------------------------

@pytest.mark.parametrize(
    ("zero_stage", "offload", "precision", "clip", "accum"),
    [(1, False, "bf16", 1.0, 1), (2, True, "bf16", 0.5, 4), (3, True, "fp16", None, 2)],
)
def test_deepspeed_config_reads_back(tmp_path, zero_stage, offload, precision, clip, accum):
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = demo_config(
        tmp_path, "scaling.use_gpu=true", "deepspeed.enabled=true", f"deepspeed.zero_stage={zero_stage}",
        f"deepspeed.offload_optimizer={str(offload).lower()}", f"precision={precision}",
        f"optim.max_grad_norm={'null' if clip is None else clip}", f"optim.grad_accum={accum}", "batch_size=2",
        "optim.lr=3e-5", "optim.weight_decay=0.05", "optim.betas=[0.8, 0.95]",
    )
    parsed = DeepSpeedConfig(deepspeed_config(cfg))  # world size 1 outside a process group
    assert parsed.zero_optimization_stage == zero_stage
    assert (parsed.zero_config.offload_optimizer is not None
            and parsed.zero_config.offload_optimizer.device == "cpu") == offload
    assert parsed.bfloat16_config.enabled == (precision == "bf16")
    assert parsed.bfloat16_config.check_grad_overflow  # the step guard's skips ride on it (DeepSpeedEngine)
    assert parsed.float16_config.enabled == (precision == "fp16")
    assert parsed.gradient_clipping == (clip or 0.0)
    assert parsed.gradient_accumulation_steps == accum
    assert parsed.train_micro_batch_size_per_gpu == 2
    assert parsed.train_batch_size == 2 * accum
    assert parsed.optimizer_name == "adamw"
    assert parsed.optimizer_params == {"lr": 3e-5, "betas": [0.8, 0.95], "eps": 1e-8, "weight_decay": 0.05}
    if zero_stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save


# -- checkpoint helpers ----------------------------------------------------------------------------------------

def _fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> Path:
    folder = run_dir / checkpoint_dir_name(step)
    folder.mkdir(parents=True)
    if complete:
        (folder / PROGRESS_FILE).write_text(TrainingProgress(step=step).to_json())
    return folder


def test_find_checkpoint(tmp_path):
    _fake_checkpoint(tmp_path, 2)
    four = _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 6, complete=False)  # upload cut short: never chosen
    assert find_checkpoint(tmp_path) == four
    assert find_checkpoint(tmp_path, "2") == tmp_path / "checkpoint-00000002"
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 6; available: 2, 4"):
        find_checkpoint(tmp_path, 6)
    with pytest.raises(ValueError, match="integer or 'latest'"):
        find_checkpoint(tmp_path, "last")
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        find_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        find_checkpoint(tmp_path / "empty")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.pt"
    atomic_save({"a": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, target)
    assert torch.load(target) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.pt"]


def test_progress_round_trip(tmp_path):
    progress = TrainingProgress(step=7, epoch=2, batch_in_epoch=3, seed=5, samples_seen=28)
    (tmp_path / PROGRESS_FILE).write_text(progress.to_json())
    assert TrainingProgress.from_file(tmp_path / PROGRESS_FILE) == progress
    (tmp_path / PROGRESS_FILE).write_text("{")
    with pytest.raises(RuntimeError, match="checkpoint is damaged"):
        TrainingProgress.from_file(tmp_path / PROGRESS_FILE)


def test_rng_restore_replays_every_stream():
    noise = torch.Generator().manual_seed(3)
    state = capture_rng(noise)

    def draw():
        import random

        return (random.random(), np.random.rand(), torch.rand(2).tolist(), torch.randn(2, generator=noise).tolist())

    first = draw()
    restore_rng(state, noise)
    assert draw() == first


def test_export_of_a_missing_run_is_a_one_line_error(tmp_path):
    from jobs.export import run

    with pytest.raises(ConfigError, match="no such run folder"):
        run(tmp_path / "nope")


# -- the runner's Ray Train settings and the DDP engine's optimiser side ----------------------------------------

def test_trainer_takes_workers_run_name_keep_last_k_and_max_failures_from_the_config(tmp_path):
    from vipo.train.runner import build_trainer

    cfg = demo_config(tmp_path, "name=my-run", "scaling.num_workers=3", "checkpointing.keep_last_k=5",
                      "failure.max_failures=4")
    trainer = build_trainer(cfg)  # building it starts no Ray
    assert trainer.scaling_config.num_workers == 3 and not trainer.scaling_config.use_gpu
    run = trainer.run_config
    assert run.name == "my-run" and Path(run.storage_path) == tmp_path
    assert run.checkpoint_config.num_to_keep == 5
    assert run.failure_config.max_failures == 4
    assert trainer.train_loop_config["recipe"] == "stage1" and trainer.train_loop_config["name"] == "my-run"


def _engine(tmp_path: Path, *overrides: str):
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.arange(6.0).reshape(2, 3) / 6)
        model.bias.zero_()
    return TorchEngine(model, demo_config(tmp_path, *overrides), WorkerContext())


def _train(engine, steps: int, start: int = 0) -> list[float]:
    lrs = []
    for i in range(start, start + steps):
        x = torch.linspace(-1, 1, 12).reshape(4, 3) * (i + 1)
        engine.micro_step(lambda: engine.module(x).pow(2).mean())
        lrs.append(engine.lr)
    return lrs


def test_torch_engine_resume_restores_optimiser_and_lr_schedule(tmp_path):
    """A non-constant schedule and Adam moments: a resumed engine must continue exactly where the saved one was
    (upstream ProPainter forgets the scheduler, which shows here as a different lr sequence)."""
    schedule = ("optim.lr=0.1", "optim.lr_scheduler=linear", "optim.warmup_steps=2", "optim.max_steps=6")
    uninterrupted = _engine(tmp_path, *schedule)
    _train(uninterrupted, 3)
    uninterrupted.save_state(tmp_path, WorkerContext())
    weights_at_save = {k: v.clone() for k, v in uninterrupted.model.state_dict().items()}
    expected_lrs = _train(uninterrupted, 3, start=3)

    resumed = _engine(tmp_path, *schedule)
    resumed.model.load_state_dict(weights_at_save)  # the recipe loads weights; the engine the optimiser side
    resumed.load_state(tmp_path)
    assert _train(resumed, 3, start=3) == expected_lrs
    assert len(set(expected_lrs)) > 1  # the schedule really moves
    for key, value in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_torch_engine_reports_the_gradient_norm_before_clipping(tmp_path):
    engine = _engine(tmp_path, "optim.max_grad_norm=0.001", "optim.lr=0.1")
    x = torch.linspace(-1, 1, 12).reshape(4, 3)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(engine.model.state_dict())
    reference(x).pow(2).mean().backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
    _, grad_norm = engine.micro_step(lambda: engine.module(x).pow(2).mean())
    assert expected > 0.01 and grad_norm == pytest.approx(float(expected), rel=1e-6)
