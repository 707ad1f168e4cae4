"""ProPainter's recurrent flow-completion network (RFC), after upstream ``core/trainer_flow_w_edge.py``.

Each step: flows between the ``data.num_local_frames`` ground-truth frames (precomputed, or frozen RAFT on the fly),
both directions completed in one batched forward pass (the backward sequence reversed in time, as at inference),
then :func:`vipo.losses.propainter.flow_completion_loss` (hole/valid L1, smoothness, census warp, edge BCE against
Canny edges of the flow). Adam with ``optim.*`` (upstream: β (0, 0.99), lr 5e-5, MultiStepLR γ 0.2 at
300k/400k/500k/600k; the seed: β (0.9, 0.999), lr 1e-4, milestones 100k/200k γ 0.5, 1000 warm-up steps).

Checkpoints hold ``weights/recurrent_flow_completion.pth`` (released format); the export is a complete inference
folder. Launch: ``vipo train jobs/configs/flowcomp_demo.yaml`` (CPU, random weights) or ``flowcomp.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import flow_to_image

from vipo.data.propainter import ProPainterDataset
from vipo.losses.propainter import flow_completion_loss, flow_edges
from vipo.models.propainter import RecurrentFlowCompleteNet
from vipo.pipelines.propainter import WEIGHT_FILES
from vipo.train.checkpointing import WEIGHTS_DIR
from vipo.train.engine import WorkerContext, build_engine
from vipo.train.loop import TrainLoop
from vipo.train.propainter import (
    batch_flows,
    export_released,
    frozen_weights_note,
    load_networks,
    log_tags,
    resize_batch,
    save_released,
    validation_samples,
)
from vipo.train.recipes.configs import FlowCompletionConfig

__all__ = ["FlowCompletionConfig", "FlowCompletionRecipe"]

RFC_FILE = WEIGHT_FILES["flow_completion"]


def complete_both_directions(network: torch.nn.Module, flows_forward: torch.Tensor, flows_backward: torch.Tensor,
                             holes: torch.Tensor):
    """One forward pass over both directions (so DDP sees one call): forward flows with frame t's holes, backward
    flows reversed in time with frame t+1's. Returns ((flow_f, flow_b), (edge_f, edge_b)), each (B,T-1,...)."""
    holes_forward, holes_backward = holes[:, :-1], holes[:, 1:]
    masked = torch.cat([flows_forward * (1 - holes_forward), (flows_backward * (1 - holes_backward)).flip(1)])
    output = network(masked, torch.cat([holes_forward, holes_backward.flip(1)]), predict_edges=True)
    (flow_f, flow_b), (edge_f, edge_b) = output.flows.chunk(2), output.edges.chunk(2)
    return (flow_f, flow_b.flip(1)), (edge_f, edge_b.flip(1))


class FlowCompletionRecipe:
    config_class = FlowCompletionConfig
    manifest_path = None

    def __init__(self, cfg: FlowCompletionConfig, ctx: WorkerContext):
        self.cfg, self.ctx = cfg, ctx
        self.parent_checkpoint = cfg.model.weights_dir

    @classmethod
    def prepare(cls, cfg: FlowCompletionConfig) -> None:
        """Nothing to write: random demo weights are built in each worker from ``random_weights_seed``."""

    def setup(self, checkpoint: Path | None) -> None:
        cfg = self.cfg
        self.raft, network, _ = load_networks(cfg.model, self.ctx.device, generator=False)
        if checkpoint is not None:
            state = torch.load(checkpoint / WEIGHTS_DIR / RFC_FILE, map_location="cpu", weights_only=True)
            network.load_state_dict(state, strict=True)
        elif cfg.model.init == "scratch":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                network = RecurrentFlowCompleteNet()
        network.train().requires_grad_(True)
        self.engine = build_engine(network, cfg, self.ctx)
        self.dataset = ProPainterDataset(cfg.data)
        self.validation = validation_samples(self.dataset, cfg.validation) if cfg.validation.every_n_steps else []
        self.loop = TrainLoop(self, cfg, self.ctx, self.engine, self.dataset, checkpoint=checkpoint,
                              loader_workers=cfg.loader_workers)
        log_tags(self, {"vipo.propainter.frozen_weights": frozen_weights_note(cfg.model)})

    def train(self) -> None:
        self.loop.run()

    def _inputs(self, batch: dict[str, torch.Tensor], step: int):
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        batch = resize_batch(batch, self.cfg.progressive.size_at(step, self.cfg.data.size))
        flows = batch_flows(batch, self.raft, batch["frames"].shape[1])
        return batch["frames"], batch["holes"], flows

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        frames, holes, truth = self._inputs(batch, self.loop.progress.step)
        predicted, edges = complete_both_directions(self.engine.module, *truth, holes)
        true_edges = tuple(flow_edges(flow) for flow in truth)
        loss, terms = flow_completion_loss(self.cfg.loss, predicted, truth, holes, frames, edges, true_edges)
        return loss, {name: float(value) for name, value in terms.items()}

    def validate(self, step: int) -> dict[str, np.ndarray]:
        """Hole end-point error per clip (logged) and strips of masked / completed / RAFT flow."""
        videos, metrics = {}, {}
        for name, sample in self.validation:
            frames, holes, truth = self._inputs(sample, self.cfg.optim.max_steps)
            (flow_f, flow_b), _ = complete_both_directions(self.engine.model, *truth, holes)
            hole = holes[:, :-1]
            epe = ((flow_f - truth[0]).norm(dim=2, keepdim=True) * hole).sum() / hole.sum().clamp_min(1)
            metrics[f"val/{name}/hole_epe"] = float(epe)
            rows = [flow_to_image(f[0].float()) for f in (truth[0] * (1 - hole), flow_f * hole + truth[0] * (1 - hole),
                                                         truth[0])]
            videos[f"val_{name}"] = torch.cat(rows, dim=-2).permute(0, 2, 3, 1).cpu().numpy()
        if metrics and self.ctx.is_main:
            metrics["val/hole_epe"] = float(np.mean(list(metrics.values())))
            self.loop.logger.log_metrics(metrics, step=step)
        return videos

    def save_checkpoint(self, directory: Path) -> None:
        save_released(self.engine.model.state_dict(), directory, RFC_FILE)

    @classmethod
    def export(cls, cfg: FlowCompletionConfig, checkpoint: Path, out_dir: Path) -> None:
        """``recurrent_flow_completion.pth`` trained, with the run's RAFT and generator files beside it."""
        export_released(cfg, checkpoint, out_dir, [RFC_FILE])

    def cleanup(self) -> None:
        for name in ("engine", "raft", "loop"):
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
