"""Stage 1/2 recipes on tiny models, in process (no Ray): overfitting, what trains, batch size 2, export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from evaluation.scorer import Scorer
from evaluation.scoring import ScoringConfig
from vipo.models.brushnet import BrushNetModel
from vipo.models.diffueraser_weights import load_diffueraser_components
from vipo.models.tiny import write_tiny_weights
from vipo.train.config import load_train_config
from vipo.train.engine import WorkerContext
from vipo.train.export import export
from vipo.train.recipes import get_recipe
from vipo.train.validation import REFERENCE_FILE

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_weights")
    write_tiny_weights(root, seed=0)
    return root


def make_recipe(stage: str, weights_root: Path, output_dir: Path, *overrides: str, scorer=None):
    cfg = load_train_config(CONFIGS / f"{stage}_demo.yaml", [
        f"output_dir={output_dir}", f"model.weights_root={weights_root}", "model.tiny_weights_seed=null",
        "tracking.enabled=false", "validation.every_n_steps=null", "data.clip.nframes=3", *overrides,
    ])
    recipe = get_recipe(cfg.recipe)(cfg, WorkerContext())
    recipe.scorer = scorer  # what run_recipe injects on a Ray worker
    recipe.setup(None)
    return recipe


def first_batches(recipe, count: int) -> list[dict]:
    loader = iter(recipe.loop.epoch_loader(0))
    return [next(loader) for _ in range(count)]


def step(recipe, batch) -> tuple[float, float | None]:
    loss, grad_norm = recipe.engine.micro_step(lambda: recipe.compute_loss(batch)[0])
    return float(loss), grad_norm


def test_stage1_overfits_a_fixed_batch(weights_root, tmp_path):
    recipe = make_recipe("stage1", weights_root, tmp_path, "optim.lr=1e-3")
    (batch,) = first_batches(recipe, 1)
    losses = []
    for _ in range(8):
        recipe.loop.noise.manual_seed(0)  # the same timestep and noise every step: a fixed regression target
        losses.append(step(recipe, batch)[0])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.6 * losses[0], losses
    trained = {name for name, p in recipe.engine.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("unet.") for n in trained) and any(n.startswith("brushnet.") for n in trained)


def test_stage2_trains_only_the_motion_modules_with_batch_size_2(weights_root, tmp_path):
    recipe = make_recipe("stage2", weights_root, tmp_path, "batch_size=2", "optim.lr=1e-3",
                         "model.gradient_checkpointing=true")
    model = recipe.engine.model
    assert model.unet.is_gradient_checkpointing
    motion = {name for name, _ in model.named_parameters() if name.startswith("unet.") and "motion_modules" in name}
    motion_params = {id(p) for n, p in model.named_parameters() if n in motion}
    assert motion and {id(p) for p in recipe.engine.params} == motion_params
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    frozen_before = [p.detach().clone() for p in recipe.frozen.vae.parameters()]
    (batch,) = first_batches(recipe, 1)
    assert batch["pixel_values"].shape[:2] == (2, 3)
    for _ in range(2):
        loss, grad_norm = step(recipe, batch)
        assert grad_norm is not None and grad_norm > 0 and torch.isfinite(torch.tensor(loss))
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= motion, sorted(changed - motion)[:5]
    assert len(changed) >= 0.9 * len(motion)  # (Adam moves every parameter whose gradient is non-zero)
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, recipe.frozen.vae.parameters()))


def test_unavailable_attention_backend_is_a_clear_error(weights_root, tmp_path, monkeypatch):
    import diffusers.models.attention as attention
    import diffusers.models.attention_processor as attention_processor

    for module in (attention, attention_processor):  # as if xformers were not installed
        monkeypatch.setattr(module, "is_xformers_available", lambda: False)
    with pytest.raises(RuntimeError, match="model.attention=xformers: .*install xformers or use sdpa"):
        make_recipe("stage1", weights_root, tmp_path, "model.attention=xformers")


def test_batch_of_two_equals_two_accumulated_batches_of_one(weights_root, tmp_path):
    """One timestep per clip, repeated over its frames for UNet and BrushNet, and noise drawn per clip: a batch
    of 2 must give the update of 2 accumulated batches of 1 (upstream's per-batch timesteps break this)."""
    # Adam's first step is lr·g/(|g|+eps): with the default eps it is ~lr·sign(g), where float rounding of a
    # near-zero gradient flips whole steps. eps=1 makes it ~lr·g, so the updates compare as gradients do.
    linear = ("optim.eps=1.0", "optim.weight_decay=0", "optim.lr=1.0", "optim.max_grad_norm=null")
    whole = make_recipe("stage2", weights_root, tmp_path / "a", "batch_size=2", "optim.grad_accum=1", *linear)
    split = make_recipe("stage2", weights_root, tmp_path / "b", "batch_size=1", "optim.grad_accum=2", *linear)
    before = [p.detach().clone() for p in whole.engine.params]
    assert all(torch.equal(a, b) for a, b in zip(before, split.engine.params))
    (pair,) = first_batches(whole, 1)
    singles = first_batches(split, 2)
    assert torch.equal(pair["pixel_values"], torch.cat([b["pixel_values"] for b in singles]))
    loss_pair, norm_pair = step(whole, pair)
    loss_first, norm_none = step(split, singles[0])
    loss_second, norm_split = step(split, singles[1])
    assert norm_none is None
    assert loss_pair == pytest.approx((loss_first + loss_second) / 2, rel=1e-5)
    assert norm_pair == pytest.approx(norm_split, rel=1e-4)
    # A per-clip/per-batch mix-up changes the gradient itself (O(1) relative); fp32 summation order, ~1e-6.
    whole_update = torch.cat([(p.detach() - p0).flatten() for p, p0 in zip(whole.engine.params, before)])
    split_update = torch.cat([(p.detach() - p0).flatten() for p, p0 in zip(split.engine.params, before)])
    assert whole_update.abs().max() > 0
    torch.testing.assert_close(whole_update, split_update, rtol=0, atol=1e-4 * float(whole_update.abs().max()))


def _assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    expected = reference.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_stage1_export_round_trip_and_compose(weights_root, tmp_path):
    stage1 = make_recipe("stage1", weights_root, tmp_path, "optim.max_steps=1", "validation.every_n_steps=1",
                         "validation.num_inference_steps=1",
                         scorer=Scorer(ScoringConfig(metrics=["psnr_hole", "outside_max_abs"])))
    stage1.train()  # outside Ray Train the loop writes the run folder itself and exports at the end
    logged = stage1.loop.logger  # tracking disabled: the in-memory logger
    ((step, grid),) = logged.images[next(iter(logged.images))]
    # GT | hole | reference (start weights) | policy, × 3 frames
    assert step == 1 and grid.dtype.name == "uint8" and grid.shape == (4 * 32, 3 * 32, 3)
    # The gate: start weights scored at step 0, the paired delta (one clip: mean = the clip's) at the checkpoint.
    ((ref_step, ref_psnr),) = logged.metrics["val/ref_psnr_hole"]
    ((val_step, psnr),) = logged.metrics["val/psnr_hole"]
    ((_, delta),) = logged.metrics["val/delta_psnr_hole"]
    (clip_key,) = [k for k in logged.metrics if k.startswith("val/delta_psnr_hole/")]
    assert (ref_step, val_step) == (0, 1) and delta == pytest.approx(psnr - ref_psnr) and delta != 0
    assert logged.metrics[clip_key] == logged.metrics["val/delta_psnr_hole"]
    assert logged.metrics["val/delta_outside_max_abs"] == [(1, 0.0)]
    assert (tmp_path / "stage1-demo" / "checkpoint-00000001" / REFERENCE_FILE).is_file()
    assert [artifact for _, artifact in logged.artifacts] == ["validation", "model"]
    out = tmp_path / "stage1-demo" / "export" / "step_00000001"
    assert out.is_dir()
    _assert_same_weights(UNet2DConditionModel.from_pretrained(out / "unet_main"), stage1.engine.model.unet)
    _assert_same_weights(BrushNetModel.from_pretrained(out / "brushnet"), stage1.engine.model.brushnet)
    loaded = load_diffueraser_components(weights_root, stage=1, unet_path=out / "unet_main",
                                         brushnet_path=out / "brushnet")
    _assert_same_weights(loaded["unet"], stage1.engine.model.unet)

    # A later stage-1 run starts from this export (model.pretrained_stage1_path), not from the layout's weights.
    again = make_recipe("stage1", weights_root, tmp_path / "again", f"model.pretrained_stage1_path={out}")
    assert again.parent_checkpoint == out
    _assert_same_weights(again.engine.model.unet, stage1.engine.model.unet)
    _assert_same_weights(again.engine.model.brushnet, stage1.engine.model.brushnet)
    layout_unet = load_diffueraser_components(weights_root, stage=1)["unet"].state_dict()
    assert any(not torch.equal(v, layout_unet[k]) for k, v in again.engine.model.unet.state_dict().items())

    # The hybrid: this stage-1 image model + the layout's motion adapter (a stage-2 "export" folder).
    stage2_export = tmp_path / "stage2_export"
    stage2_export.mkdir()
    MotionAdapter.from_pretrained(weights_root / "animatediff-motion-adapter-v1-5-2").save_pretrained(
        stage2_export / "motion_adapter")
    composed = export(tmp_path / "stage1-demo", "latest", compose=stage2_export)
    assert composed.name == "step_00000001_composed"
    unet = UNetMotionModel.from_pretrained(composed / "unet_main")
    expected = UNetMotionModel.from_unet2d(
        stage1.engine.model.unet, MotionAdapter.from_pretrained(stage2_export / "motion_adapter"))
    _assert_same_weights(unet, expected)


def test_stage2_export_round_trip(weights_root, tmp_path):
    recipe = make_recipe("stage2", weights_root, tmp_path, "optim.max_steps=2", "optim.lr=1e-3",
                         "optim.lr_scheduler=linear")
    recipe.train()
    # The lr each update used (linear decay from 1e-3 over 2 steps), not the schedule's next value.
    assert recipe.loop.logger.metrics["lr"] == [(1, pytest.approx(1e-3)), (2, pytest.approx(5e-4))]
    out = export(tmp_path / "stage2-demo", step=2, out_dir=tmp_path / "exported")
    assert sorted(p.name for p in out.iterdir()) == ["brushnet", "motion_adapter", "unet_main"]
    unet = UNetMotionModel.from_pretrained(out / "unet_main")
    _assert_same_weights(unet, recipe.engine.model.unet)
    _assert_same_weights(BrushNetModel.from_pretrained(out / "brushnet"), recipe.engine.model.brushnet)
    loaded = load_diffueraser_components(weights_root, stage=2, unet_path=out / "unet_main",
                                         brushnet_path=out / "brushnet")
    _assert_same_weights(loaded["unet"], recipe.engine.model.unet)
    with pytest.raises(ValueError, match="2-D UNet"):
        export(tmp_path / "stage2-demo", compose=out)
