"""Networks: the Patch Forcing transformer, its SiT baseline and the text-to-image network, with presets."""

from __future__ import annotations

from typing import Any

from torch import nn

from patchforcing.errors import ConfigError
from patchforcing.models.config import PRESETS, Kind, ModelConfig, preset_config
from patchforcing.models.t2i import T2I_PRESETS, PatchForcingT2I, T2IConfig, t2i_preset_config
from patchforcing.models.transformer import FeatureOutput, ModelOutput, PatchForcingTransformer

ALL_PRESETS: tuple[str, ...] = (*PRESETS, *T2I_PRESETS)


def unwrap_model(model: nn.Module) -> PatchForcingTransformer:
    """The network inside DDP / torch.compile wrappers (they hide ``config``)."""
    while not hasattr(model, "config"):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a patchforcing network (an object with a .config), got {type(model).__name__}")
        model = inner
    return model


def create_model(preset: str | ModelConfig | T2IConfig, **overrides: Any) -> PatchForcingTransformer | PatchForcingT2I:
    """Build a network from a preset name (``"PF-B/2"``, ``"SiT-XL/2"``, ``"T2I-XS/2"`` ...) or a config.

    REPA: ``repa_dim=z`` adds the projector (``repa_projector_dim`` P, default 2048) on the tokens
    after block ``repa_depth`` (default per size: 8 for XL, 4 for B).

    Example:
        >>> net = create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2, input_size=8)
        >>> repa = create_model("PF-XL/2", repa_dim=768)  # REPA with DINOv2-B targets, depth 8
        >>> t2i = create_model("T2I-1.2B/2", in_channels=4)
    """
    if isinstance(preset, (ModelConfig, T2IConfig)):
        return build_model(config_from_dict({**preset.to_dict(), **overrides}))
    if isinstance(preset, str) and preset in T2I_PRESETS:
        return PatchForcingT2I(t2i_preset_config(preset, **overrides))
    if isinstance(preset, str) and preset not in PRESETS:  # name every preset create_model takes, T2I-* too
        raise ConfigError(f"unknown model preset {preset!r}; choose one of: {', '.join(ALL_PRESETS)}")
    return PatchForcingTransformer(preset_config(preset, **overrides))


def config_from_dict(d: dict[str, Any]) -> ModelConfig | T2IConfig:
    """The config a ``to_dict()`` came from: text-to-image configs carry ``architecture: "t2i"``."""
    if d.get("architecture") == "t2i":
        return T2IConfig.from_dict(d)
    return ModelConfig.from_dict(d)


def build_model(config: ModelConfig | T2IConfig) -> PatchForcingTransformer | PatchForcingT2I:
    """A freshly initialised network for ``config``."""
    return PatchForcingT2I(config) if isinstance(config, T2IConfig) else PatchForcingTransformer(config)


__all__ = [
    "ALL_PRESETS",
    "FeatureOutput",
    "PRESETS",
    "T2I_PRESETS",
    "Kind",
    "ModelConfig",
    "ModelOutput",
    "PatchForcingT2I",
    "PatchForcingTransformer",
    "T2IConfig",
    "build_model",
    "config_from_dict",
    "create_model",
    "preset_config",
    "t2i_preset_config",
    "unwrap_model",
]
