"""DiffuEraser models: checkpoint layout vs upstream manifests, residual injection, equivalence with diffusers."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from vipo.models.brushnet import BrushNetModel, BrushNetOutput
from vipo.models.diffueraser_weights import DiffuEraserWeights, default_dtype, load_diffueraser_components
from vipo.models.tiny import tiny_brushnet, tiny_motion_adapter, tiny_unet, write_tiny_weights
from vipo.models.unet_brushnet import BrushNetUNet, unet_forward_with_brushnet
from vipo.models.unet_layers import per_frame_timesteps
from vipo.pipelines.diffueraser import DiffuEraserPipeline

from manifests import load_manifest as manifest


def manifest_shapes(data: dict) -> dict[str, list[int]]:
    assert not data.get("state_dict_only"), "these manifests have no aliased keys"
    return {**data["params"], **data["buffers"]}


def state_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module")
def sd15_unet_meta() -> UNet2DConditionModel:
    """Full-size SD1.5 UNet (upstream stage-1 config) on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return UNet2DConditionModel(**manifest("diffueraser_unet_main_stage1.json")["config"])


# ---------------------------------------------------------------------------------------------- manifests


def test_brushnet_from_unet_matches_released_checkpoint_layout(sd15_unet_meta):
    reference = manifest("diffueraser_brushnet.json")
    with torch.device("meta"):
        brushnet = BrushNetModel.from_unet(sd15_unet_meta)
    assert state_shapes(brushnet) == manifest_shapes(reference)
    assert sum(p.numel() for p in brushnet.parameters()) == reference["num_params"] == 886_069_440


def test_brushnet_built_from_released_config_matches_layout_and_values():
    released = manifest("diffueraser_brushnet_config.json")
    with torch.device("meta"):
        brushnet = BrushNetModel.from_config(released)
    assert state_shapes(brushnet) == manifest_shapes(manifest("diffueraser_brushnet.json"))
    ours = set(inspect.signature(BrushNetModel.__init__).parameters) - {"self"}
    for key in ours:
        value = brushnet.config[key]
        assert (list(value) if isinstance(value, tuple) else value) == released[key], key
    # Released keys we do not take must describe features that are off (or weightless) upstream.
    ignored = {key: value for key, value in released.items() if key not in ours and not key.startswith("_")}
    assert ignored == {
        "addition_embed_type": None,
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": None,
        "brushnet_conditioning_channel_order": "rgb",
        "class_embed_type": None,
        "conditioning_embedding_out_channels": [16, 32, 96, 256],
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "global_pool_conditions": False,
        "num_class_embeds": None,
        "projection_class_embeddings_input_dim": None,
    }


def test_stage1_unet_is_stock_diffusers_unet(sd15_unet_meta):
    reference = manifest("diffueraser_unet_main_stage1.json")
    assert state_shapes(sd15_unet_meta) == manifest_shapes(reference)


def test_stage2_motion_unet_and_adapter_are_stock_diffusers(sd15_unet_meta):
    with torch.device("meta"):
        adapter = MotionAdapter()
        motion_unet = UNetMotionModel.from_unet2d(sd15_unet_meta, adapter)
        # What `from_pretrained` builds from the released unet_main/config.json (upstream keys included).
        from_released_config = UNetMotionModel.from_config(manifest("diffueraser_unet_motion_stage2.json")["config"])
    stage2 = manifest_shapes(manifest("diffueraser_unet_motion_stage2.json"))
    assert state_shapes(motion_unet) == stage2
    assert state_shapes(from_released_config) == stage2
    assert state_shapes(adapter) == manifest_shapes(manifest("diffueraser_motion_adapter.json"))


def test_full_size_residuals_match_the_spec_table(sd15_unet_meta):
    """Spec §1.2 for a 64x64 latent: 12 down, 1 mid, 15 up residuals with these channels and sizes."""
    with torch.device("meta"):
        brushnet = BrushNetModel.from_unet(sd15_unet_meta)
        motion_unet = UNetMotionModel.from_unet2d(sd15_unet_meta, MotionAdapter())
        latents = torch.empty(2, 4, 64, 64)
        conditioning = torch.empty(2, 5, 64, 64)
        text = torch.empty(1, 77, 768)
    with torch.no_grad():
        residuals = brushnet(latents, 999, text, conditioning)
        prediction = unet_forward_with_brushnet(motion_unet, latents, 999, text, residuals, num_frames=2)
    down = [(r.shape[1], r.shape[2]) for r in residuals.down_block_res_samples]
    up = [(r.shape[1], r.shape[2]) for r in residuals.up_block_res_samples]
    assert down == [(320, 64)] * 3 + [(320, 32), (640, 32), (640, 32), (640, 16)] + [(1280, 16)] * 2 + [(1280, 8)] * 3
    assert tuple(residuals.mid_block_res_sample.shape) == (2, 1280, 8, 8)
    assert up == [(1280, 8)] * 3 + [(1280, 16)] * 4 + [(1280, 32), (640, 32), (640, 32), (640, 32)] + [
        (640, 64),
        (320, 64),
        (320, 64),
        (320, 64),
    ]
    assert prediction.shape == (2, 4, 64, 64)


# ------------------------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    motion_unet = UNetMotionModel.from_unet2d(unet, tiny_motion_adapter()).eval()
    return unet, motion_unet, tiny_brushnet(unet).eval()


def tiny_inputs(num_samples: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(num_samples, 4, 4, 4, generator=generator)
    conditioning = torch.randn(num_samples, 5, 4, 4, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    return latents, conditioning, text


def test_from_unet_copies_weights_and_starts_with_zero_residuals(tiny_models):
    unet = tiny_models[0]
    brushnet = BrushNetModel.from_unet(unet)
    kernel = brushnet.conv_in_condition.weight
    assert kernel.shape == (16, 9, 3, 3)
    assert torch.equal(kernel[:, :4], unet.conv_in.weight) and torch.equal(kernel[:, 4:8], unet.conv_in.weight)
    assert torch.count_nonzero(kernel[:, 8]) == 0
    assert torch.equal(brushnet.conv_in_condition.bias, unet.conv_in.bias)
    for name in ("time_embedding", "down_blocks", "mid_block", "up_blocks"):
        ours, theirs = getattr(brushnet, name).state_dict(), getattr(unet, name).state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name
    latents, conditioning, text = tiny_inputs(2)
    with torch.no_grad():
        residuals = brushnet(latents, 10, text, conditioning)
    assert (len(residuals.down_block_res_samples), len(residuals.up_block_res_samples)) == (12, 15)
    everything = (*residuals.down_block_res_samples, residuals.mid_block_res_sample, *residuals.up_block_res_samples)
    assert all(torch.count_nonzero(r) == 0 for r in everything)


def test_conditioning_scale_multiplies_every_residual(tiny_models):
    brushnet = tiny_models[2]
    latents, conditioning, text = tiny_inputs(2)
    with torch.no_grad():
        full = brushnet(latents, 10, text, conditioning)
        half = brushnet(latents, 10, text, conditioning, conditioning_scale=0.5)
    pairs = zip(full.to_tuple()[0] + (full.mid_block_res_sample,), half.to_tuple()[0] + (half.mid_block_res_sample,))
    for a, b in pairs:
        torch.testing.assert_close(b, 0.5 * a)


def test_zero_residuals_equal_stock_unet_2d(tiny_models):
    unet, _, _ = tiny_models
    latents, _, text = tiny_inputs(3)
    zero = BrushNetOutput(
        down_block_res_samples=(torch.zeros(()),) * 12, mid_block_res_sample=torch.zeros(()),
        up_block_res_samples=(torch.zeros(()),) * 15,
    )  # fmt: skip
    timesteps = torch.tensor([5, 500, 900])
    with torch.no_grad():
        stock = unet(latents, timesteps, text.expand(3, -1, -1)).sample
        ours = unet_forward_with_brushnet(unet, latents, timesteps, text, zero)
        no_branch = unet_forward_with_brushnet(unet, latents, timesteps, text)
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)
    torch.testing.assert_close(no_branch, stock, rtol=0, atol=1e-6)


def test_zero_residuals_equal_stock_motion_unet_with_two_clips(tiny_models):
    """Batch of 2 clips x 3 frames, one timestep per clip (repeated per frame), stock mid-block order."""
    _, motion_unet, _ = tiny_models
    latents, _, text = tiny_inputs(6)
    timesteps = torch.tensor([20, 700])
    clips = latents.view(2, 3, 4, 4, 4).permute(0, 2, 1, 3, 4)  # diffusers' (B, C, F, h, w)
    with torch.no_grad():
        stock = motion_unet(clips, timesteps, text.expand(6, -1, -1)).sample.permute(0, 2, 1, 3, 4).reshape(6, 4, 4, 4)
        ours = unet_forward_with_brushnet(
            motion_unet, latents, timesteps, text, num_frames=3, motion_mid_block="diffusers"
        )
        quirk = unet_forward_with_brushnet(motion_unet, latents, timesteps, text, num_frames=3)
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-5)
    assert (quirk - stock).abs().max() > 1e-4  # the DiffuEraser mid block really differs from stock


class Recorder:
    """Forward hooks recording (input, output) of named sub-modules, per call."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in names}
        modules = dict(model.named_modules())
        self.handles = [
            modules[name].register_forward_hook(
                lambda module, args, kwargs, output, name=name: self.calls[name].append(
                    (args[0] if args else kwargs["hidden_states"], output[0] if isinstance(output, tuple) else output)
                ),
                with_kwargs=True,
            )
            for name in names
        ]

    def input(self, name: str, call: int = 0) -> torch.Tensor:
        return self.calls[name][call][0]

    def output(self, name: str, call: int = 0) -> torch.Tensor:
        return self.calls[name][call][1]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def random_residuals(brushnet: BrushNetModel, latents, text, conditioning) -> BrushNetOutput:
    with torch.no_grad():
        shapes = brushnet(latents, 10, text, conditioning)
    generator = torch.Generator().manual_seed(7)
    noise = lambda r: torch.randn(r.shape, generator=generator)  # noqa: E731
    return BrushNetOutput(
        down_block_res_samples=tuple(map(noise, shapes.down_block_res_samples)),
        mid_block_res_sample=noise(shapes.mid_block_res_sample),
        up_block_res_samples=tuple(map(noise, shapes.up_block_res_samples)),
    )


def test_2d_residuals_are_added_where_the_spec_says(tiny_models):
    """Spec §1.3: conv_in skip stored before the add; per-layer adds feed the next layer and the skip."""
    unet, _, brushnet = tiny_models
    latents, conditioning, text = tiny_inputs(2)
    residuals = random_residuals(brushnet, latents, text, conditioning)
    down, up = residuals.down_block_res_samples, residuals.up_block_res_samples
    names = [
        "conv_in", "down_blocks.0.resnets.0", "down_blocks.0.attentions.0", "down_blocks.0.resnets.1",
        "mid_block", "up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.0.upsamplers.0",
        "up_blocks.1.resnets.0", "up_blocks.3.resnets.1", "up_blocks.3.resnets.2",
    ]  # fmt: skip
    recorder = Recorder(unet, names)
    with torch.no_grad():
        unet_forward_with_brushnet(unet, latents, 10, text, residuals)
    recorder.remove()
    conv_in = recorder.output("conv_in")
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # noqa: E731
    close(recorder.input("down_blocks.0.resnets.0"), conv_in + down[0])
    close(recorder.input("down_blocks.0.resnets.1"), recorder.output("down_blocks.0.attentions.0") + down[1])
    # skips: the last up block consumes skip 1 (layer 0 of down block 0) and skip 0 (conv_in, pre-add)
    close(recorder.input("up_blocks.3.resnets.1")[:, -16:], recorder.output("down_blocks.0.attentions.0") + down[1])
    close(recorder.input("up_blocks.3.resnets.2")[:, -16:], conv_in)
    mid = residuals.mid_block_res_sample
    close(recorder.input("up_blocks.0.resnets.0")[:, :32], recorder.output("mid_block") + mid)
    close(recorder.input("up_blocks.0.resnets.1")[:, :32], recorder.output("up_blocks.0.resnets.0") + up[0])
    close(recorder.input("up_blocks.1.resnets.0")[:, :32], recorder.output("up_blocks.0.upsamplers.0") + up[3])


def test_motion_residuals_precede_temporal_modules_and_mid_block_quirk(tiny_models):
    """Spec §1.4: ResNet -> transformer -> + residual -> temporal; mid: R0 -> T -> R1 -> + mid -> temporal -> R1."""
    _, motion_unet, brushnet = tiny_models
    latents, conditioning, text = tiny_inputs(3)
    residuals = random_residuals(brushnet, latents, text, conditioning)
    names = [
        "down_blocks.0.attentions.0", "down_blocks.0.motion_modules.0", "up_blocks.3.attentions.2",
        "up_blocks.3.motion_modules.2", "mid_block.attentions.0", "mid_block.resnets.1",
        "mid_block.motion_modules.0",
    ]  # fmt: skip
    recorder = Recorder(motion_unet, names)
    with torch.no_grad():
        unet_forward_with_brushnet(motion_unet, latents, 10, text, residuals, num_frames=3)
    recorder.remove()
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # noqa: E731
    down, up = residuals.down_block_res_samples, residuals.up_block_res_samples
    close(recorder.input("down_blocks.0.motion_modules.0"), recorder.output("down_blocks.0.attentions.0") + down[1])
    close(recorder.input("up_blocks.3.motion_modules.2"), recorder.output("up_blocks.3.attentions.2") + up[14])
    assert len(recorder.calls["mid_block.resnets.1"]) == 2  # the same ResNet runs twice
    close(recorder.input("mid_block.resnets.1"), recorder.output("mid_block.attentions.0"))
    close(
        recorder.input("mid_block.motion_modules.0"),
        recorder.output("mid_block.resnets.1") + residuals.mid_block_res_sample,
    )
    close(recorder.input("mid_block.resnets.1", call=1), recorder.output("mid_block.motion_modules.0"))


def test_per_frame_timesteps_repeat_per_clip():
    assert per_frame_timesteps(torch.tensor([3, 9]), 6, torch.device("cpu")).tolist() == [3, 3, 3, 9, 9, 9]
    assert per_frame_timesteps(5, 4, torch.device("cpu")).tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="timestep"):
        per_frame_timesteps(torch.tensor([1, 2, 3, 4]), 6, torch.device("cpu"))


def test_motion_unet_requires_num_frames(tiny_models):
    latents, _, text = tiny_inputs(2)
    with pytest.raises(ValueError, match="num_frames"):
        unet_forward_with_brushnet(tiny_models[1], latents, 1, text)


def test_gradient_checkpointing_is_used_and_gives_the_same_gradients(tiny_models):
    _, motion_unet, brushnet = tiny_models
    latents, conditioning, text = tiny_inputs(3)

    def gradients(model: BrushNetUNet) -> list[torch.Tensor]:
        model.zero_grad()
        model(latents, 100, text, conditioning, num_frames=3).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    model = BrushNetUNet(motion_unet, brushnet).train()
    plain = gradients(model)
    checkpoint_calls = []

    def counting_checkpoint(function, *args):
        checkpoint_calls.append(function)
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)

    motion_unet.enable_gradient_checkpointing(counting_checkpoint)
    brushnet.enable_gradient_checkpointing(counting_checkpoint)
    try:
        checkpointed = gradients(model)
    finally:
        motion_unet.disable_gradient_checkpointing()
        brushnet.disable_gradient_checkpointing()
        model.eval().zero_grad()
    assert len(checkpoint_calls) >= 28
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_brushnet_save_and_load_round_trip(tiny_models, tmp_path):
    brushnet = tiny_models[2]
    brushnet.save_pretrained(tmp_path / "brushnet")
    loaded = BrushNetModel.from_pretrained(tmp_path / "brushnet").eval()
    loaded_config = json.loads(loaded.to_json_string())
    assert loaded_config.pop("_name_or_path") == str(tmp_path / "brushnet")
    assert loaded_config == json.loads(brushnet.to_json_string())
    saved = brushnet.state_dict()
    assert all(torch.equal(tensor, saved[name]) for name, tensor in loaded.state_dict().items())
    latents, conditioning, text = tiny_inputs(2)
    with torch.no_grad():
        before, after = brushnet(latents, 10, text, conditioning), loaded(latents, 10, text, conditioning)
    for a, b in zip(before.to_tuple()[0], after.to_tuple()[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> DiffuEraserWeights:
    return write_tiny_weights(tmp_path_factory.mktemp("weights"))


def test_loader_builds_stage1_and_stage2_from_the_upstream_layout(tiny_weights):
    stage1 = load_diffueraser_components(tiny_weights.root, stage=1)
    stage2 = load_diffueraser_components(tiny_weights.root, stage=2)
    assert set(stage2) == {"vae", "text_encoder", "tokenizer", "unet", "brushnet", "scheduler"}
    assert type(stage1["unet"]) is UNet2DConditionModel and type(stage2["unet"]) is UNetMotionModel
    assert stage2["unet"].dtype == torch.float32
    # Stage-2 training start: a 2-D UNet folder + the motion adapter gives the same model as unet_main.
    combined = load_diffueraser_components(tiny_weights.root, stage=2, unet_path=tiny_weights.unet_2d)["unet"]
    released = stage2["unet"].state_dict()
    assert all(torch.equal(tensor, released[name]) for name, tensor in combined.state_dict().items())


def test_loader_names_the_missing_path(tiny_weights, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights.root, root)
    shutil.rmtree(root / "diffuEraser" / "brushnet")
    with pytest.raises(FileNotFoundError) as error:
        load_diffueraser_components(root)
    message = str(error.value)
    assert "\n" not in message and str(root / "diffuEraser" / "brushnet") in message


def test_loader_names_a_missing_weights_file(tiny_weights, tmp_path):
    root = tmp_path / "weights"
    shutil.copytree(tiny_weights.root, root)
    vae = DiffuEraserWeights(root).vae
    for weights_file in vae.glob("*.safetensors"):
        weights_file.unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_diffueraser_components(root)
    assert "\n" not in str(error.value) and str(vae) in str(error.value)


def test_pipeline_names_a_missing_pcm_lora_file(tiny_weights):
    # The tiny layout ships only the 2-step LoRA; asking for the 4-step one must name the file it looked for.
    with pytest.raises(FileNotFoundError) as error:
        DiffuEraserPipeline.from_weights(tiny_weights.root, pcm_steps=4)
    assert "\n" not in str(error.value) and str(tiny_weights.pcm_lora(4)) in str(error.value)


def test_default_dtype_is_half_on_gpu_and_float_on_cpu():
    assert default_dtype("cpu") == torch.float32 and default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype("cuda") == torch.float16 and default_dtype("cuda:1") == torch.float16
