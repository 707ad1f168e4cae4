"""Wan2.1 VAE fine-tune (recipe ``wan_vae``): ERP weights, Sobel loss, schedules, EMA, spike skipping, LR groups,
decoder-only freezing, block checkpointing, exact resume and the exports."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from vipo.losses.erp import erp_weighted_mean, latitude_weights, sobel_gradients, sobel_magnitude, ws_psnr
from vipo.models.wan_vae import enable_block_checkpointing, load_wan_vae, to_original_state_dict
from vipo.train.config import GuardSettings, load_train_config
from vipo.train.ema import WeightEMA
from vipo.train.engine import WorkerContext, build_lr_scheduler
from vipo.train.guard import SkipReason, StepGuard
from vipo.train.recipes.wan_vae import WanVaeRecipe

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "HM3D"


def demo_config(tmp_path: Path, *overrides: str):
    return load_train_config(REPO / "jobs/configs/vae_demo.yaml", [
        f"output_dir={tmp_path}", "tracking.enabled=false", f"data.sources=[{{kind: hm3d, root: {SAMPLE}}}]",
        "data.height=32", "data.width=64", *overrides,
    ])


def run_recipe_here(cfg, checkpoint: Path | None = None) -> WanVaeRecipe:
    recipe = WanVaeRecipe(cfg, WorkerContext())
    recipe.setup(checkpoint)
    recipe.train()
    return recipe


# -- ERP weights and Sobel ---------------------------------------------------------------------------------------
def test_latitude_weights_are_symmetric_lowest_at_the_poles_and_average_one():
    weights = latitude_weights(8)
    assert torch.allclose(weights, weights.flip(0))
    assert weights[0] < weights[1] < weights[2] < weights[3]
    assert weights.mean().item() == pytest.approx(1.0)
    # H = 4: row centres at latitudes ±67.5° and ±22.5° (WS-PSNR's cos weights), over their mean.
    cosines = np.cos(np.radians([67.5, 22.5, 22.5, 67.5]))
    assert torch.allclose(latitude_weights(4).double(), torch.from_numpy(cosines / cosines.mean()))


def test_ws_psnr_counts_errors_at_the_poles_less_than_at_the_equator():
    target = torch.zeros(1, 1, 8, 16)
    polar, equatorial = target.clone(), target.clone()
    polar[..., 0, :] = 0.5
    equatorial[..., 4, :] = 0.5
    assert ws_psnr(polar, target) > ws_psnr(equatorial, target)


def test_sobel_on_a_known_vertical_edge_matches_opencv_and_wraps_in_longitude():
    image = np.zeros((8, 16), np.float64)
    image[:, 8:] = 1.0
    gx, gy = sobel_gradients(torch.from_numpy(image)[None, None])
    reference = cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3) / 8  # OpenCV's unscaled kernel, normalised by Σ|k|
    assert torch.allclose(gx[0, 0, 1:-1, 1:-1], torch.from_numpy(reference[1:-1, 1:-1]))
    assert gx[0, 0, 4, 7].item() == pytest.approx(0.5) and gx[0, 0, 4, 8].item() == pytest.approx(0.5)
    assert gx[0, 0, 4, 0].item() == pytest.approx(-0.5)  # the 1 → 0 step across the ±180° seam
    assert torch.count_nonzero(gy) == 0


def test_edge_loss_is_zero_for_the_same_image_and_grows_when_the_edge_blurs():
    sharp = torch.zeros(1, 3, 8, 16)
    sharp[..., 8:] = 1.0
    blurred = torch.nn.functional.avg_pool2d(sharp, (1, 5), stride=1, padding=(0, 2), count_include_pad=False)

    def edge_loss(prediction, target):
        return erp_weighted_mean((sobel_magnitude(prediction) - sobel_magnitude(target)).abs())

    assert edge_loss(sharp, sharp).item() == 0.0
    assert edge_loss(blurred, sharp).item() > 0.05


# -- schedules, EMA, spikes --------------------------------------------------------------------------------------
def test_loss_weights_and_lr_at_the_seed_timelines_boundaries(tmp_path):
    cfg = load_train_config(REPO / "jobs/configs/vae.yaml", [
        f"output_dir={tmp_path}", "model.weights=null", "model.config_dir=null",
        f"data.sources=[{{kind: hm3d, root: {SAMPLE}}}]"])
    recipe = WanVaeRecipe(cfg, WorkerContext())
    lpips = {0: 0.0, 200: 0.0, 350: 0.05, 500: 0.1, 5000: 0.1}
    kl = {0: 0.0, 500: 0.0, 750: 5e-7, 1000: 1e-6, 5000: 1e-6}
    for step, value in lpips.items():
        assert recipe.weights(step)["lpips"] == pytest.approx(value)
    for step, value in kl.items():
        assert recipe.weights(step)["kl"] == pytest.approx(value)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optim.lr)
    scheduler = build_lr_scheduler(cfg, optimizer)
    factors = [scheduler.lr_lambdas[0](step) for step in (0, 100, 200, 2600, 5000)]
    assert factors == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-9)  # warm-up, then cosine to max_steps


def test_ema_arithmetic_on_cpu_and_swap_restores_the_trained_weights():
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(2.0)
    model.bias.requires_grad_(False)
    ema = WeightEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert ema.shadow["weight"].item() == pytest.approx(0.9 * 0.1 + 0.1)  # 0 → 0.1 → 0.19
    assert ema.shadow["weight"].device.type == "cpu"
    assert ema.shadow["bias"].item() == 2.0
    with ema.swapped_into(model):
        assert model.weight.item() == pytest.approx(0.19)
    assert model.weight.item() == 1.0


def test_a_loss_five_times_the_running_mean_is_skipped_and_counted(tmp_path):
    assert demo_config(tmp_path).guard.spike_factor == 5.0
    guard = StepGuard(GuardSettings(spike_factor=5.0, spike_window=3))
    assert [guard.check(loss) for loss in (1.0, 1.0, 1.0)] == [None, None, None]
    assert guard.check(5.5) == SkipReason.LOSS_SPIKE
    assert guard.check(4.9) is None
    assert guard.metrics()["train/skipped_steps"] == 1.0


# -- model ------------------------------------------------------------------------------------------------------
def test_block_checkpointing_gives_the_same_output_and_gradients():
    plain = load_wan_vae(None, tiny_seed=3)
    checkpointed = copy.deepcopy(plain)
    enable_block_checkpointing(checkpointed)
    video = torch.rand(1, 3, 9, 16, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = []
    for vae in (plain, checkpointed):
        output = vae(video).sample
        output.square().mean().backward()
        results.append((output.detach(), {name: p.grad for name, p in vae.named_parameters()}))
    assert torch.equal(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], rtol=1e-5, atol=1e-8), name


def test_encoder_learns_at_a_tenth_of_the_decoder_rate_and_decoder_only_freezes_it(tmp_path):
    cfg = demo_config(tmp_path, "validation.every_n_steps=null", "loss.lpips=0", "optim.max_steps=1",
                      "export_on_finish=false")
    recipe = WanVaeRecipe(cfg, WorkerContext())
    vae = load_wan_vae(None)
    decoder_group, encoder_group = recipe.param_groups(vae)
    assert encoder_group["lr"] == pytest.approx(decoder_group["lr"] * 0.1)
    encoder_ids = {id(p) for p in [*vae.encoder.parameters(), *vae.quant_conv.parameters()]}
    assert {id(p) for p in encoder_group["params"]} == encoder_ids
    assert len(decoder_group["params"]) + len(encoder_group["params"]) == len(list(vae.parameters()))

    frozen = run_recipe_here(demo_config(tmp_path / "frozen", "validation.every_n_steps=null", "loss.lpips=0",
                                         "optim.max_steps=1", "optim.warmup_steps=0", "export_on_finish=false",
                                         "model.decoder_only=true"))
    start = load_wan_vae(None)
    trained = frozen.vae
    assert len(frozen.engine.optimizer.param_groups) == 1
    assert all(torch.equal(a, b) for a, b in zip(start.encoder.parameters(), trained.encoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(start.decoder.parameters(), trained.decoder.parameters()))


# -- checkpoints, resume, export ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wan_vae_full")
    cfg = demo_config(out, "validation.every_n_steps=null")
    recipe = run_recipe_here(cfg)
    recipe.cleanup()
    return cfg


def test_resume_from_a_checkpoint_continues_exactly(full_run, tmp_path):
    resumed_cfg = demo_config(tmp_path, "validation.every_n_steps=null")
    run_recipe_here(resumed_cfg, full_run.run_dir / "checkpoint-00000002").cleanup()
    for folder in ("vae", "vae_ema"):
        expected = load_file(full_run.run_dir / "checkpoint-00000004/weights" / folder /
                             "diffusion_pytorch_model.safetensors")
        got = load_file(resumed_cfg.run_dir / "checkpoint-00000004/weights" / folder /
                        "diffusion_pytorch_model.safetensors")
        assert all(torch.equal(expected[k], got[k]) for k in expected), folder


def test_export_holds_the_final_ema_weights_loadable_by_diffusers_and_as_the_original_pth(full_run):
    export = full_run.run_dir / "export" / "step_00000004"
    vae = AutoencoderKLWan.from_pretrained(export / "vae")
    ema = load_file(full_run.run_dir / "checkpoint-00000004/weights/vae_ema/diffusion_pytorch_model.safetensors")
    trained = load_file(full_run.run_dir / "checkpoint-00000004/weights/vae/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(vae.state_dict()[k], ema[k]) for k in ema)
    assert not all(torch.equal(trained[k], ema[k]) for k in ema)  # EMA, not the last trained weights
    original = torch.load(export / "Wan2.1_VAE.pth", weights_only=True)
    assert "decoder.middle.0.residual.0.gamma" in original and "encoder.downsamples.0.residual.2.weight" in original
    # diffusers' own single-file conversion (with the export's config) gives the same model back.
    from_pth = load_wan_vae(export / "Wan2.1_VAE.pth", config_dir=export / "vae")
    assert all(torch.equal(from_pth.state_dict()[k], v) for k, v in vae.state_dict().items())
    assert set(to_original_state_dict(vae)) == set(original)


def test_validation_logs_erp_metrics_and_input_reconstruction_error_strips(tmp_path):
    recipe = run_recipe_here(demo_config(tmp_path, "optim.max_steps=2", "export_on_finish=false"))
    logged = recipe.loop.logger  # tracking disabled: the in-memory logger
    assert {"val/psnr", "val/ws_psnr", "val/lpips", "val/edge_f1"} <= set(logged.metrics)
    assert all(math.isfinite(value) for key in ("val/psnr", "val/ws_psnr") for _, value in logged.metrics[key])
    ((step, grid),) = logged.images["val_hm3d_area1_room0"]  # the held-out room, frames left to right
    assert step == 2 and grid.dtype == np.uint8 and grid.shape == (32, 5 * 3 * 64, 3)  # input|output|error × 5
    assert [v.video_id for v in recipe.dataset.index] == ["hm3d/area0/room0", "hm3d/area0/room1"]
    assert recipe.dataset.skips.total == 1  # area0/room2 has 3 frames: dropped and counted


@pytest.mark.slow
def test_vipo_train_runs_the_demo_config_on_cpu(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "vipo"), "train", "jobs/configs/vae_demo.yaml", f"output_dir={tmp_path}",
         "tracking.enabled=false"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "vae-demo/export/step_00000004/Wan2.1_VAE.pth").is_file()
