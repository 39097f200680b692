"""The network as a diffusers component: ``config.json`` + ``diffusion_pytorch_model.safetensors``.

Our networks are plain ``torch.nn.Module``s configured by a frozen dataclass. diffusers saves and
loads components that are ``ModelMixin`` + ``ConfigMixin``; this thin wrapper holds the network
(``.network``) and its config as JSON (``config.network_config``), and nothing else.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from patchforcing.errors import ConfigError
from patchforcing.models import build_model, config_from_dict, unwrap_model


class PatchForcingTransformerModel(ModelMixin, ConfigMixin):
    """A Patch Forcing network (class-conditional, SiT baseline or text-to-image) for diffusers.

    Args:
        network_config: the network's ``config.to_dict()``; the network is built from it.

    Example:
        >>> component = PatchForcingTransformerModel.from_network(pf.load_model("runs/digits"))
        >>> component.network  # what pf.sample takes
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, network_config: dict[str, Any] | None = None):
        super().__init__()
        if not isinstance(network_config, dict):
            raise ConfigError("PatchForcingTransformerModel needs network_config, the network's config.to_dict()")
        self.network = build_model(config_from_dict(dict(network_config)))

    @classmethod
    def from_network(cls, network: nn.Module) -> PatchForcingTransformerModel:
        """Wrap an existing network: same weights (copied), same dtype and device, eval mode."""
        network = unwrap_model(network)
        weight = next(network.parameters())
        component = cls(network_config=network.config.to_dict())
        component.network.to(device=weight.device, dtype=weight.dtype)  # the inner module: keeps float64 exact
        component.network.load_state_dict(network.state_dict())
        return component.eval()

    @classmethod
    def around(cls, network: nn.Module) -> PatchForcingTransformerModel:
        """Wrap ``network`` itself, without a copy (the wrapper's own network is built on the meta
        device and replaced), so loading a folder holds its weights once; eval mode."""
        network = unwrap_model(network)
        with torch.device("meta"):
            component = cls(network_config=network.config.to_dict())
        component.network = network
        return component.eval()

    def forward(self, *args: Any, **kwargs: Any):
        """The network's forward: ``(x (B, C, H, W), t (B, N) or (B,), y) -> ModelOutput``."""
        return self.network(*args, **kwargs)
