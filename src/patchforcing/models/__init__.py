"""Networks: the Patch Forcing transformer and its SiT baseline, with a preset registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from patchforcing.models.config import PRESETS, Kind, ModelConfig, preset_config
from patchforcing.models.transformer import ModelOutput, PatchForcingTransformer


def unwrap_model(model: nn.Module) -> PatchForcingTransformer:
    """The network inside DDP / torch.compile wrappers (they hide ``config``)."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a patchforcing network (an object with a .config), got {type(model).__name__}")
        model = inner
    return model


def create_model(preset: str | ModelConfig, **overrides: Any) -> PatchForcingTransformer:
    """Build a network from a preset name (``"PF-B/2"``, ``"SiT-XL/2"``, ``"PF-XS/2"`` ...) or a config.

    Example:
        >>> net = create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2, input_size=8)
    """
    if isinstance(preset, ModelConfig):
        config = ModelConfig.from_dict({**preset.to_dict(), **overrides})
    else:
        config = preset_config(preset, **overrides)
    return PatchForcingTransformer(config)


__all__ = ["PRESETS", "Kind", "ModelConfig", "ModelOutput", "PatchForcingTransformer", "create_model", "preset_config", "unwrap_model"]
