"""Exponential moving average of the weights: the network that validation and sampling use."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step (float32 copy).

    Example:
        >>> ema = EMA(net, decay=0.9999)
        >>> ...; optimizer.step(); ema.update(net)
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(net).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        ema = [p for p in self.module.parameters()] + [b for b in self.module.buffers() if b.is_floating_point()]
        cur = [p for p in net.parameters()] + [b for b in net.buffers() if b.is_floating_point()]
        # lerp(e, w, 1 - d) = e + (1 - d)(w - e) = d e + (1 - d) w, one fused kernel for all tensors
        torch._foreach_lerp_(ema, [c.detach().float() for c in cur], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
