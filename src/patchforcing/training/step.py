"""The pieces of one optimisation step: optimiser and schedule, the loss view, loss bookkeeping."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from patchforcing import runtime
from patchforcing.training.config import TrainConfig

_NONE = 2**62  # "no bad step yet" (min-reduced over processes)


def micro_batches(rows: int, parts: int, model: nn.Module):
    """Split ``rows`` into ``parts`` equal micro-batches (``--grad-accum``).

    Yields ``(rows slice, share of the batch, sync context)``: weighting each micro-batch's mean
    loss by its share before ``backward`` accumulates the gradient of the whole batch's mean. The
    context suspends DDP's gradient all-reduce (``no_sync``) for all but the last micro-batch.
    """
    size = rows // parts
    for k in range(parts):
        last = k == parts - 1
        sync = contextlib.nullcontext if last or not hasattr(model, "no_sync") else model.no_sync
        yield slice(k * size, rows if last else (k + 1) * size), (rows - k * size if last else size) / rows, sync


def warmup_factor(warmup_steps: int):
    """Multiplier of the learning rate before optimizer step k (0-based): linear ``(k + 1) / W`` up to 1."""
    return lambda k: min(1.0, (k + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def adamw(params: list[nn.Parameter], **hyper) -> torch.optim.AdamW:
    """PyTorch's AdamW with ``hyper`` (lr, betas, weight_decay). On CUDA it takes the fused kernel (one
    launch updates every weight; the same update up to rounding), elsewhere the default
    implementation, so CPU runs keep the exact steps this project's CPU results were trained with.
    A resumed run keeps the choice saved in its optimizer state."""
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
    return torch.optim.AdamW(params, fused=True if fused else None, **hyper)


def make_optimizer(net: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable weights (docs/method.md §4.3: lr 1e-4, default betas, no weight decay) with a
    linear warm-up then a constant learning rate."""
    params = [p for p in net.parameters() if p.requires_grad]  # the fixed position embedding is not trained
    optimizer = adamw(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(cfg.warmup_steps))


class LossTracker:
    """Sums the step losses on the device (no host sync per step) and remembers the first step
    whose loss or gradient norm was not finite."""

    def __init__(self, procs: runtime.Processes):
        self.procs = procs
        self.sums: Tensor | None = None
        self.count = 0
        self.bad_step = torch.full((), _NONE, dtype=torch.int64, device=procs.device)
        self.bad_value = torch.zeros((), device=procs.device)

    def add(self, step: int, loss: Tensor, flow: Tensor, uncertainty: Tensor, grad_norm: Tensor, repa: Tensor | None = None) -> None:
        parts = [loss, flow, uncertainty, grad_norm] + ([] if repa is None else [repa])
        self.names = ("loss", "flow_loss", "uncertainty_loss", "grad_norm") + (() if repa is None else ("repa_loss",))
        values = torch.stack([v.float() for v in parts])
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1
        first = (self.bad_step == _NONE) & ~torch.isfinite(values).all()
        self.bad_step = torch.where(first, step, self.bad_step)
        culprit = torch.where(torch.isfinite(values[0]), values[3], values[0])  # the loss, else the gradient norm
        self.bad_value = torch.where(first, culprit, self.bad_value)

    def first_bad(self) -> tuple[int, float] | None:
        """``(step, value)`` of the first non-finite loss (or gradient norm) on any process, else None."""
        step = int(runtime.all_reduce_min(self.bad_step, self.procs))
        if step == _NONE:
            return None
        value = float(self.bad_value) if int(self.bad_step) == step else math.nan
        return step, value

    def pop_means(self) -> dict[str, float]:
        """Means since the last call, averaged over processes (so the global batch's loss)."""
        means = runtime.all_reduce_mean(self.sums / self.count, self.procs).tolist()
        self.sums, self.count = None, 0
        return dict(zip(self.names, means, strict=False))
