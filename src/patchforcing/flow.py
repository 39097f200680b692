"""The flow: noising path, patch-time helpers, training objective and validation loss.

Conventions (stated once, used everywhere in this package; SPEC 1):
    * ``t = 0`` is pure noise, ``t = 1`` is clean data.
    * ``x_t = t * x1 + (1 - t) * x0`` with data ``x1`` and noise ``x0 ~ N(0, I)``.
    * Velocity target ``u = x1 - x0``.
    * Patch-level time ``t`` has shape (B, N), patches numbered row-major over the
      ``H/p x W/p`` grid (patch (i, j) is token ``i * w + j``); a global time (B,) is the
      special case where all patches share one value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchforcing.errors import ShapeError
from patchforcing.models import unwrap_model
from patchforcing.timesteps import TimestepDistribution, timestep_distribution

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -15.0, 10.0  # clamp of the predicted sigma (SPEC 4)


def patch_time_to_pixels(t: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """Spread per-patch values (B, N) (or per-sample (B,)) to a pixel map (B, 1, H, W)."""
    b = t.shape[0]
    if t.ndim == 1:
        return t.view(b, 1, 1, 1).expand(b, 1, height, width)
    gh, gw = height // patch_size, width // patch_size
    if t.shape[1] != gh * gw:
        raise ShapeError(f"t has {t.shape[1]} patches; a {height}x{width} input with patch size {patch_size} has {gh * gw}")
    grid = t.view(b, 1, gh, gw)
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def pixels_to_patch_mean(m: Tensor, patch_size: int) -> Tensor:
    """Average a pixel map (B, 1, H, W) over each p x p patch: (B, N) row-major."""
    return F.avg_pool2d(m, kernel_size=patch_size, stride=patch_size).flatten(1)


def interpolate(x0: Tensor, x1: Tensor, t: Tensor, patch_size: int) -> Tensor:
    """``x_t = t x1 + (1 - t) x0`` with every pixel of patch n at time ``t[:, n]``."""
    tp = patch_time_to_pixels(t, patch_size, x1.shape[-2], x1.shape[-1]).to(x1.dtype)
    return tp * x1 + (1 - tp) * x0


def gaussian_nll(target: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Per-element Gaussian NLL with a clamped sigma (SPEC 4); ``logvar`` broadcasts over channels."""
    sigma = torch.exp(logvar / 2).clamp(math.exp(LOG_SIGMA_MIN), math.exp(LOG_SIGMA_MAX))
    return 0.5 * (math.log(2 * math.pi) + 2 * torch.log(sigma) + (target - mean) ** 2 / sigma**2)


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
    """Patch Forcing objective (SPEC 4): flow matching plus the difficulty head's Gaussian NLL.

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
        label_dropout: False when the caller has already dropped labels (the trainer draws the
            dropout for the global batch of a step so that every process count agrees).
        repa_target: (B, N', z) frozen-encoder features of the CLEAN images ``x1`` (REPA, SPEC 6);
            needs a network with a projector (``repa_dim = z``). When ``N' != N`` the target is
            resized bilinearly on its square token grid to the network's grid.
        repa_weight: weight of the REPA term (0.5 in the REPA paper).

    Returns:
        dict with scalar tensors ``loss``, ``flow_loss``, ``uncertainty_loss`` (zero without the head)
        and, with ``repa_target``, ``repa_loss``:
        ``loss = flow + uncertainty_weight * nll + repa_weight * repa_loss``.
    """
    cfg = unwrap_model(model).config
    b = x1.shape[0]
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    if x0.shape != x1.shape:
        raise ShapeError(f"x0 has shape {tuple(x0.shape)} but x1 has {tuple(x1.shape)}; they must match")
    if t is None:
        dist = timestep_distribution(timesteps) if isinstance(timesteps, str) else timesteps
        t = dist(b, cfg.num_patches, generator=generator, device=x1.device, dtype=x1.dtype)
    labels = _drop_labels(labels, cfg, b, x1.device, generator, active=model.training and label_dropout)

    xt = interpolate(x0, x1, t, cfg.patch_size)
    target = x1 - x0
    if repa_target is None:
        velocity, logvar = model(xt, t, labels)
    else:
        out = model(xt, t, labels, return_features=True)
        velocity, logvar = out
    velocity, target = _at_least_fp32(velocity), _at_least_fp32(target)
    flow = (velocity - target).pow(2).mean()
    if logvar is None:
        losses = {"loss": flow, "flow_loss": flow, "uncertainty_loss": flow.new_zeros(())}
    else:
        nll = gaussian_nll(target, velocity.detach(), _at_least_fp32(logvar)).mean()
        losses = {"loss": flow + uncertainty_weight * nll, "flow_loss": flow, "uncertainty_loss": nll}
    if repa_target is not None:
        repa = repa_loss(_at_least_fp32(out.features), repa_target)
        losses.update(loss=losses["loss"] + repa_weight * repa, repa_loss=repa)
    return losses


def repa_loss(features: Tensor, target: Tensor) -> Tensor:
    """REPA alignment (Yu et al. 2024): ``-mean over (b, n) of cos(features[b, n], target[b, n])``.

    Args:
        features: (B, N, z) projected network tokens.
        target: (B, N', z) frozen encoder features of the clean images; with ``N' != N`` both
            token counts must be squares and the target is resized bilinearly on its 2-D grid
            (``align_corners=False``) to the network's ``sqrt(N) x sqrt(N)`` grid.
    """
    b, n, z = features.shape
    if target.ndim != 3 or target.shape[0] != b or target.shape[2] != z:
        raise ShapeError(
            f"REPA target has shape {tuple(target.shape)}; expected ({b}, N', {z}): one row of encoder features "
            "per image, as wide as the network's repa_dim"
        )
    target = resize_token_grid(target.to(features.dtype), n)
    return -F.cosine_similarity(features, target, dim=-1).mean()


def resize_token_grid(tokens: Tensor, n: int) -> Tensor:
    """Resize (B, N', z) row-major tokens of a square grid to (B, n, z), bilinearly."""
    b, m, z = tokens.shape
    if m == n:
        return tokens
    side, new = math.isqrt(m), math.isqrt(n)
    if side * side != m or new * new != n:
        raise ShapeError(f"cannot resize {m} encoder tokens to the network's {n}: both must form square grids")
    grid = tokens.transpose(1, 2).reshape(b, z, side, side)  # (B, z, h', w')
    grid = F.interpolate(grid, size=(new, new), mode="bilinear", align_corners=False)
    return grid.reshape(b, z, n).transpose(1, 2)  # (B, n, z)


def _at_least_fp32(x: Tensor) -> Tensor:
    """Losses are reduced in float32 under bf16/fp16 autocast, in float64 when the weights are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _drop_labels(labels, cfg, b, device, generator, *, active: bool) -> Tensor | None:
    if labels is None:
        return None
    p = cfg.class_dropout_prob
    if not active or p <= 0:
        return labels
    drop = torch.rand((b,), generator=generator, device=device) < p
    return torch.where(drop, torch.full_like(labels, cfg.null_label), labels)


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    x1: Tensor,
    *,
    x0: Tensor | None = None,
    labels: Tensor | None = None,
    num_segments: int = 8,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Flow loss at ``num_segments`` global times ``t = (k + 0.5) / K`` with shared noise (SPEC 4).

    Returns:
        (mean over segments, per-segment losses (K,)).
    """
    if num_segments < 1:
        raise ValueError("num_segments must be at least 1")
    cfg = unwrap_model(model).config
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    target = x1 - x0
    losses = []
    for k in range(num_segments):
        t = torch.full((x1.shape[0], cfg.num_patches), (k + 0.5) / num_segments, device=x1.device, dtype=x1.dtype)
        velocity, _ = model(interpolate(x0, x1, t, cfg.patch_size), t, labels)
        losses.append((velocity - target).pow(2).mean())
    per_segment = torch.stack(losses)
    return per_segment.mean(), per_segment
