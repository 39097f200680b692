"""Networks: the Patch Forcing transformer and its SiT baseline, with a preset registry."""

from __future__ import annotations

from typing import Any

from patchforcing.models.config import PRESETS, Kind, ModelConfig, preset_config
from patchforcing.models.transformer import ModelOutput, PatchForcingTransformer


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


__all__ = ["PRESETS", "Kind", "ModelConfig", "ModelOutput", "PatchForcingTransformer", "create_model", "preset_config"]
