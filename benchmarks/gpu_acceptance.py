"""GPU acceptance: the full-size paths on one GPU, with random weights (memory and time do not depend on them).

Each step builds its models at full size on the GPU, measures, frees them, and adds rows to one table (printed at
the end) and to a JSON file. A step that fails (out of memory, a missing package) is recorded as failed with its
error and the next step runs; steps that would start after the time budget are recorded as skipped.

1. DiffuEraser pipeline, 22x512x512, fp16: 2 TCD steps and 6 UniPC steps, s/clip and peak memory; 250 frames at
   720p when the budget allows (upstream's figure: 314 s / 33 GB on an L20).
2. Stage 2 training step (motion modules) at 22x512x512, batch 1, bf16, gradient checkpointing: plain torch vs
   DeepSpeed ZeRO-2 with CPU optimiser offload; s/step, peak memory, the ratio.
3. Stage 3 Region-Reg-DPO step, LoRA r16 with the reference as the adapter-off policy, bf16 + checkpointing:
   s/step, peak memory (goal <= 40 GB and <= 2.2x a stage-2 step); the full-scope (Exp11) step beside it.
4. ProPainter at 480x854x80, fp32 and fp16, whole video and sub-videos of 20: s/frame, peak memory (upstream's
   table: 720x480x80 13 GB fp32 / 8 GB fp16).
5. Masked PSNR + SSIM + LPIPS on the GPU at 512x512: frames/s.
6. Generation: one Ray Data actor on the GPU for 4 clips of the bundled sample, GPU utilisation sampled with
   nvidia-smi every 0.5 s (goal >= 80 % in steady state). With ``--weights`` the real DiffuEraser layout is used,
   else the demo's tiny models (then the figure measures the actor's feed, not the full model).

    python benchmarks/gpu_acceptance.py --json gpu_acceptance.json     # one H200-class GPU, <= 8 minutes
    python benchmarks/gpu_acceptance.py --dry-run                      # every step, tiny models, CPU

``--dry-run`` runs every step with tiny models on the CPU (DeepSpeed, which needs a GPU here, is skipped) so the
script itself is tested without a GPU (tests/test_gpu_acceptance.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, for their model builders

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    frames: int
    pixels: int
    model_size: str  # bench_diffueraser's "full" or "tiny"
    long_frames: int  # step 1's long clip
    long_shape: tuple[int, int]
    propainter_shape: tuple[int, int, int]  # frames, height, width
    propainter_subvideo: int
    raft_iterations: int
    metrics_pixels: int
    metrics_frames: int
    generation_clips: int


FULL = Sizes(22, 512, "full", 250, (720, 1280), (80, 480, 854), 20, 20, 512, 32, 4)
DRY = Sizes(4, 32, "tiny", 8, (32, 48), (6, 48, 64), 3, 4, 64, 4, 4)


@dataclass
class Table:
    rows: list[dict]
    started: float
    budget: float

    def add(self, step: str, case: str, **values) -> None:
        self.rows.append({"step": step, "case": case, **values})
        print(f"  {step} | {case} | {figures(self.rows[-1])}", flush=True)

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.started)


def figures(row: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in row.items() if k not in ("step", "case"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def measured(device: torch.device):
    """Yields a dict filled on exit with ``seconds`` and, on CUDA, ``peak_gib`` (max allocated in the block)."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    yield result
    synchronize(device)
    result["seconds"] = time.perf_counter() - start
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30


def _holes(frames: int, height: int, width: int) -> np.ndarray:
    holes = np.zeros((frames, height, width), dtype=bool)
    holes[:, height // 4: height // 2, width // 4: width // 2] = True
    return holes


def step_diffueraser(table: Table, sizes: Sizes, device: torch.device, dtype: torch.dtype) -> None:
    from diffusers import UniPCMultistepScheduler

    from bench_diffueraser import build_pipeline

    pipeline = build_pipeline(sizes.model_size, device, dtype)
    tcd = pipeline.scheduler
    unipc = UniPCMultistepScheduler.from_config(tcd.config)
    rng = np.random.default_rng(0)
    for frames, (height, width), label in [(sizes.frames, (sizes.pixels, sizes.pixels), "clip"),
                                           (sizes.long_frames, sizes.long_shape, "long")]:
        clip = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        for scheduler, steps in [(tcd, 2), (unipc, 6)]:
            if label == "long" and steps == 6:
                continue
            if label == "long" and table.remaining() < 240:
                table.add("1 diffueraser", f"{frames}x{height}x{width}", status="skipped: time budget")
                continue
            pipeline.scheduler = scheduler
            with torch.no_grad(), measured(device) as m:
                pipeline(clip, _holes(frames, height, width), clip, num_inference_steps=steps)
            table.add("1 diffueraser", f"{frames}x{height}x{width} {type(scheduler).__name__[:-9]} {steps} steps",
                      s_per_clip=m["seconds"], **({"peak_gib": m["peak_gib"]} if "peak_gib" in m else {}))
    del pipeline


def _train_config(recipe_config: str, overrides: list[str]):
    from vipo.train.config import load_train_config

    return load_train_config(REPO / "jobs" / "configs" / recipe_config, overrides)


def step_stage2(table: Table, sizes: Sizes, device: torch.device) -> float | None:
    """A stage-2 step (motion modules train) per engine; returns the plain step's seconds."""
    from diffusers import DDPMScheduler

    from bench_diffueraser import build_pipeline
    from vipo.models.tiny import SD15_SCHEDULER_CONFIG
    from vipo.models.unet_brushnet import BrushNetUNet
    from vipo.train.diffueraser import DiffusionInputs, epsilon_loss
    from vipo.train.engine import WorkerContext, build_engine

    parts = build_pipeline(sizes.model_size, device, torch.float32)
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    inputs = _diffusion_inputs(sizes, parts.unet.config.cross_attention_dim, device, DiffusionInputs)
    engines = ["torch"] + (["deepspeed"] if device.type == "cuda" else [])
    plain = None
    for engine_kind in engines:
        model = BrushNetUNet(copy.deepcopy(parts.unet), parts.brushnet)
        model.requires_grad_(False)
        for name, parameter in model.unet.named_parameters():
            parameter.requires_grad_("motion_modules" in name)
        model.unet.enable_gradient_checkpointing()
        overrides = ["precision=bf16", "optim.max_grad_norm=1.0"]
        if device.type == "cuda":
            overrides += ["scaling.use_gpu=true", f"deepspeed.enabled={engine_kind == 'deepspeed'}",
                          "deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true"]
        if engine_kind == "deepspeed":
            _init_single_process_group()
        engine = build_engine(model, _train_config("stage2_demo.yaml", overrides), WorkerContext(device=device))
        engine.micro_step(lambda: epsilon_loss(engine.module, inputs, scheduler, engine.input_dtype, temporal=True))
        with measured(device) as m:
            engine.micro_step(lambda: epsilon_loss(engine.module, inputs, scheduler, engine.input_dtype,
                                                   temporal=True))
        plain = m["seconds"] if engine_kind == "torch" else plain
        table.add("2 stage 2 step", f"{engine_kind} bf16 ckpt {sizes.frames}x{sizes.pixels}", s_per_step=m["seconds"],
                  **({"peak_gib": m["peak_gib"]} if "peak_gib" in m else {}),
                  **({"x_plain": m["seconds"] / plain} if engine_kind != "torch" else {}))
        del engine, model
    if device.type != "cuda":
        table.add("2 stage 2 step", "deepspeed zero-2 offload", status="skipped: needs a GPU")
    return plain


def _init_single_process_group() -> None:
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"})
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1)


def _diffusion_inputs(sizes: Sizes, text_dim: int, device: torch.device, cls):
    latent = sizes.pixels // 8
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(sizes.frames, 4, latent, latent, generator=generator)
    known = torch.ones(sizes.frames, 1, latent, latent)
    known[..., latent // 4: latent // 2, latent // 4: latent // 2] = 0
    return cls(latents=latents.to(device), conditioning=torch.cat([latents * known, known], 1).to(device),
               text=torch.randn(1, 77, text_dim, generator=generator).to(device),
               timesteps=torch.tensor([500], device=device), noise=torch.randn_like(latents).to(device),
               num_clips=1, num_frames=sizes.frames)


def step_stage3(table: Table, sizes: Sizes, device: torch.device, stage2_seconds: float | None) -> None:
    from diffusers import DDPMScheduler

    from bench_diffueraser import build_pipeline
    from vipo.losses import RegionRegDPOLossConfig, compute_dpo_loss
    from vipo.models.lora import add_spatial_lora
    from vipo.models.tiny import SD15_SCHEDULER_CONFIG
    from vipo.regions import decompose
    from vipo.train.dpo_step import PairDenoiser, PreferenceInputs, Reference, pair_predictions

    parts = build_pipeline(sizes.model_size, device, torch.float32)
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    latent, frames = sizes.pixels // 8, sizes.frames
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(frames, 4, latent, latent, generator=generator)
    hole = torch.zeros(1, frames, 1, latent, latent)
    hole[..., latent // 4: latent // 2, latent // 4: latent // 2] = 1
    known = 1 - hole.reshape(frames, 1, latent, latent)
    inputs = PreferenceInputs(
        latents_win=latents.to(device), latents_lose=(latents + 0.5 * torch.randn_like(latents)).to(device),
        conditioning=torch.cat([latents * known, known], 1).to(device),
        text=torch.randn(1, 77, parts.unet.config.cross_attention_dim, generator=generator).to(device),
        timesteps=torch.tensor([500], device=device), noise=torch.randn_like(latents).to(device),
        regions=tuple(m.float().to(device) for m in decompose(hole, 7, latent_factor=8)), num_clips=1,
        num_frames=frames)
    loss_config = RegionRegDPOLossConfig()
    for scope in ("lora", "full"):
        policy = PairDenoiser(copy.deepcopy(parts.unet), parts.brushnet)
        policy.requires_grad_(False)
        if scope == "lora":
            add_spatial_lora(policy.unet, rank=16, alpha=16, seed=0)
            reference = Reference(policy, adapter_off=True)
        else:
            frozen = PairDenoiser(copy.deepcopy(parts.unet), parts.brushnet).requires_grad_(False)
            policy.unet.requires_grad_(True)
            reference = Reference(frozen, adapter_off=False)
        policy.unet.enable_gradient_checkpointing()
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                predictions = pair_predictions(policy, policy, reference, inputs, scheduler, torch.float32)
            loss, _ = compute_dpo_loss(loss_config, inputs.per_pair(inputs.noise), predictions.policy_win,
                                       predictions.policy_lose, predictions.ref_win, predictions.ref_lose,
                                       inputs.regions)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()
        with measured(device) as m:
            step()
        extra = {"x_stage2": m["seconds"] / stage2_seconds} if stage2_seconds else {}
        table.add("3 stage 3 DPO step", f"{scope} bf16 ckpt {frames}x{sizes.pixels}", s_per_step=m["seconds"],
                  **({"peak_gib": m["peak_gib"]} if "peak_gib" in m else {}), **extra)
        del policy, reference, optimizer, trainable


def step_propainter(table: Table, sizes: Sizes, device: torch.device) -> None:
    from bench_propainter import synthetic_clip
    from vipo.pipelines.propainter import ProPainterPipeline

    frames, height, width = sizes.propainter_shape
    clip, holes = synthetic_clip(frames, height, width)
    for fp16 in ([False, True] if device.type == "cuda" else [False]):
        for subvideo in (frames, sizes.propainter_subvideo):
            pipeline = ProPainterPipeline.from_random(seed=0, device=device, subvideo_length=subvideo,
                                                      progress=False, fp16=fp16,
                                                      raft_iterations=sizes.raft_iterations)
            with torch.no_grad(), measured(device) as m:
                pipeline(clip, holes)
            table.add("4 propainter", f"{frames}x{height}x{width} {'fp16' if fp16 else 'fp32'} sub-video {subvideo}",
                      s_per_frame=m["seconds"] / frames, **({"peak_gib": m["peak_gib"]} if "peak_gib" in m else {}))
            del pipeline


def step_metrics(table: Table, sizes: Sizes, device: torch.device) -> None:
    from bench_metrics import _inputs
    from evaluation.metrics import get_lpips, masked_lpips, masked_psnr, masked_ssim

    target, pred, hole = _inputs(sizes.metrics_frames, sizes.metrics_pixels, 0.5, device)  # a quarter's hole
    net = get_lpips("alex", allow_random_backbone=True).to(device)  # throughput does not depend on the trunk
    with torch.no_grad():
        masked_lpips(pred, target, hole, net)
        with measured(device) as m:
            masked_psnr(pred, target, hole)
            masked_ssim(pred, target, hole)
            masked_lpips(pred, target, hole, net)
    table.add("5 metrics", f"psnr+ssim+lpips {sizes.metrics_pixels}^2",
              frames_per_s=sizes.metrics_frames / m["seconds"])


class UtilisationSampler:
    """``nvidia-smi`` every ``interval`` seconds in a thread: GPU utilisation percentages."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.samples, self._stop = interval, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]))

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def step_generation(table: Table, sizes: Sizes, device: torch.device, weights: Path | None) -> None:
    from jobs import generate
    from vipo.data import SAMPLE_DATA_ROOT

    out = Path(tempfile.mkdtemp(prefix="vipo-gpu-acceptance-"))
    overrides = [f"output_dir={out / 'generate'}", f"sources.0.root={SAMPLE_DATA_ROOT}", "masks_per_clip=1",
                 f"max_videos={sizes.generation_clips}", "stages.0.max_size=1",
                 f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}"]
    if device.type == "cuda":
        overrides += ["stages.0.num_gpus=1", "ray.num_gpus=1"]
    if weights is not None:
        overrides += [f"models.diffueraser.weights={weights}", "models.diffueraser.random_init=null",
                      f"sampling.resolution={sizes.pixels}", f"sampling.nframes={sizes.frames}"]
    sampler = UtilisationSampler() if device.type == "cuda" else None
    with sampler or contextlib.nullcontext(), measured(device) as m:
        generate.run(REPO / "jobs" / "configs" / "generate_demo.yaml", overrides, resume=False, overwrite=False)
    utilisation = {}
    if sampler and sampler.samples:
        steady = sampler.samples[len(sampler.samples) // 4:]  # past actor start-up
        utilisation = {"gpu_util_pct": float(np.mean(steady))}
    table.add("6 generation", f"{sizes.generation_clips} clips, 1 actor, "
              f"{'given weights' if weights else 'tiny demo models'}", seconds=m["seconds"], **utilisation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step with tiny models on the CPU")
    parser.add_argument("--json", type=Path, default=Path("gpu_acceptance.json"), help="where the table goes")
    parser.add_argument("--budget", type=float, help="seconds; later steps are skipped past it (default: 480 on "
                                                       "a GPU, none in a dry run)")
    parser.add_argument("--steps", default="1,2,3,4,5,6", help="comma-separated step numbers to run")
    parser.add_argument("--weights", type=Path, help="a DiffuEraser weights folder for step 6 (default: tiny)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run, or on a GPU machine")
    device = torch.device("cpu" if args.dry_run else "cuda")
    sizes = DRY if args.dry_run else FULL
    torch.manual_seed(0)
    budget = args.budget or (float("inf") if args.dry_run else 480.0)
    table = Table([], time.monotonic(), budget)
    name = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(device)
    print(f"vipo GPU acceptance on {name}, torch {torch.__version__}, budget {budget:.0f} s", flush=True)
    if budget != float("inf"):
        # A step that runs far past the budget (a hung kernel, a slow DeepSpeed build) must not hold the GPU.
        watchdog = threading.Timer(budget + 120, lambda: (write_record(args, name, table), os._exit(124)))
        watchdog.daemon = True
        watchdog.start()
    stage2_seconds = None
    steps = {
        "1": lambda: step_diffueraser(table, sizes, device, torch.float32 if args.dry_run else torch.float16),
        "2": lambda: step_stage2(table, sizes, device),
        "3": lambda: step_stage3(table, sizes, device, stage2_seconds),
        "4": lambda: step_propainter(table, sizes, device),
        "5": lambda: step_metrics(table, sizes, device),
        "6": lambda: step_generation(table, sizes, device, args.weights),
    }
    for number in args.steps.split(","):
        if table.remaining() <= 0:
            table.add(number, "", status="skipped: time budget")
            continue
        try:
            result = steps[number]()
            if number == "2":
                stage2_seconds = result
        except Exception as err:  # one failed step must not hide the others' figures
            table.add(number, "", status=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            traceback.print_exc(file=sys.stderr)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    record = write_record(args, name, table)
    print(f"\n{'step':<20} {'case':<48} figures")
    for row in table.rows:
        print(f"{row['step']:<20} {row['case']:<48} {figures(row)}")
    print(f"written: {args.json} ({record['seconds']:.0f} s)")


def write_record(args: argparse.Namespace, device_name: str, table: Table) -> dict:
    record = {"device": device_name, "host": platform.node(), "torch": torch.__version__, "dry_run": args.dry_run,
              "seconds": time.monotonic() - table.started, "rows": table.rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
