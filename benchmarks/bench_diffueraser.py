"""DiffuEraser cost, with randomly initialised models (the cost does not depend on the weights).

1. Main-UNet forward: vipo's layer-by-layer forward with BrushNet residual injection
   (``unet_forward_with_brushnet``, stock mid-block order, no residuals) vs diffusers' own
   ``UNetMotionModel.forward`` on the same inputs in the same process: milliseconds each and the ratio.
2. One clip through ``DiffuEraserPipeline`` (2 TCD steps, no CFG, a 22-frame window): seconds per clip and peak
   memory (CUDA: ``max_memory_allocated``; CPU: peak RSS of the process).

    python benchmarks/bench_diffueraser.py --device cuda --dtype float16 --size full --frames 22 --pixels 512
    OMP_NUM_THREADS=1 python benchmarks/bench_diffueraser.py --size tiny --frames 22 --pixels 32
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from diffusers import AutoencoderKL, MotionAdapter, TCDScheduler, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextConfig, CLIPTextModel

from vipo.models.brushnet import BrushNetModel
from vipo.models.tiny import (
    SD15_SCHEDULER_CONFIG,
    TINY_MOTION_ADAPTER_CONFIG,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    tiny_text_encoder,
    tiny_tokenizer,
)
from vipo.models.unet_brushnet import unet_forward_with_brushnet
from vipo.pipelines.diffueraser import DiffuEraserPipeline

# Public SD1.5 / sd-vae-ft-mse / CLIP ViT-L/14 shapes (the motion adapter defaults are AnimateDiff v1-5-2).
SD15_UNET_CONFIG = {
    **TINY_UNET_CONFIG,
    "sample_size": 64,
    "block_out_channels": (320, 640, 1280, 1280),
    "norm_num_groups": 32,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD_VAE_CONFIG = {**TINY_VAE_CONFIG, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
                 "norm_num_groups": 32, "sample_size": 512}  # fmt: skip
CLIP_L_CONFIG = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                 "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu"}  # fmt: skip


def build_pipeline(size: str, device: torch.device, dtype: torch.dtype) -> DiffuEraserPipeline:
    full = size == "full"
    tokenizer = tiny_tokenizer()  # token ids do not change the cost
    with torch.device(device):
        unet = UNet2DConditionModel(**(SD15_UNET_CONFIG if full else TINY_UNET_CONFIG))
        adapter = MotionAdapter() if full else MotionAdapter(**TINY_MOTION_ADAPTER_CONFIG)
        motion_unet = UNetMotionModel.from_unet2d(unet, adapter)
        brushnet = BrushNetModel.from_unet(unet)
        vae = AutoencoderKL(**(SD_VAE_CONFIG if full else TINY_VAE_CONFIG))
        if full:
            text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **CLIP_L_CONFIG))
        else:
            text_encoder = tiny_text_encoder(tokenizer)
    del unet
    models = {"vae": vae, "text_encoder": text_encoder, "unet": motion_unet, "brushnet": brushnet}
    for model in models.values():
        model.to(dtype=dtype).eval()
    scheduler = TCDScheduler(**{key: SD15_SCHEDULER_CONFIG[key] for key in ("beta_start", "beta_end", "beta_schedule")},
                             timestep_spacing="trailing")  # fmt: skip
    pipeline = DiffuEraserPipeline(**models, tokenizer=tokenizer, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(functions, device: torch.device, repeats: int) -> list[float]:
    """Median seconds per function over ``repeats`` rounds (after a warm-up round); the functions alternate
    within each round so that load changes on a shared machine hit them alike."""
    times = [[] for _ in functions]
    for round_index in range(repeats + 1):
        for function, record in zip(functions, times):
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            if round_index:
                record.append(time.perf_counter() - start)
    return [float(np.median(record)) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--frames", type=int, default=22)
    parser.add_argument("--pixels", type=int, default=32, help="frame height = width")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    pipeline = build_pipeline(args.size, device, dtype)
    unet = pipeline.unet
    print(f"{args.size} models, {args.device} {args.dtype}, {args.frames} frames of {args.pixels}x{args.pixels}")

    # 1. main-UNet forward: ours vs diffusers
    latent = args.pixels // 8
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(args.frames, 4, latent, latent, generator=generator).to(device, dtype)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    timestep = torch.tensor([999], device=device)
    clip = sample[None].permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        stock, ours = timed(
            [
                lambda: unet(clip, timestep, text.expand(args.frames, -1, -1)),
                lambda: unet_forward_with_brushnet(unet, sample, timestep, text, num_frames=args.frames,
                                                   motion_mid_block="diffusers"),
            ],
            device, args.repeats,
        )  # fmt: skip
    print(f"main-UNet forward: diffusers {stock * 1e3:.1f} ms, vipo {ours * 1e3:.1f} ms, ratio {ours / stock:.3f}")

    # 2. one clip through the pipeline
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, args.pixels, args.pixels, 3), dtype=np.uint8)
    prior = rng.integers(0, 256, frames.shape, dtype=np.uint8)
    holes = np.zeros(frames.shape[:3], dtype=bool)
    holes[:, args.pixels // 4 : args.pixels // 2, args.pixels // 4 : args.pixels // 2] = True
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    (seconds,) = timed([lambda: pipeline(frames, holes, prior, num_inference_steps=2)], device, args.repeats)
    if device.type == "cuda":
        peak = f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    else:
        peak = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    print(f"pipeline: {seconds:.2f} s per {args.frames}-frame clip (2 steps), {peak}")


if __name__ == "__main__":
    main()
