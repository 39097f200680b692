"""Timestep distributions for training (docs/method.md §2). Each returns ``t`` of shape (B, N) in [0, 1].

A *timestep distribution* is what training draws ``t`` from; the inference solvers are
*samplers* (``patchforcing.sampling``). Every distribution is a callable
``(batch, num_patches, *, generator=None, device=None, dtype=None) -> Tensor (batch, num_patches)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from patchforcing.errors import ConfigError

TimestepDistribution = Callable[..., Tensor]


def _rand(shape, g, device, dtype) -> Tensor:
    return torch.rand(shape, generator=g, device=device, dtype=dtype)


def _randn(shape, g, device, dtype) -> Tensor:
    return torch.randn(shape, generator=g, device=device, dtype=dtype)


def _resolve(device, dtype):
    return torch.device("cpu") if device is None else torch.device(device), dtype or torch.float32


@dataclass(frozen=True)
class Uniform:
    """One ``t ~ U(0, 1)`` per sample, shared by all patches (standard flow matching)."""

    def __call__(self, batch: int, num_patches: int, *, generator=None, device=None, dtype=None) -> Tensor:
        device, dtype = _resolve(device, dtype)
        return _rand((batch, 1), generator, device, dtype).expand(batch, num_patches).contiguous()


@dataclass(frozen=True)
class LogitNormal:
    """One ``t = sigmoid(loc + scale * n)`` per sample, shared by all patches (SD3)."""

    loc: float = 0.0
    scale: float = 1.0

    def __call__(self, batch: int, num_patches: int, *, generator=None, device=None, dtype=None) -> Tensor:
        device, dtype = _resolve(device, dtype)
        t = torch.sigmoid(self.loc + self.scale * _randn((batch, 1), generator, device, dtype))
        return t.expand(batch, num_patches).contiguous()


@dataclass(frozen=True)
class UniformPatch:
    """Independent ``t ~ U(0, 1)`` per patch (naive Diffusion Forcing; trains badly, docs/method.md §2.3)."""

    def __call__(self, batch: int, num_patches: int, *, generator=None, device=None, dtype=None) -> Tensor:
        device, dtype = _resolve(device, dtype)
        return _rand((batch, num_patches), generator, device, dtype)


def _positive(name: str, value: float, what: str) -> None:
    if not value > 0:
        raise ConfigError(f"{what}: {name} must be positive, got {value}")


@dataclass(frozen=True)
class Gaussian:
    """``m ~ U(0,1)``, ``s = min(min(m, 1-m)/2, std)``, ``t_i = clip(m + s e_i, 0, 1)``."""

    std: float = 0.2

    def __post_init__(self) -> None:
        _positive("std", self.std, "gaussian")

    def __call__(self, batch: int, num_patches: int, *, generator=None, device=None, dtype=None) -> Tensor:
        device, dtype = _resolve(device, dtype)
        m = _rand((batch, 1), generator, device, dtype)
        s = torch.clamp(torch.minimum(m, 1 - m) / 2, max=self.std)
        return (m + s * _randn((batch, num_patches), generator, device, dtype)).clamp(0, 1)


def _truncated_below_max(t_max: Tensor, num_patches: int, std: float, generator, device, dtype) -> Tensor:
    """``t_i = t_max - |e_i| * min(t_max/2, std)``; negatives are replaced by ``u_i * t_max``."""
    s = torch.clamp(t_max / 2, max=std)  # (B, 1)
    t = t_max - _randn((t_max.shape[0], num_patches), generator, device, dtype).abs() * s
    u = _rand(t.shape, generator, device, dtype)
    return torch.where(t < 0, u * t_max, t)


@dataclass(frozen=True)
class TruncatedGaussian:
    """Like ``ltg`` but with ``t_max ~ U(0, 1)``; every ``t_i <= t_max``."""

    std: float = 0.2

    def __post_init__(self) -> None:
        _positive("std", self.std, "truncated-gaussian")

    def __call__(self, batch: int, num_patches: int, *, generator=None, device=None, dtype=None) -> Tensor:
        device, dtype = _resolve(device, dtype)
        t_max = _rand((batch, 1), generator, device, dtype)
        return _truncated_below_max(t_max, num_patches, self.std, generator, device, dtype)


@dataclass(frozen=True)
class LogitNormalTruncatedGaussian:
    """The paper's distribution (docs/method.md §2.7): controls the MAXIMUM information in a sample.

    ``t_max = sigmoid(loc + scale n)`` per sample, then every patch lies at or below ``t_max``.
    Defaults are the ImageNet ones; the paper uses ``loc = 0.5`` for text-to-image.
    """

    std: float = 0.6
    loc: float = 0.7
    scale: float = 1.0

    def __post_init__(self) -> None:
        _positive("std", self.std, "ltg")

    def __call__(self, batch: int, num_patches: int, *, generator=None, device=None, dtype=None) -> Tensor:
        device, dtype = _resolve(device, dtype)
        t_max = torch.sigmoid(self.loc + self.scale * _randn((batch, 1), generator, device, dtype))
        return _truncated_below_max(t_max, num_patches, self.std, generator, device, dtype)


@dataclass(frozen=True)
class SpatialReasoning:
    """SRM (Wewer et al. 2025): ``m ~ U(0,1)``, total ``L = m N`` split recursively by Beta draws,
    then each row shuffled by an independent random permutation. Row means are uniform."""

    sharpness: float = 1.0

    def __post_init__(self) -> None:
        _positive("sharpness", self.sharpness, "srm")

    def __call__(self, batch: int, num_patches: int, *, generator=None, device=None, dtype=None) -> Tensor:
        device, dtype = _resolve(device, dtype)
        total = _rand((batch,), generator, device, dtype) * num_patches  # L = m * N
        parts = self._split(total, num_patches, generator)
        t = torch.stack(parts, dim=1)  # (B, N)
        perm = _rand(t.shape, generator, device, torch.float32).argsort(dim=1)
        return t.gather(1, perm)

    def _split(self, total: Tensor, d: int, generator) -> list[Tensor]:
        if d == 1:
            return [total]
        h = d // 2
        hi1 = total.clamp(max=h)
        lo1 = (total - total.clamp(max=d - h)).clamp(min=0)
        a = (d - 1 - d % 2) ** 1.05 * self.sharpness
        r = _beta(a, total.shape[0], generator, total.device, total.dtype)
        first = lo1 + (hi1 - lo1) * r
        return self._split(first, h, generator) + self._split(total - first, d - h, generator)


def _beta(a: float, n: int, generator, device, dtype) -> Tensor:
    """Beta(a, a) draws via two Gamma variables; uses ``generator`` when one is given."""
    conc = torch.full((2, n), float(a), device=device, dtype=torch.float64)
    if generator is None:
        g = torch._standard_gamma(conc)
    else:  # torch's gamma sampler takes no generator: draw through the Marsaglia-Tsang method
        g = _gamma_marsaglia(conc, generator)
    return (g[0] / (g[0] + g[1])).to(dtype)


def _gamma_marsaglia(alpha: Tensor, generator) -> Tensor:
    """Gamma(alpha, 1) by Marsaglia-Tsang; alpha < 1 is boosted: G(a) = G(a + 1) * U^(1/a)."""
    small = alpha < 1
    if bool(small.any()):
        boosted = _gamma_marsaglia(torch.where(small, alpha + 1, alpha), generator)
        u = torch.rand(alpha.shape, generator=generator, device=alpha.device, dtype=alpha.dtype)
        return torch.where(small, boosted * u ** (1 / alpha), boosted)
    d = alpha - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(alpha)
    todo = torch.ones_like(alpha, dtype=torch.bool)
    while bool(todo.any()):
        x = torch.randn(alpha.shape, generator=generator, device=alpha.device, dtype=alpha.dtype)
        v = (1 + c * x) ** 3
        u = torch.rand(alpha.shape, generator=generator, device=alpha.device, dtype=alpha.dtype)
        ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp(min=1e-30))) & todo
        out = torch.where(ok, d * v, out)
        todo = todo & ~ok
    return out


DISTRIBUTIONS: dict[str, type] = {
    "uniform": Uniform,
    "logit-normal": LogitNormal,
    "uniform-patch": UniformPatch,
    "srm": SpatialReasoning,
    "gaussian": Gaussian,
    "truncated-gaussian": TruncatedGaussian,
    "ltg": LogitNormalTruncatedGaussian,
}

PER_SAMPLE = ("uniform", "logit-normal")  # one time per sample: the classical global-time training


def timestep_distribution(name: str, **params) -> TimestepDistribution:
    """Build a timestep distribution by name (docs/method.md §2), e.g. ``timestep_distribution("ltg", loc=0.5)``."""
    if name not in DISTRIBUTIONS:
        raise ConfigError(f"unknown timestep distribution {name!r}; choose one of: {', '.join(DISTRIBUTIONS)}")
    cls = DISTRIBUTIONS[name]
    allowed = set(inspect.signature(cls).parameters)
    bad = sorted(set(params) - allowed)
    if bad:
        raise ConfigError(f"timestep distribution {name!r} takes {sorted(allowed) or 'no parameters'}, not {bad}")
    return cls(**params)
