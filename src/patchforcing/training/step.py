"""One training step, ``train_step``: what ``train`` runs at every step and every benchmark times.

    ema, optimizer, scheduler = make_ema_and_optimizer(net, cfg)   # the trainer's AdamW (fused on CUDA) and EMA
    losses = train_step(net, ema, optimizer, example, scheduler=scheduler, **step_options(cfg, device))

Also here: the micro-batch split of ``--grad-accum`` and the loss bookkeeping of the trainer.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor, nn

from patchforcing import runtime
from patchforcing.loss import Example, example_loss
from patchforcing.models import unwrap_model
from patchforcing.training.config import TrainConfig
from patchforcing.training.ema import EMA

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


def make_ema_and_optimizer(net: nn.Module, cfg: TrainConfig) -> tuple[EMA, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """What ``train`` builds around a fresh network: its ``EMA`` (``cfg.ema_decay``), AdamW and warm-up schedule."""
    return EMA(net, cfg.ema_decay), *make_optimizer(net, cfg)


def step_options(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """The keywords of ``train_step`` that ``train`` passes for ``cfg`` on ``device``."""
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return {"grad_clip": cfg.grad_clip, "grad_accum": cfg.grad_accum, "autocast": torch.bfloat16 if bf16 else None,
            "uncertainty_weight": cfg.uncertainty_weight, "repa_weight": cfg.repa_weight}


def train_step(model: nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer, example: Example, *,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, grad_clip: float = 1.0, grad_accum: int = 1,
               autocast: torch.dtype | None = None, uncertainty_weight: float = 0.01, repa_weight: float = 0.5) -> dict[str, Tensor]:
    """One optimizer step on ``example`` (docs/method.md §4.3): loss, backward, clipping, AdamW, schedule, EMA.

    Args:
        model: the network, or the module wrapping it (DDP, compiled); its weights are clipped and averaged.
        ema: the weights' ``EMA``, updated after the step (None: no EMA).
        example: this process's rows of the step, on the network's device.
        grad_clip: clip the global gradient norm to this (0: no clipping).
        grad_accum: split the rows into this many micro-batches, one backward each (``micro_batches``).
        autocast: the autocast dtype of the forward and loss (``torch.bfloat16``), or None (off).
        uncertainty_weight, repa_weight: the weights of the loss terms (``example_loss``).

    Returns:
        the detached scalar losses of ``example_loss`` (means over all rows) and ``grad_norm``, the
        gradient norm before clipping.
    """
    net = unwrap_model(model)
    losses: dict[str, Tensor] = {}
    for part, share, sync in micro_batches(example.x1.shape[0], grad_accum, model):
        with sync():  # DDP all-reduces the gradients after the last micro-batch only
            with torch.autocast(example.x1.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                loss = example_loss(model, example.rows(part), uncertainty_weight=uncertainty_weight, repa_weight=repa_weight)
            (loss["loss"] if share == 1 else loss["loss"] * share).backward()  # the mean over all rows
        losses = {k: v.detach() * share + losses.get(k, 0) for k, v in loss.items()}
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(net)
    return {**losses, "grad_norm": grad_norm.detach()}


class LossTracker:
    """Sums the step losses on the device (no host sync per step) and remembers the first step
    whose loss or gradient norm was not finite."""

    def __init__(self, procs: runtime.Processes):
        self.procs = procs
        self.sums: Tensor | None = None
        self.count = 0
        self.bad_step = torch.full((), _NONE, dtype=torch.int64, device=procs.device)
        self.bad_value = torch.zeros((), device=procs.device)

    def add(self, step: int, values: dict[str, Tensor]) -> None:
        """Add the scalars of ``train_step`` (``loss`` and ``grad_norm`` among them) of step ``step``."""
        self.names = tuple(values)
        stacked = torch.stack([v.float() for v in values.values()])
        self.sums = stacked if self.sums is None else self.sums + stacked
        self.count += 1
        first = (self.bad_step == _NONE) & ~torch.isfinite(stacked).all()
        self.bad_step = torch.where(first, step, self.bad_step)
        loss, grad_norm = values["loss"].float(), values["grad_norm"].float()
        culprit = torch.where(torch.isfinite(loss), grad_norm, loss)  # the loss, else the gradient norm
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
