"""Sampling around what is known: a ``Region`` of an input image that every sampler respects
(inpainting, outpainting and per-patch strength editing; ``docs/inpainting.md``).

Every patch of a Patch Forcing network has its own time (``docs/method.md`` §1), so a known part
of an image can enter each network evaluation with its true content, noised along the path to a
time of our choosing, while the other patches are integrated by any sampler of the registry. This
module is the one place where that happens: ``RegionGuide`` wraps the guided evaluation
``(x, t) -> Guided`` that samplers call (``sampling/guidance.py``), so no sampler is changed.

A region holds the input ``image`` (B, C, H, W) in the network's space, the known patches
``known`` (B, N) and the start time of every other patch ``start`` (B, N) (``1 - strength``). In
each evaluation, with ``t`` the time the sampler gives a patch (B, N) or (B,):

* a generated patch starting at ``s`` is at the network time ``tau = s + (1 - s) t`` (``s = 0``:
  ``tau = t``, plain sampling); its velocity is returned times ``1 - s = d tau / d t``, so a
  sampler's step ``x += (t_{k+1} - t_k) v`` moves it by ``(tau_{k+1} - tau_k) v`` (the same
  integrator on the patch's own, shorter interval ``[s, 1]``). It starts from the input noised to
  ``s``: ``x = s image + (1 - s) x0``.
* a known patch enters with the input noised to the time of the region's ``KnownMode`` with the
  sampler's starting noise ``x0`` (one fixed noise per image): ``x = tau_k image + (1 - tau_k) x0``
  with ``tau_k = tau`` (``same``, RePaint-style replacement), ``min(rho tau, 1)`` (``ahead``, the
  look-ahead context time, docs/method.md §5.5) or ``1`` (``clean``). Its returned velocity is that of
  the path, ``image - x0``, so the sampler's own state of the patch follows ``t image + (1 - t) x0``
  (what a recorded trajectory shows).

Difficulty-aware samplers rank only the generated patches that move (``Region.free``, the
``among`` of ``sampling/masks.py``). After the last step the known patches, and the patches that
start at ``t = 1`` (strength 0), are set to the input exactly (``Region.composite``). A global-time
(SiT) network takes one time per image: it accepts ``same`` only, and one start time per image.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor

from patchforcing.errors import ConfigError, ShapeError
from patchforcing.flow import patch_time_to_pixels
from patchforcing.sampling.guidance import Guided
from patchforcing.sampling.registry import network_takes_per_patch_time

AHEAD_RATIO = 1.4  # rho of the ``ahead`` mode when the plan's sampler has no context_ratio (look-ahead's default)


class KnownMode(enum.Enum):
    """The time at which known patches enter every network evaluation."""

    SAME = "same"  # the patch's current time: RePaint-style replacement (any network)
    AHEAD = "ahead"  # min(rho t, 1): where look-ahead's context runs (per-patch networks)
    CLEAN = "clean"  # t = 1: the content itself (per-patch networks)

    @classmethod
    def parse(cls, value: KnownMode | str) -> KnownMode:
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"unknown inpainting mode {value!r}; choose one of: {', '.join(m.value for m in cls)}") from None


MODES = tuple(m.value for m in KnownMode)


@dataclass(frozen=True)
class Region:
    """What is kept of an input image while sampling (built by ``pf.inpaint`` and ``pf.edit``).

    Attributes:
        image: (B, C, H, W) the input in the network's space.
        known: (B, N) bool, row-major patches that keep the input.
        patch_size: the network's patch size p (a patch is p x p pixels of ``image``).
        start: (B, N) the start time ``1 - strength`` of every patch in [0, 1] (known patches: ignored),
            or None: every generated patch starts from pure noise at ``t = 0``.
        mode: when known patches enter the evaluations (``KnownMode``).
        context_ratio: rho of ``ahead`` (``min(rho t, 1)``).
    """

    image: Tensor
    known: Tensor
    patch_size: int
    start: Tensor | None = None
    mode: KnownMode = KnownMode.SAME
    context_ratio: float = AHEAD_RATIO

    @property
    def active(self) -> bool:
        """False when the region changes nothing: no known patch and every patch starts at 0
        (``sample`` then runs exactly as without it)."""
        return bool(self.known.any()) or self.start is not None

    @property
    def free(self) -> Tensor:
        """(B, N) bool: the patches a difficulty-aware sampler may rank (generated, start below 1)."""
        moving = ~self.known
        return moving if self.start is None else moving & (self.start < 1)

    def check(self, model, noise: Tensor) -> None:
        """The region fits the network and the noise batch; a global-time network takes ``same`` and one start per image."""
        cfg = model.config
        b = noise.shape[0]
        if tuple(self.image.shape) != tuple(noise.shape):
            raise ShapeError(f"the region's image has shape {tuple(self.image.shape)} but the noise {tuple(noise.shape)}; "
                             "give one image per noise sample")
        for name, value in (("known", self.known), ("start", self.start)):
            if value is not None and tuple(value.shape) != (b, cfg.num_patches):
                raise ShapeError(f"the region's {name} has shape {tuple(value.shape)}; expected ({b}, {cfg.num_patches}), "
                                 "one entry per patch")
        if not network_takes_per_patch_time(cfg):
            if self.mode is not KnownMode.SAME:
                raise ConfigError(f"inpainting mode {self.mode.value!r} sets known patches to another time than the rest, "
                                  "but a global-time (SiT) network takes one time per image: use mode 'same'")
            if self.start is not None and not bool((self.start == self.start[:, :1]).all()):
                raise ConfigError("a global-time (SiT) network gives every patch of an image the same time, so all patches "
                                  "must start together: pass one strength (a number), or use a Patch Forcing network")

    # --- times and states -------------------------------------------------------------------------
    def times(self, t: Tensor) -> Tensor:
        """The network time ``tau = s + (1 - s) t`` of the sampler's time ``t``: (B, N), or (B,) for
        one time per image (then every patch of an image starts together)."""
        if self.start is None:
            return t
        s = (self.start if t.ndim == 2 else self.start[:, 0]).to(t)
        return s + (1 - s) * t

    def known_time(self, tau: Tensor) -> Tensor:
        """The time known patches enter at, for the current network time ``tau``."""
        if self.mode is KnownMode.SAME:
            return tau
        if self.mode is KnownMode.AHEAD:
            return torch.clamp(self.context_ratio * tau, max=1.0)
        return torch.ones_like(tau)

    def network_times(self, t: Tensor) -> Tensor:
        """The times the network sees for the sampler's times ``t`` (B, N) or (B,): known patches at their mode's time."""
        tau = self.times(t)
        if t.ndim == 1 or self.mode is KnownMode.SAME:
            return tau
        return torch.where(self.known.to(t.device), self.known_time(tau), tau)

    def network_state(self, x: Tensor, noise: Tensor, t: Tensor, known_px: Tensor | None = None,
                      path: Tensor | None = None) -> Tensor:
        """What the network sees for the sampler's state ``x`` (B, C, H, W) at its times ``t``: the
        known patches replaced by the input noised to their time with the fixed noise,
        ``x0 + tau (x1 - x0)``. ``known_px`` (the known pixels) and ``path`` (``x1 - x0``) may be
        given precomputed (``RegionGuide`` does, once per run)."""
        known_px = self.pixels(self.known, x) if known_px is None else known_px
        if self.mode is KnownMode.CLEAN:
            return torch.where(known_px, self.image.to(x), x)
        path = self.image.to(x) - noise if path is None else path
        tk = self.known_time(self.times(t))  # (B, N) or (B,)
        if tk.ndim == 1:
            tk_px = tk.view(-1, 1, 1, 1)
        else:  # (B, N) -> (B, 1, H, W): one copy
            b, (h, w), p = x.shape[0], x.shape[-2:], self.patch_size
            tk_px = tk.view(b, 1, h // p, 1, w // p, 1).expand(b, 1, h // p, p, w // p, p).reshape(b, 1, h, w)
        return torch.where(known_px, torch.addcmul(noise, tk_px.to(x.dtype), path), x)

    def start_state(self, noise: Tensor) -> Tensor:
        """The sampler's starting point: the noise, and the input noised to its start time where ``start > 0``."""
        if self.start is None:
            return noise
        s = self.pixels(self.start.masked_fill(self.known, 0.0), noise)
        return s * self.image.to(noise) + (1 - s) * noise

    def composite(self, x: Tensor) -> Tensor:
        """The known patches (and those that start at ``t = 1``) set to the input exactly."""
        keep = self.known if self.start is None else self.known | (self.start >= 1)
        return torch.where(self.pixels(keep, x), self.image.to(x), x)

    def pixels(self, patches: Tensor, like: Tensor) -> Tensor:
        """(B, N) per-patch values -> (B, 1, H, W) on ``like``'s device (cast to its dtype unless boolean)."""
        out = patch_time_to_pixels(patches.to(like.device), self.patch_size, like.shape[-2], like.shape[-1])
        return out if out.dtype == torch.bool else out.to(like.dtype)


class RegionGuide:
    """A guided evaluation that keeps a ``Region``: the one place where known patches and start
    times enter a network evaluation (module docstring). NFE counts and guidance steps pass through."""

    def __init__(self, guide, region: Region, noise: Tensor, model_config):
        self._guide = guide
        self.region = region
        self.noise = noise  # (B, C, H, W) the fixed noise x0 of every image
        self.per_patch = network_takes_per_patch_time(model_config)
        self.num_patches = model_config.num_patches
        self._known = region.pixels(region.known, noise)  # (B, 1, H, W) bool
        self._path_v = region.image.to(noise) - noise  # the velocity of the known patches' path
        self._scale = None if region.start is None else region.pixels(1 - region.start, noise)  # d tau / d t

    @property
    def nfe(self) -> int:
        return self._guide.nfe

    @property
    def guide_nfe(self) -> int:
        return self._guide.guide_nfe

    @property
    def interval(self):
        return self._guide.interval

    def begin_step(self, t_k: float) -> None:
        self._guide.begin_step(t_k)

    def __call__(self, x: Tensor, t: Tensor) -> Guided:
        if self.per_patch and t.ndim == 1:  # a global-time sampler on a per-patch network
            t = t[:, None].expand(x.shape[0], self.num_patches)
        x_in = self.region.network_state(x, self.noise, t, self._known, self._path_v)
        out = self._guide(x_in, self.region.network_times(t))
        v = self._velocity(out.velocity)
        return Guided(v, out.logvar, v if out.cond_velocity is out.velocity else self._velocity(out.cond_velocity))

    def _velocity(self, v: Tensor) -> Tensor:
        """The network's velocity in the sampler's time: times ``1 - start``; the path's on known patches."""
        v = v if self._scale is None else v * self._scale
        return torch.where(self._known, self._path_v, v)


__all__ = ["AHEAD_RATIO", "MODES", "KnownMode", "Region", "RegionGuide"]
