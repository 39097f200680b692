"""The one place where a training example is drawn (docs/method.md §4).

``draw_example`` draws, from the step's generator and in this order, the noise ``x0``, the
times ``t`` and which labels are replaced by the null class (guidance dropout). The trainer calls
it on the GLOBAL batch of a step (``batches.py``: the generator is seeded by ``(seed, step)``),
so every process count and every resume sees the same draws. ``step_example`` then completes
this process's slice on its device: a text network's condition (the step's captions, some
dropped to ``""`` from their own stream, encoded) and the REPA target of the clean images.
The loss, ``patchforcing.loss.example_loss``, draws nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.errors import ShapeError
from patchforcing.loss import Example, example_loss
from patchforcing.models import unwrap_model
from patchforcing.timesteps import TimestepDistribution, timestep_distribution


def draw_example(
    x1: Tensor,
    labels: Tensor | None,
    generator: torch.Generator | None,
    *,
    timesteps: TimestepDistribution | None,
    num_patches: int,
    null_label: int | None,
    drop_prob: float,
    global_time: bool = False,
    x0: Tensor | None = None,
    t: Tensor | None = None,
) -> Example:
    """Draw noise, times and the label dropout of the clean batch ``x1`` from ``generator``.

    The draws, in this order (each skipped when given): ``x0 ~ N(0, I)`` like ``x1``; ``t`` from
    ``timesteps`` (B, N); one uniform per row, ``< drop_prob`` replacing its label by
    ``null_label`` (only with labels, a null label and ``drop_prob > 0``).

    Args:
        x1: (B, C, H, W) clean data.
        labels: (B,) class labels, or None.
        generator: the step's random stream (None: torch's global one).
        timesteps: the training timestep distribution.
        num_patches: N of the network.
        null_label: the guidance null class, or None when labels are never dropped.
        drop_prob: probability that a label is replaced by ``null_label``.
        global_time: keep one time per sample, ``t[:, 0]`` (B,) (the SiT baseline).
        x0, t: given noise (B, C, H, W) and times (B, N) or (B,), not drawn.

    Returns:
        the ``Example`` (no REPA target).
    """
    b = x1.shape[0]
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    if t is None:
        t = timesteps(b, num_patches, generator=generator, device=x1.device, dtype=x1.dtype)  # (B, N)
    if labels is not None and null_label is not None and drop_prob > 0:  # guidance dropout (docs/method.md §3.2)
        drop = torch.rand((b,), generator=generator, device=x1.device) < drop_prob
        labels = torch.where(drop, torch.full_like(labels, null_label), labels)
    if global_time and t.ndim == 2:
        t = t[:, 0]
    return Example(x1, x0, t, labels)


def step_example(drawn: Example, device: torch.device, *, text: Any = None, repa: Any = None) -> Example:
    """This process's example on ``device``, completed from ``drawn = StepBatches[step]``.

    Args:
        drawn: the step's rows as ``StepBatches`` draws them (labels, or for a text network the
            captions with the dropped ones as ``""``, as the condition; stored REPA features or None
            as the target).
        text: the run's ``TextConditioner``, which encodes the captions; None for class-conditional networks.
        repa: the run's ``RepaTargets``, or None without REPA.
    """
    x1, x0, t = (v.to(device, non_blocking=True) for v in (drawn.x1, drawn.x0, drawn.t))
    if text is not None:  # text states of this step's captions (the dropped ones are "")
        condition = text.states(drawn.condition, device)
    else:
        condition = drawn.condition.to(device, non_blocking=True)
    target = repa.targets(drawn.repa_target, x1) if repa is not None else None  # (b, N', z) of the clean images
    return Example(x1, x0, t, condition, target)


def training_loss(
    model: nn.Module,
    x1: Tensor,
    *,
    x0: Tensor | None = None,
    t: Tensor | None = None,
    labels: Tensor | None = None,
    timesteps: str | TimestepDistribution = "ltg",
    uncertainty_weight: float = 0.01,
    generator: torch.Generator | None = None,
    label_dropout: bool = True,
    repa_target: Tensor | None = None,
    repa_weight: float = 0.5,
) -> dict[str, Tensor]:
    """``pf.training_loss``: draw an example of ``x1`` and return ``example_loss`` of it.

    A thin wrapper kept for its signature: ``draw_example`` then ``patchforcing.loss.example_loss``.

    Args:
        model: a network from ``create_model``; patch size and head are read from its config.
        x1: (B, C, H, W) clean data.
        x0: (B, C, H, W) noise; drawn from N(0, I) when None.
        t: (B, N) or (B,) times; drawn from ``timesteps`` when None.
        labels: (B,) class labels. While ``model.training``, each label is replaced by the null
            class with probability ``config.class_dropout_prob`` (guidance dropout). None: null class.
        timesteps: a distribution name (``"ltg"``, ``"uniform"`` ...) or a callable from
            ``timestep_distribution``.
        uncertainty_weight: lambda of ``loss = flow + lambda * nll`` (0.01 in the paper).
        generator: the stream of the draws (None: torch's global one).
        label_dropout: False when the caller has already dropped labels.
        repa_target: (B, N', z) frozen-encoder features of the clean images ``x1`` (REPA).
        repa_weight: weight of the REPA term (0.5 in the REPA paper).

    Returns:
        the dict of ``example_loss``.
    """
    cfg = unwrap_model(model).config
    if x0 is not None and x0.shape != x1.shape:
        raise ShapeError(f"x0 has shape {tuple(x0.shape)} but x1 has {tuple(x1.shape)}; they must match")
    dist = timestep_distribution(timesteps) if isinstance(timesteps, str) and t is None else timesteps
    drop = cfg.class_dropout_prob if model.training and label_dropout else 0.0
    example = draw_example(x1, labels, generator, timesteps=dist, num_patches=cfg.num_patches,
                           null_label=cfg.null_label, drop_prob=drop, x0=x0, t=t)
    example.repa_target = repa_target
    return example_loss(model, example, uncertainty_weight=uncertainty_weight, repa_weight=repa_weight)
