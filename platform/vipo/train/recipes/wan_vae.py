"""Fine-tune the Wan2.1 video VAE on HM3D equirectangular panoramas (straight edges stay straight, poles sharp).

Each step one 4n+1-frame clip per room (:class:`vipo.data.VaeClipDataset`, ``[B,3,4n+1,H,W]``) is encoded, a
latent drawn from the posterior (the run's noise generator) and decoded. Loss, every spatial term weighted per row
by the ERP latitude weight (:mod:`vipo.losses.erp`)::

    l1·L1 + edge·Sobel-edge L1 + lpips(step)·LPIPS-VGG + kl(step)·KL + prox·‖θ − θ₀‖²

``lpips(step)`` ramps linearly from 0 at ``loss.lpips_start`` to ``loss.lpips`` at ``loss.lpips_end``, ``kl(step)``
likewise; the learning rate warms up over ``optim.warmup_steps`` and decays by cosine to ``optim.max_steps`` (the
seed's timeline: 0→200 L1+edge only, LPIPS 200→500, KL 500→1000). The encoder learns at
``model.encoder_lr_scale`` × the decoder's rate (or not at all: ``model.decoder_only``). An EMA of the weights
(CPU) is what checkpoints call ``vae_ema`` and what the export holds; spiking steps are skipped by the shared step
guard (``guard.spike_factor``). Validation on held-out rooms logs PSNR, WS-PSNR, LPIPS and the Sobel-edge F1.

Launch: ``vipo train jobs/configs/vae_demo.yaml`` (CPU, tiny VAE) or ``jobs/configs/vae.yaml``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from torch import nn

from vipo.data.datasets import VaeClipDataset
from vipo.data.errors import SkipLog
from vipo.data.sources import scan_sources
from vipo.losses.erp import edge_f1, erp_weighted_mean, kl_divergence, psnr, sobel_magnitude, ws_psnr
from vipo.models.wan_vae import enable_block_checkpointing, load_wan_vae, norms_in_fp32, to_original_state_dict
from vipo.train.checkpointing import WEIGHTS_DIR, atomic_save
from vipo.train.ema import WeightEMA
from vipo.train.engine import WorkerContext, build_engine
from vipo.train.loop import TrainLoop
from vipo.train.recipes.configs import WanVaeConfig, WanVaeLossConfig, WanVaeModelSettings

__all__ = ["WanVaeConfig", "WanVaeLossConfig", "WanVaeModelSettings", "WanVaeRecipe", "linear_ramp"]

VGG16_CHECKPOINT = "vgg16-397923af.pth"  # torchvision's file name for the ImageNet VGG-16 (its hub cache name)
ORIGINAL_FILE = "Wan2.1_VAE.pth"


def linear_ramp(step: int, start: int, end: int, final: float) -> float:
    """0 up to ``start``, ``final`` from ``end`` on, linear in between."""
    if step <= start:
        return 0.0
    if step >= end:
        return final
    return final * (step - start) / (end - start)


class VaeReconstruction(nn.Module):
    """encode → posterior sample → decode, as one module (what DDP wraps). The encoder runs without gradients
    when it is frozen."""

    def __init__(self, vae: AutoencoderKLWan, decoder_only: bool):
        super().__init__()
        self.vae, self.decoder_only = vae, decoder_only

    def forward(self, pixels: torch.Tensor, noise: torch.Generator | None = None):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.decoder_only):
            posterior = self.vae.encode(pixels).latent_dist
        mean, logvar = posterior.mean, posterior.logvar
        latent = mean
        if noise is not None:
            latent = mean + posterior.std * torch.randn(mean.shape, generator=noise).to(mean)
        return self.vae.decode(latent).sample, mean, logvar


def lpips_network(loss: WanVaeLossConfig) -> tuple[nn.Module, str]:
    """The ``lpips`` package's VGG LPIPS (spatial map) with the ImageNet trunk from a local file, and where the
    trunk came from."""
    import lpips

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        network = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, spatial=True, verbose=False)
    path = loss.lpips_backbone or Path(torch.hub.get_dir()) / "checkpoints" / VGG16_CHECKPOINT
    if Path(path).is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        # The package's slices keep torchvision's ``features`` indices: "slice2.3.weight" ← "features.3.weight".
        network.net.load_state_dict({name: state[f"features.{name.split('.', 1)[1]}"]
                                     for name in network.net.state_dict()})
        source = str(path)
    elif loss.allow_random_lpips:
        source = "RANDOM trunk (loss.allow_random_lpips): not the LPIPS metric"
        warnings.warn(f"LPIPS VGG: {source}", stacklevel=2)
    else:
        raise FileNotFoundError(f"LPIPS needs torchvision's ImageNet VGG-16 offline: {path} is missing; set "
                                "loss.lpips_backbone, or loss.allow_random_lpips: true for a demo")
    return network.eval().requires_grad_(False), source


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) → (B·T, C, H, W)."""
    return video.transpose(1, 2).flatten(0, 1)


class WanVaeRecipe:
    config_class = WanVaeConfig
    manifest_path = None

    def __init__(self, cfg: WanVaeConfig, ctx: WorkerContext):
        self.cfg, self.ctx = cfg, ctx
        self.parent_checkpoint = cfg.model.weights

    @classmethod
    def prepare(cls, cfg: WanVaeConfig) -> None:
        """Nothing to write: the tiny VAE is drawn in each worker from ``model.tiny_seed``."""

    def setup(self, checkpoint: Path | None) -> None:
        cfg, device = self.cfg, self.ctx.device
        model = cfg.model
        start = load_wan_vae(model.weights, model.config_dir, model.tiny_seed)
        vae = load_wan_vae(checkpoint / WEIGHTS_DIR / "vae") if checkpoint else start
        vae.requires_grad_(True)
        if model.decoder_only:
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
        if model.gradient_checkpointing:
            enable_block_checkpointing(vae, encoder=not model.decoder_only)
        if cfg.precision != "fp32":
            norms_in_fp32(vae)
        # θ₀ for the proximal term: the starting weights, whatever step a resumed run is at.
        self.anchor = {name: p.detach().to(device).clone() for name, p in start.named_parameters()}
        self.ema = WeightEMA(vae, model.ema_decay)
        if checkpoint:
            self.ema.load_from(load_wan_vae(checkpoint / WEIGHTS_DIR / "vae_ema"))
        self.engine = build_engine(VaeReconstruction(vae, model.decoder_only), cfg, self.ctx,
                                   self.param_groups(vae))
        self.vae = self.engine.model.vae
        videos = scan_sources(cfg.data.sources, SkipLog(), cfg.data.strict)
        training, held_out = self.split_rooms(videos)
        self.dataset = VaeClipDataset(cfg.data, training)
        self.validation = VaeClipDataset(cfg.data, held_out) if held_out else None
        self.lpips, lpips_source = (lpips_network(cfg.loss) if cfg.loss.lpips > 0 else (None, "off"))
        if self.lpips is not None:
            self.lpips.to(device)
        self.loop = TrainLoop(self, cfg, self.ctx, self.engine, self.dataset, checkpoint=checkpoint,
                              loader_workers=cfg.loader_workers)
        self.ema_step = self.loop.progress.step
        if self.ctx.is_main:
            self.loop.logger.set_tags({"vipo.wan_vae.lpips_backbone": lpips_source,
                                       "vipo.wan_vae.dropped_rooms": str(self.dataset.skips.total)})

    def train(self) -> None:
        self.loop.run()

    def param_groups(self, vae: AutoencoderKLWan) -> list[dict]:
        """Decoder side at ``optim.lr`` (first: the rate the loop logs), encoder side × ``encoder_lr_scale``."""
        lr = self.cfg.optim.lr
        encoder_side = {id(p) for module in (vae.encoder, vae.quant_conv) for p in module.parameters()}
        trainable = [p for p in vae.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in encoder_side], "lr": lr},
                  {"params": [p for p in trainable if id(p) in encoder_side],
                   "lr": lr * self.cfg.model.encoder_lr_scale}]
        return [group for group in groups if group["params"]]

    def split_rooms(self, videos: list) -> tuple[list, list]:
        """Held-out rooms for validation: ``validation.videos`` (room ids or names), else the last
        ``validation.num_videos`` rooms; none when validation is off."""
        settings = self.cfg.validation
        if settings.every_n_steps is None:
            return videos, []
        if settings.videos:
            wanted = set(settings.videos)
            held_out = [v for v in videos if v.video_id in wanted or v.video_id.split("/", 1)[-1] in wanted]
        else:
            held_out = videos[-settings.num_videos:]
        if not held_out or len(held_out) == len(videos):
            raise ValueError(f"validation: hold out at least one room and keep one for training; rooms: "
                             f"{[v.video_id for v in videos]}")
        return [v for v in videos if v not in held_out], held_out

    def _update_ema(self) -> None:
        # One average per optimiser step taken (skipped steps do not advance progress.step).
        if self.loop.progress.step > self.ema_step:
            self.ema.update(self.vae)
            self.ema_step = self.loop.progress.step

    def weights(self, step: int) -> dict[str, float]:
        loss = self.cfg.loss
        return {"l1": loss.l1, "edge": loss.edge,
                "lpips": linear_ramp(step, loss.lpips_start, loss.lpips_end, loss.lpips),
                "kl": linear_ramp(step, loss.kl_start, loss.kl_end, loss.kl), "prox": loss.prox}

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        self._update_ema()
        pixels = batch["pixel_values"].to(self.ctx.device).transpose(1, 2)  # (B, 3, 4n+1, H, W) in [-1, 1]
        reconstruction, mean, logvar = self.engine.module(pixels, self.loop.noise)
        terms = self.loss_terms(frames_of(reconstruction).float(), frames_of(pixels).float(), mean, logvar,
                                self.loop.progress.step)
        weights = self.weights(self.loop.progress.step)
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {f"loss/{name}": float(value.detach()) for name, value in terms.items()} | {
            f"weight/{name}": weights[name] for name in ("lpips", "kl")}

    def loss_terms(self, prediction: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
                   step: int) -> dict[str, torch.Tensor]:
        terms = {
            "l1": erp_weighted_mean((prediction - target).abs()),
            "edge": erp_weighted_mean((sobel_magnitude(prediction) - sobel_magnitude(target)).abs()),
            "kl": kl_divergence(mean.float(), logvar.float()),
            "prox": sum(((p - self.anchor[n]).square().sum() for n, p in self.vae.named_parameters()
                         if p.requires_grad), torch.zeros((), device=prediction.device)),
        }
        if self.lpips is not None and self.weights(step)["lpips"] > 0:
            terms["lpips"] = erp_weighted_mean(self.lpips(prediction, target))
        return terms

    def validate(self, step: int) -> dict[str, np.ndarray]:
        """The EMA weights on each held-out room: metrics logged, input | reconstruction | error map per frame."""
        if self.validation is None:
            return {}
        self._update_ema()
        videos, scores = {}, {"psnr": [], "ws_psnr": [], "lpips": [], "edge_f1": []}
        with self.ema.swapped_into(self.vae):
            for index in range(len(self.validation)):
                pixels = self.validation[index]["pixel_values"].to(self.ctx.device)[None].transpose(1, 2)
                reconstruction = self.engine.model(pixels)[0]
                truth, output = (frames_of(v).float().add(1).div(2).clamp(0, 1) for v in (pixels, reconstruction))
                scores["psnr"].append(float(psnr(output, truth)))
                scores["ws_psnr"].append(float(ws_psnr(output, truth)))
                scores["edge_f1"].append(float(edge_f1(output, truth)))
                if self.lpips is not None:
                    scores["lpips"].append(float(self.lpips(output * 2 - 1, truth * 2 - 1).mean()))
                error = (output - truth).abs().mean(1, keepdim=True).expand_as(truth)
                strip = torch.cat([truth, output, (error * 4).clamp(0, 1)], dim=-1)  # error ×4: visible
                name = self.validation.index[index].video_id.replace("/", "_")
                videos[f"val_{name}"] = (strip.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        if self.ctx.is_main:
            self.loop.logger.log_metrics({f"val/{k}": float(np.mean(v)) for k, v in scores.items() if v}, step=step)
        return videos

    def save_checkpoint(self, directory: Path) -> None:
        """``vae/`` (the trained weights, resumable with the loop's optimiser state) and ``vae_ema/`` (the EMA
        weights alone), both ``AutoencoderKLWan.from_pretrained`` folders."""
        self._update_ema()
        self.vae.save_pretrained(directory / "vae")
        with self.ema.swapped_into(self.vae):
            self.vae.save_pretrained(directory / "vae_ema")

    @classmethod
    def export(cls, cfg: WanVaeConfig, checkpoint: Path, out_dir: Path) -> None:
        """``vae/`` (the EMA weights, diffusers format) and ``Wan2.1_VAE.pth`` (the same, original key layout)."""
        shutil.copytree(checkpoint / WEIGHTS_DIR / "vae_ema", out_dir / "vae", dirs_exist_ok=True)
        vae = load_wan_vae(out_dir / "vae")
        atomic_save(to_original_state_dict(vae), out_dir / ORIGINAL_FILE)

    def cleanup(self) -> None:
        for name in ("engine", "vae", "lpips", "anchor", "loop"):
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
