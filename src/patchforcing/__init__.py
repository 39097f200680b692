"""patchforcing: Patch Forcing (difficulty-aware adaptive sampling with per-patch diffusion times).

Five lines from a checkpoint to samples::

    import torch, patchforcing as pf
    net = pf.load_model("PF-B-2.pt")
    noise = torch.randn(4, 4, 32, 32)
    x = pf.sample(net, noise, sampler="look-ahead", steps=32, labels=torch.tensor([207, 360, 387, 974]))

or with one plan value (sampler, steps, options, guidance), e.g. from an NFE budget::

    plan = pf.SamplingPlan.from_nfe("look-ahead", 32, guidance=pf.Guidance(2.0, "sigma:0.34,1.02"))
    x = pf.sample(net, noise, plan, labels=torch.tensor([207, 360, 387, 974]))

Inpainting and per-region editing (docs/inpainting.md): ``pf.inpaint(net, image, mask, plan, seeds=[0, 1, 2, 3])``,
``pf.edit(net, image, strength_map, plan, seeds=...)``.

With diffusers (extra ``[vae]``): ``pipe = pf.PatchForcingPipeline.from_pretrained(folder_or_cached_id)``,
then ``pipe(class_labels=[...], nfe=32, generator=g).images``.
"""

from patchforcing.checkpoints import load_model, save_model
from patchforcing.conditioning import Condition
from patchforcing.errors import CheckpointError, ConfigError, DataError, PatchForcingError, ShapeError, TrainingError
from patchforcing.flow import interpolate
from patchforcing.guides import load_guide_model
from patchforcing.inpainting import edit, inpaint
from patchforcing.loss import validation_loss
from patchforcing.models import PRESETS, ModelConfig, ModelOutput, PatchForcingTransformer, create_model
from patchforcing.sampling import SAMPLERS, Guidance, GuidanceInterval, SamplingPlan, expected_nfe, sample, steps_for_nfe
from patchforcing.timesteps import DISTRIBUTIONS, timestep_distribution
from patchforcing.training import train
from patchforcing.training.example import training_loss  # draws an example, then patchforcing.loss.example_loss

__version__ = "0.1.0"


__all__ = [
    "DISTRIBUTIONS",
    "PRESETS",
    "SAMPLERS",
    "CheckpointError",
    "Condition",
    "ConfigError",
    "DataError",
    "Guidance",
    "GuidanceInterval",
    "ModelConfig",
    "ModelOutput",
    "PatchForcingError",
    "PatchForcingTransformer",
    "SamplingPlan",
    "ShapeError",
    "TrainingError",
    "create_model",
    "edit",
    "expected_nfe",
    "inpaint",
    "interpolate",
    "load_guide_model",
    "load_model",
    "sample",
    "save_model",
    "steps_for_nfe",
    "timestep_distribution",
    "train",
    "training_loss",
    "validation_loss",
]


def __getattr__(name: str):
    """``pf.PatchForcingPipeline``: imported on first use (it needs diffusers, extra ``[vae]``)."""
    if name == "PatchForcingPipeline":
        from patchforcing.hub.pipeline import PatchForcingPipeline  # diffusers: optional extra [vae]

        return PatchForcingPipeline
    raise AttributeError(f"module 'patchforcing' has no attribute {name!r}")
