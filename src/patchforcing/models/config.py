"""Network configuration (a frozen dataclass) and the preset registry.

``patch_size``, channels and resolution live here and only here: the loss and the samplers read
them from the network (``model.config``), never from a second setting that could disagree.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from patchforcing.errors import ConfigError

# Size limits of every network config, far above the paper's largest network (XL: depth 28, width
# 1152, 256 tokens; the 1.2B text network: width 1536). A config beyond them (a damaged or hostile
# file) is refused before any network, even one on the meta device, or position table is built.
MAX_TOKENS = 65536  # patches per image: a 256 x 256 grid
MAX_DEPTH = 512
MAX_WIDTH = 16384  # hidden sizes, head and projector widths
MAX_MLP_WIDTH = 4 * MAX_WIDTH
# Integer fields of ModelConfig: (smallest, largest) valid value.
_INT_FIELDS = {"input_size": (1, 8192), "in_channels": (1, 4096), "patch_size": (1, 256), "hidden_size": (1, MAX_WIDTH),
               "depth": (1, MAX_DEPTH), "num_heads": (1, MAX_WIDTH), "num_classes": (0, 1_000_000),
               "repa_dim": (0, MAX_WIDTH), "repa_depth": (0, MAX_DEPTH), "repa_projector_dim": (1, MAX_WIDTH)}


class Kind(str, enum.Enum):
    """What the network conditions on (docs/method.md §3)."""

    PATCH_FORCING = "patch-forcing"  # per-patch time (B, N) + difficulty head (log-variance channel)
    SIT = "sit"  # global-time baseline of the same layout, no head


class NetworkConfig:
    """What every network config shares (the class-conditional ``ModelConfig`` and ``T2IConfig``):
    the token grid and the difficulty head the loss and the samplers read, and the JSON form.

    Subclasses are frozen dataclasses with the fields ``kind``, ``input_size`` and ``patch_size``;
    ``_NAME`` words their error messages.
    """

    _NAME = "model"
    is_text: ClassVar[bool] = False  # True for networks conditioned on text-encoder states (``T2IConfig``)

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def has_difficulty_head(self) -> bool:
        return self.kind is Kind.PATCH_FORCING

    def _check_sizes(self, limits: dict[str, tuple[int, int]]) -> None:
        """Each field of ``limits`` is an integer in its ``(smallest, largest)`` range, and an image is
        at most ``MAX_TOKENS`` patches: checked before anything is built from the config."""
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{self._NAME} {name} must be an integer in [{low}, {high}], got {value!r}")
        tokens = (self.input_size // self.patch_size) ** 2
        if tokens > MAX_TOKENS:
            raise ConfigError(f"{self._NAME} input_size {self.input_size} with patch_size {self.patch_size} makes {tokens} "
                              f"tokens per image, above the limit of {MAX_TOKENS} (a 256 x 256 grid); choose a larger "
                              "patch_size or a smaller input_size")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls._NAME} config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class ModelConfig(NetworkConfig):
    """Everything that decides a network's shape. Written as JSON beside every checkpoint."""

    is_text: ClassVar[bool] = False  # conditioned on class labels
    kind: Kind = Kind.PATCH_FORCING
    input_size: int = 32  # H == W of the input (pixels or latent cells)
    in_channels: int = 4
    patch_size: int = 2
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # 0: unconditional (only the null row exists)
    class_dropout_prob: float = 0.1  # > 0 adds the null-class row used for guidance
    learn_sigma: bool = False  # legacy DiT/SiT option: extra C output channels, discarded
    # REPA (docs/method.md §7.1): a token-wise projector D -> P -> P -> z on the hidden tokens
    # right after block ``repa_depth`` (1-based); ``repa_dim = 0`` means no projector.
    repa_dim: int = 0  # z: the frozen encoder's feature width (768 for DINOv2-B)
    repa_depth: int = 0  # the reference's encoder_depth (8 for XL, 4 for B in the REPA paper)
    repa_projector_dim: int = 2048  # P, the REPA paper's projector width

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", Kind(self.kind))
        except ValueError:
            raise ConfigError(f"unknown network kind {self.kind!r}; choose one of: {', '.join(k.value for k in Kind)}") from None
        self._check_values()
        if self.input_size % self.patch_size:
            raise ConfigError(
                f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}; "
                "choose a patch size that divides the resolution"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ConfigError(f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos position embedding)")
        if self.learn_sigma and self.kind is Kind.PATCH_FORCING:
            raise ConfigError("learn_sigma cannot be combined with the difficulty head (kind='patch-forcing')")
        if self.repa_dim and not 1 <= self.repa_depth <= self.depth:
            raise ConfigError(
                f"repa_depth {self.repa_depth} must lie in [1, depth={self.depth}]: the projector reads the tokens "
                "after that block; choose a smaller repa_depth"
            )
        if self.repa_depth and not self.repa_dim:
            raise ConfigError(f"repa_depth={self.repa_depth} without repa_dim: set repa_dim to the encoder's feature width")

    def _check_values(self) -> None:
        """Every field has its type and range: a network is never built from a config that cannot work."""
        self._check_sizes(_INT_FIELDS)
        for name in ("mlp_ratio", "class_dropout_prob"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise ConfigError(f"model {name} must be a number, got {getattr(self, name)!r}")
        if not (math.isfinite(self.mlp_ratio) and 1 <= int(self.hidden_size * self.mlp_ratio) <= MAX_MLP_WIDTH):
            raise ConfigError(f"model mlp_ratio must give an MLP of 1 to {MAX_MLP_WIDTH} units, got {self.mlp_ratio!r} "
                              f"(hidden_size {self.hidden_size}); the presets use 4.0")
        if not 0 <= self.class_dropout_prob <= 1:  # 1: every label dropped (an unconditional run; tests use it)
            raise ConfigError(f"model class_dropout_prob must be a probability in [0, 1], got {self.class_dropout_prob!r}; "
                              "the paper uses 0.1")
        if not isinstance(self.learn_sigma, bool):
            raise ConfigError(f"model learn_sigma must be true or false, got {self.learn_sigma!r}")

    # --- derived quantities (grid_size, num_patches, has_difficulty_head: NetworkConfig) -----------
    @property
    def out_channels(self) -> int:
        """Channels of the final linear layer (velocity + head, or the legacy sigma)."""
        if self.learn_sigma:
            return 2 * self.in_channels
        return self.in_channels + (1 if self.has_difficulty_head else 0)

    @property
    def has_projector(self) -> bool:
        """Whether the network carries a REPA projector (``repa_dim > 0``)."""
        return self.repa_dim > 0

    @property
    def has_null_class(self) -> bool:
        return self.class_dropout_prob > 0 or self.num_classes == 0

    @property
    def null_label(self) -> int | None:
        """Index of the null (unconditional) class, or None when the table has no such row."""
        return self.num_classes if self.has_null_class else None


# Sizes of docs/method.md §3.6 (depth, width, heads); XS is this project's CPU size.
_SIZES = {
    "XS": dict(depth=4, hidden_size=128, num_heads=4),
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
_PATCHES = (2, 4, 8)
# REPA's default alignment depth per size (REPA paper: 4 for B, 8 for L and XL; ours for XS and S).
REPA_DEPTHS = {"XS": 2, "S": 4, "B": 4, "L": 8, "XL": 8}


def _build_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for prefix, kind in (("PF", Kind.PATCH_FORCING), ("SiT", Kind.SIT)):
        for size, dims in _SIZES.items():
            for p in _PATCHES:
                presets[f"{prefix}-{size}/{p}"] = dict(kind=kind, patch_size=p, **dims)
    # XS is for CPU work on small images: 16x16, 1 channel, 10 classes (the bundled digits).
    for name in [n for n in presets if "-XS/" in n]:
        presets[name].update(input_size=16, in_channels=1, num_classes=10)
    return presets


PRESETS: dict[str, dict[str, Any]] = _build_presets()


def preset_config(preset: str, **overrides: Any) -> ModelConfig:
    """Resolve a preset name (e.g. ``"PF-B/2"``) plus overrides into a ModelConfig.

    With ``repa_dim`` set and no ``repa_depth``, the REPA depth of the preset's size is used
    (``REPA_DEPTHS``: 8 for L and XL, 4 for S and B, 2 for XS).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    fields = dict(PRESETS[preset])
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown model option(s) {bad}; valid overrides: {sorted(known - {'kind'})}")
    fields.update(overrides)
    if fields.get("repa_dim") and "repa_depth" not in overrides:
        fields["repa_depth"] = min(REPA_DEPTHS[preset.split("-", 1)[1].split("/")[0]], fields["depth"])
    return ModelConfig(**fields)
