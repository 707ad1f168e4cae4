"""Activation memory of one Wan2.1 VAE training forward: block checkpointing vs none, in the same process.

Measured as the bytes autograd keeps for backward (tensors saved outside checkpointed regions, each storage once:
a ``saved_tensors_hooks`` count, so it runs on CPU) and, on CUDA, also the peak allocated memory above the
weights. Gradients are checked equal. The real Wan2.1 layout (channel multipliers 1,2,4,4; 2 res blocks) at
``--base-dim`` channels (96 is the released model); one 4n+1 clip.

    OMP_NUM_THREADS=2 python benchmarks/bench_vae.py --base-dim 32 --frames 5 --height 128 --width 256
"""

from __future__ import annotations

import argparse
import copy

import torch
from diffusers import AutoencoderKLWan

from vipo.models.wan_vae import TINY_WAN_VAE_CONFIG, enable_block_checkpointing


def kept_for_backward(vae: AutoencoderKLWan, video: torch.Tensor) -> tuple[int, int, list[torch.Tensor]]:
    """(bytes saved for backward, CUDA peak bytes above the start or 0, parameter gradients)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    cuda = video.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = vae(video).sample.square().mean()
    peak = torch.cuda.max_memory_allocated() - start if cuda else 0
    loss.backward()
    return sum(storages.values()), peak, [p.grad.clone() for p in vae.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-dim", type=int, default=32)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    plain = AutoencoderKLWan(**{**TINY_WAN_VAE_CONFIG, "base_dim": args.base_dim}).to(device)
    checkpointed = copy.deepcopy(plain)
    enable_block_checkpointing(checkpointed)
    video = torch.rand(1, 3, args.frames, args.height, args.width, device=device) * 2 - 1
    saved_plain, peak_plain, grads_plain = kept_for_backward(plain, video)
    saved_ckpt, peak_ckpt, grads_ckpt = kept_for_backward(checkpointed, video)
    same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(grads_plain, grads_ckpt))
    print(f"Wan VAE base_dim={args.base_dim}, clip {args.frames}x{args.height}x{args.width}, {device}")
    print(f"saved for backward: plain {saved_plain / 2**20:.1f} MiB, checkpointed {saved_ckpt / 2**20:.1f} MiB, "
          f"ratio {saved_ckpt / saved_plain:.3f} (saved {1 - saved_ckpt / saved_plain:.1%})")
    if device.type == "cuda":
        print(f"CUDA peak above start: plain {peak_plain / 2**20:.1f} MiB, checkpointed {peak_ckpt / 2**20:.1f} MiB, "
              f"ratio {peak_ckpt / peak_plain:.3f}")
    print(f"gradients equal: {same}")


if __name__ == "__main__":
    main()
