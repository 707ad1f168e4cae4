"""``diffueraser``: DiffuEraser from stage-2 weights in the upstream layout, optionally with the ProPainter prior.

The research group's "raw6" DAVIS-50 settings are ``num_inference_steps: 6``, ``pcm_steps: null`` (no PCM LoRA),
``mask_dilation_iter: 0`` and the ProPainter prior (the research group's protocol); the defaults here are upstream's
(2-step PCM, dilation 8). The raw generation (before the pipeline's feathered blend) is the prediction: the scorer
builds the hard composite itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from evaluation.methods.base import Inpaint, MethodConfig, register_method
from evaluation.methods.propainter import ProPainterMethod
from vipo.config import ExistingPath

__all__ = ["DiffuEraserMethod", "export_model_paths"]


def export_model_paths(folder: Path) -> tuple[Path, Path | None]:
    """``(unet_main, brushnet or None)`` of an exported checkpoint folder (``vipo export`` writes them)."""
    unet = folder / "unet_main"
    if not (unet / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no unet_main/config.json; expected an export folder "
                                f"(`vipo export <run dir>` writes unet_main/ and brushnet/)")
    brushnet = folder / "brushnet"
    return unet, brushnet if (brushnet / "config.json").is_file() else None


@register_method
class DiffuEraserMethod(MethodConfig):
    kind: Literal["diffueraser"] = "diffueraser"
    weights: ExistingPath
    """DiffuEraser weights root in the upstream layout (``vipo.models.diffueraser_weights``): its
    ``diffuEraser/unet_main`` and ``brushnet`` are the stage-2 weights."""
    prior: ProPainterMethod | None = None
    """ProPainter whose output initialises the latents (the group's protocol); None starts from noise. Its options
    default to ``preset: diffueraser_prior`` (``vipo.pipelines.configs.DIFFUERASER_PRIOR``), as upstream runs it."""
    num_inference_steps: int = Field(default=2, ge=1)
    pcm_steps: int | None = Field(default=2, ge=1)
    """Load the PCM LoRA distilled for this many steps and sample with TCD; None: plain UniPC sampling."""
    mask_dilation_iter: int = Field(default=8, ge=0)
    mask_erosion_iter: int = Field(default=1, ge=0)
    """Upstream erodes the hole once before dilating it; with ``mask_dilation_iter: 0`` (raw6) DiffuEraser is then
    given the ground truth of a 1-px ring inside the scored hole, an upstream quirk that favours it over ProPainter
    (the report notes it). 0 fills exactly the scored hole."""
    max_image_size: int | None = Field(default=None, ge=8)

    weight_fields = ("weights", "prior")

    @field_validator("prior", mode="before")
    @classmethod
    def _prior_runs_as_upstream(cls, prior: Any) -> Any:
        if isinstance(prior, dict) and isinstance(prior.get("options", {}), dict):
            return {**prior, "options": {"preset": "diffueraser_prior", **prior.get("options", {})}}
        return prior

    def model_paths(self) -> tuple[Path | None, Path | None]:
        """``(unet_path, brushnet_path)`` replacing the layout's; None keeps the layout's."""
        return None, None

    def weight_paths(self) -> list[Path]:
        from vipo.models.diffueraser_weights import DiffuEraserWeights

        layout = DiffuEraserWeights(self.weights)
        unet, brushnet = self.model_paths()
        paths = [layout.vae, layout.text_encoder, layout.tokenizer, layout.scheduler,
                 unet or layout.unet_main, brushnet or layout.brushnet]
        if unet is not None and layout.motion_adapter.exists():
            paths.append(layout.motion_adapter)  # a 2-D replacement UNet gets the layout's motion modules
        return paths + ([layout.pcm_lora(self.pcm_steps)] if self.pcm_steps else [])

    def prior_method(self) -> MethodConfig | None:
        return self.prior

    def notes(self, label: str) -> list[str]:
        if self.mask_erosion_iter <= self.mask_dilation_iter:
            return []
        return [f"{label}: mask_erosion_iter {self.mask_erosion_iter} > mask_dilation_iter {self.mask_dilation_iter}:"
                f" DiffuEraser inpaints a hole up to {self.mask_erosion_iter - self.mask_dilation_iter} px smaller than"
                f" the scored one and is given the ground truth of the ring between (upstream's erosion quirk; it"
                f" favours DiffuEraser over ProPainter)"]

    def build_pipeline(self, device: str):
        """The ``DiffuEraserPipeline`` of these weights on ``device``."""
        from vipo.pipelines.diffueraser import DiffuEraserPipeline

        unet, brushnet = self.model_paths()
        pipeline = DiffuEraserPipeline.from_weights(self.weights, device=device, pcm_steps=self.pcm_steps,
                                                    unet_path=unet, brushnet_path=brushnet)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def load(self, device: str) -> Inpaint:
        return self._inpaint_with(self.build_pipeline(device))

    def _inpaint_with(self, pipeline) -> Inpaint:
        def inpaint(frames, hole, prior):
            return pipeline(frames, hole, prior=prior, seed=self.seed, num_inference_steps=self.num_inference_steps,
                            mask_dilation_iter=self.mask_dilation_iter, mask_erosion_iter=self.mask_erosion_iter,
                            max_image_size=self.max_image_size).raw_frames

        return inpaint
