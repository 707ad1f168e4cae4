"""ProPainter training recipes in process (no Ray) on a synthetic clip with exact precomputed flows: the GAN step,
exact resume with the LR schedule, export into the inference pipeline, the multistep schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from propainter_clips import write_translating_clip, write_translation_flows
from vipo.pipelines.propainter import ProPainterPipeline
from vipo.train.checkpointing import RECIPE_STATE_FILE, WEIGHTS_DIR, find_checkpoint
from vipo.train.config import load_train_config
from vipo.train.engine import MultiStepWarmup, WorkerContext
from vipo.train.export import export
from vipo.train.propainter import ProgressiveSettings, resize_batch
from vipo.train.recipes import get_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
FRAMES = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict[str, Path]:
    """Frames and exact flows at 32x48 (flow completion) and 64x64 (the generator's smallest comfortable size)."""
    out = {}
    for name, (height, width) in {"small": (32, 48), "square": (64, 64)}.items():
        root = tmp_path_factory.mktemp(name)
        out[name] = write_translating_clip(root / "frames", FRAMES, height, width)
        out[f"{name}_flows"] = write_translation_flows(root / "flows", FRAMES, height, width)
    return out


def make_recipe(name: str, clip: dict[str, Path], output_dir: Path, *overrides: str, checkpoint: Path | None = None):
    size = "small" if name == "flowcomp" else "square"
    shape = "[32,48]" if size == "small" else "[64,64]"
    cfg = load_train_config(CONFIGS / f"{name}_demo.yaml", [
        f"output_dir={output_dir}", "tracking.enabled=false", "validation.every_n_steps=null",
        "export_on_finish=false", f"data.sources=[{{kind: frame_folders, root: {clip[size]}}}]",
        f"data.flows_root={clip[f'{size}_flows']}", f"data.size={shape}", "data.num_ref_frames=0" if size == "small"
        else "data.num_ref_frames=1", *overrides,
    ])
    recipe = get_recipe(cfg.recipe)(cfg, WorkerContext())
    recipe.setup(checkpoint)
    return recipe


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_multistep_schedule_warms_up_then_decays_at_milestones():
    factor = MultiStepWarmup(warmup_steps=4, start=0.01, milestones=(6, 8), gamma=0.5)
    assert [factor(s) for s in range(10)] == pytest.approx(
        [0.01, 0.2575, 0.505, 0.7525, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


def test_progressive_size_grows_in_stages_and_batches_are_resampled_with_scaled_flows():
    progressive = ProgressiveSettings(start_size=(120, 216), end_size=(240, 432), grow_steps=[50, 100, 150])
    assert [progressive.size_at(s, (240, 432)) for s in (0, 49, 50, 100, 150, 10**6)] == [
        (120, 216), (120, 216), (160, 288), (200, 360), (240, 432), (240, 432)]
    assert ProgressiveSettings().size_at(7, (64, 96)) == (64, 96)
    flows = torch.zeros(1, 2, 2, 16, 32)
    flows[:, :, 0], flows[:, :, 1] = 4.0, -2.0
    holes = torch.zeros(1, 3, 1, 16, 32)
    holes[..., 4:12, 8:24] = 1
    batch = {"frames": torch.rand(1, 3, 3, 16, 32), "holes": holes, "flows_forward": flows, "flows_backward": -flows}
    small = resize_batch(batch, (8, 8))
    assert small["frames"].shape == (1, 3, 3, 8, 8) and set(small["holes"].unique().tolist()) == {0.0, 1.0}
    # Width shrinks 4x, height 2x: dx 4 -> 1, dy -2 -> -1.
    assert torch.all(small["flows_forward"][:, :, 0] == 1) and torch.all(small["flows_forward"][:, :, 1] == -1)
    assert torch.all(small["flows_backward"][:, :, 0] == -1)


def test_gan_step_updates_only_d_then_only_g_and_checkpoints_both(clip, tmp_path):
    recipe = make_recipe("propainter", clip, tmp_path, "loss.vgg.layers={relu1_1: 1.0}", "data.num_local_frames=3")
    engine = recipe.engine
    generator, discriminator = engine.model.generator, engine.model.discriminator
    g_before, d_before = snapshot(generator), snapshot(discriminator)
    after_d = {}
    discriminator_step = engine.discriminator_step

    def spy(loss_fn):
        loss = discriminator_step(loss_fn)
        after_d.update(g=snapshot(generator), d=snapshot(discriminator))
        return loss

    engine.discriminator_step = spy
    batch = next(iter(recipe.loop.epoch_loader(0)))
    loss, grad_norm = engine.micro_step(lambda: recipe.compute_loss(batch)[0])
    assert torch.isfinite(loss) and grad_norm is not None and grad_norm > 0
    assert same(g_before, after_d["g"]), "the discriminator step moved the generator"
    assert not same(d_before, after_d["d"]), "the discriminator did not move"
    assert not same(after_d["g"], snapshot(generator)), "the generator did not move"
    assert same(after_d["d"], snapshot(discriminator)), "the generator step moved the discriminator"
    assert all(p.grad is None for p in discriminator.parameters())  # no generator gradient left in D

    # A checkpoint holds both networks, both optimisers and both schedules; a new recipe restores all of them.
    engine.discriminator_step = discriminator_step
    recipe.loop.progress.step = 1
    recipe.loop.save({"loss": float(loss)})
    checkpoint = find_checkpoint(recipe.cfg.run_dir)
    assert {p.name for p in (checkpoint / WEIGHTS_DIR).iterdir()} == {"ProPainter.pth", "discriminator.pth"}
    assert (checkpoint / "discriminator" / RECIPE_STATE_FILE).is_file()
    resumed = make_recipe("propainter", clip, tmp_path / "resumed", "loss.vgg.layers={relu1_1: 1.0}",
                          "data.num_local_frames=3", checkpoint=checkpoint)
    assert resumed.loop.progress.step == 1
    assert same(snapshot(resumed.engine.model.generator), snapshot(generator))
    assert same(snapshot(resumed.engine.model.discriminator), snapshot(discriminator))
    for name in ("generator", "discriminator"):
        original, restored = getattr(engine, name), getattr(resumed.engine, name)
        assert restored.scheduler.state_dict() == original.scheduler.state_dict()
        for a, b in zip(original.optimizer.state.values(), restored.optimizer.state.values()):
            assert all(torch.equal(a[key], b[key]) for key in ("exp_avg", "exp_avg_sq"))
    recipe.cleanup()
    resumed.cleanup()


def test_flowcomp_resume_is_bit_identical_and_exports_into_the_pipeline(clip, tmp_path):
    schedule = ["optim.max_steps=4", "checkpointing.every_n_steps=2", "optim.warmup_steps=2", "optim.milestones=[3]"]
    straight = make_recipe("flowcomp", clip, tmp_path / "straight", *schedule)
    straight.train()
    lrs_straight = straight.engine.scheduler.get_last_lr()
    straight.cleanup()
    run = tmp_path / "straight" / "flowcomp-demo"
    interrupted = make_recipe("flowcomp", clip, tmp_path / "resumed", *schedule,
                              checkpoint=find_checkpoint(run, 2))
    assert interrupted.loop.progress.step == 2
    interrupted.train()
    assert interrupted.engine.scheduler.get_last_lr() == lrs_straight == [1e-4 * 0.5]
    resumed_run = tmp_path / "resumed" / "flowcomp-demo"
    final, resumed_final = (torch.load(find_checkpoint(r, 4) / WEIGHTS_DIR / "recurrent_flow_completion.pth")
                            for r in (run, resumed_run))
    assert final.keys() == resumed_final.keys()
    assert all(torch.equal(final[k], resumed_final[k]) for k in final)
    states = [torch.load(find_checkpoint(r, 4) / RECIPE_STATE_FILE, weights_only=False) for r in (run, resumed_run)]
    assert states[0]["scheduler"] == states[1]["scheduler"]
    interrupted.cleanup()

    # The export is a complete inference folder that the pipeline loads strictly, holding the trained weights.
    exported = export(run, 4)
    pipeline = ProPainterPipeline.from_pretrained(exported)
    assert all(torch.equal(v, final[k]) for k, v in pipeline.flow_completion.state_dict().items())

    from evaluation.methods import ProPainterCheckpointMethod

    method = ProPainterCheckpointMethod(checkpoint=run)
    assert method.checkpoint_folder() == find_checkpoint(run, 4)
    assert callable(method.load("cpu"))


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("name", ["flowcomp", "propainter"])
def test_demo_config_trains_on_ray_with_two_cpu_workers(ray_local, tmp_path, name):
    """`vipo train jobs/configs/<name>_demo.yaml` as shipped (sample clips, RAFT on the fly, validation, export)."""
    from vipo.train.runner import fit

    cfg = load_train_config(CONFIGS / f"{name}_demo.yaml", [f"output_dir={tmp_path}"])
    result = fit(cfg)
    assert result.error is None
    assert find_checkpoint(cfg.run_dir).name == "checkpoint-00000004"
    ProPainterPipeline.from_pretrained(sorted((cfg.run_dir / "export").glob("step_*"))[-1])
