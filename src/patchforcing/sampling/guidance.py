"""Guided evaluation: the only way samplers see the network (SPEC 5).

``Guide(x, t)`` returns the guided velocity, the guided log-variance and the conditional-only
velocity. With ``cfg_scale == 1`` it is one plain call; otherwise one call on ``[x; x]`` with
labels ``[null; y]`` (unconditional first). Every call of the network counts as one NFE.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError, ShapeError


class Guided(NamedTuple):
    velocity: Tensor  # (B, C, H, W) guided
    logvar: Tensor | None  # (B, 1, H, W) guided, None for networks without the head
    cond_velocity: Tensor  # (B, C, H, W) conditional only (== velocity when cfg_scale == 1)


class Guide:
    """Classifier-free guided network evaluation with an NFE counter."""

    def __init__(self, model: nn.Module, labels: Tensor | None, cfg_scale: float = 1.0, null_label: int | None = None):
        self.model = model
        self.cfg_scale = float(cfg_scale)
        self.nfe = 0
        config = model.config
        self.null_label = config.null_label if null_label is None else int(null_label)
        if self.cfg_scale != 1.0:
            if self.null_label is None:
                raise ConfigError("cfg_scale != 1 needs a null class, but this network has none (class_dropout_prob=0)")
            if labels is None:
                raise ConfigError("cfg_scale != 1 needs class labels; pass labels=... or use cfg_scale=1")
        self.labels = labels

    def __call__(self, x: Tensor, t: Tensor) -> Guided:
        self.nfe += 1
        if self.cfg_scale == 1.0:
            v, logvar = self.model(x, t, self.labels)
            return Guided(v, logvar, v)
        null = torch.full_like(self.labels, self.null_label)
        v, logvar = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([null, self.labels]))
        v_u, v_c = v.chunk(2)
        w = self.cfg_scale
        guided_logvar = None
        if logvar is not None:
            l_u, l_c = logvar.chunk(2)
            guided_logvar = l_u + w * (l_c - l_u)
        return Guided(v_u + w * (v_c - v_u), guided_logvar, v_c)


def check_labels(model: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor | None:
    """Validate user labels against the network: shape (B,), integer, within the class table."""
    if labels is None:
        return None
    labels = torch.as_tensor(labels, device=noise.device)
    if labels.ndim == 0:
        labels = labels.expand(noise.shape[0])
    if labels.shape != (noise.shape[0],):
        raise ShapeError(f"labels have shape {tuple(labels.shape)}; expected ({noise.shape[0]},), one per noise sample")
    if labels.dtype.is_floating_point:
        raise ShapeError("labels must be integer class indices")
    rows = model.config.num_classes + int(model.config.has_null_class)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= rows):
        raise ShapeError(f"labels must lie in [0, {model.config.num_classes}) (or {model.config.num_classes} for the null class)")
    return labels.long()
