"""The text-to-image Patch Forcing transformer (docs/method.md §8), with its config and presets.

``model(x (B, C, H, W), t (B, N) or (B,), y (B, L, D_in)) -> ModelOutput(velocity, logvar)``,
``y`` being the states of a frozen text encoder. Time enters only through per-token AdaRMSNorm
gains; the text enters through cross-attention to a refined copy of ``y``. The quirks of the
reference (docs/method.md §8.10) are reproduced: unrotated text keys, no padding mask unless one is
passed (an extension), cosine attention with learned temperatures, half-rotated heads.

The refined text and each block's text keys depend on ``y`` only. Under ``torch.no_grad`` the
network keeps them for the last ``y`` it saw (compared by value, so guidance's re-concatenated
``[null; y]`` batch hits the cache) and reuses them over the sampling steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError, ShapeError
from patchforcing.models.config import MAX_DEPTH, MAX_WIDTH, Kind, NetworkConfig
from patchforcing.models.t2i_layers import ImageBlock, Rotation, TextBlock, TimestepEmbedder, TokenMerge2D, TokenSplitLast2D, image_positions
from patchforcing.models.transformer import ModelOutput, Network

ARCHITECTURE = "t2i"
REFERENCE_TARGET = "patch_flow.models.pf_transformer_t2i.PatchForcingTransformerT2I"
# The reference's constructor arguments; ``in_dim`` is our ``in_channels``.
_REFERENCE_PARAMS = ("in_dim", "patch_size", "depth", "hidden_dim", "head_dim", "mapping_dim", "mapping_depth",
                     "txt_in_dim", "txt_refiner_dim", "txt_refiner_head_dim", "txt_refiner_depth")
_REFERENCE_IGNORED = ("compile",)
MAX_TEXT_TOKENS = 4096  # text_length: padded caption tokens, far above any encoder's (the paper pads to 256)
# Integer fields of T2IConfig: (smallest, largest) valid value (limits as for ModelConfig).
_INT_FIELDS = {"input_size": (1, 8192), "in_channels": (1, 4096), "patch_size": (1, 256), "hidden_dim": (1, MAX_WIDTH),
               "depth": (1, MAX_DEPTH), "head_dim": (1, MAX_WIDTH), "mapping_dim": (1, MAX_WIDTH), "mapping_depth": (0, 64),
               "txt_in_dim": (1, 65536), "txt_refiner_dim": (1, MAX_WIDTH), "txt_refiner_head_dim": (1, MAX_WIDTH),
               "txt_refiner_depth": (0, 64), "text_length": (1, MAX_TEXT_TOKENS)}


@dataclass(frozen=True)
class T2IConfig(NetworkConfig):
    """Everything that decides the shape of a text-to-image network (names as in the reference).

    ``text_encoder`` and ``text_length`` name the encoder (a preset of ``patchforcing.text`` or a
    Hugging Face name/path) and its padded token count; they are recorded with every checkpoint.
    """

    _NAME = "text-to-image"  # in error messages

    kind: Kind = Kind.PATCH_FORCING  # "sit": the same network trained with one global time
    input_size: int = 32  # H == W of the latent
    in_channels: int = 32  # the reference's in_dim
    patch_size: int = 2
    hidden_dim: int = 1536
    depth: int = 28
    head_dim: int = 96
    mapping_dim: int = 384
    mapping_depth: int = 2
    txt_in_dim: int = 2048
    txt_refiner_dim: int = 1536
    txt_refiner_head_dim: int = 128
    txt_refiner_depth: int = 2
    text_encoder: str = "qwen3-vl-embedding-2b"
    text_length: int = 256

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", Kind(self.kind))
        except ValueError:
            raise ConfigError(f"unknown network kind {self.kind!r}; choose one of: {', '.join(k.value for k in Kind)}") from None
        self._check_sizes(_INT_FIELDS)
        if not isinstance(self.text_encoder, str) or not self.text_encoder:
            raise ConfigError(f"text-to-image text_encoder must be a name, Hub id or folder, got {self.text_encoder!r}")
        checks = [
            (self.input_size % self.patch_size == 0, f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}"),
            (self.hidden_dim % self.head_dim == 0, f"hidden_dim {self.hidden_dim} is not divisible by head_dim {self.head_dim}"),
            (self.head_dim % 8 == 0, f"head_dim {self.head_dim} must be a multiple of 8 (2-D RoPE)"),
            (self.txt_refiner_dim % self.txt_refiner_head_dim == 0,
             f"txt_refiner_dim {self.txt_refiner_dim} is not divisible by txt_refiner_head_dim {self.txt_refiner_head_dim}"),
            (self.txt_refiner_head_dim % 4 == 0, f"txt_refiner_head_dim {self.txt_refiner_head_dim} must be a multiple of 4 (1-D RoPE)"),
            (self.mapping_dim % 2 == 0, f"mapping_dim {self.mapping_dim} must be even (Fourier features)"),
            (min(self.depth, self.mapping_depth + 1, self.txt_refiner_depth + 1, self.text_length, self.in_channels) > 0,
             "depth, in_channels and text_length must be positive; mapping_depth and txt_refiner_depth non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + "; choose sizes that fit (see the T2I presets)")

    # --- what the loss, samplers and tools read (grid_size, num_patches, has_difficulty_head: NetworkConfig)
    @property
    def num_heads(self) -> int:
        return self.hidden_dim // self.head_dim

    @property
    def hidden_size(self) -> int:
        return self.hidden_dim

    @property
    def out_channels(self) -> int:
        return self.in_channels + 1  # the reference always has the logvar channel

    is_text: ClassVar[bool] = True  # conditioned on text-encoder states, not class labels
    num_classes = 0
    has_null_class = False
    null_label = None
    class_dropout_prob = 0.0

    # --- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"architecture": ARCHITECTURE, **super().to_dict()}

    @classmethod
    def from_reference(cls, params: dict[str, Any]) -> T2IConfig:
        """The config of a reference checkpoint's ``{"target": REFERENCE_TARGET, "params": ...}``.

        The reference network is resolution-free; ``input_size`` defaults to 32 (256 px with an 8x
        autoencoder) and the text encoder to the paper's (docs/method.md §9.1). Missing params take the
        values of the paper's 1.2B network.
        """
        unknown = sorted(set(params) - set(_REFERENCE_PARAMS) - set(_REFERENCE_IGNORED))
        if unknown:
            raise ConfigError(f"text-to-image params {unknown} are not understood; known: {list(_REFERENCE_PARAMS)}")
        fields = {("in_channels" if k == "in_dim" else k): v for k, v in params.items() if k in _REFERENCE_PARAMS}
        return cls(**fields)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> T2IConfig:
        return super().from_dict({k: v for k, v in d.items() if k != "architecture"})


# Presets. 1.2B: the paper's network (docs/method.md §8.1, in_channels 32 for FLUX.2 latents).
# XS: this project's CPU size for 16x16 one-channel digits with the bundled byte-level encoder.
T2I_PRESETS: dict[str, dict[str, Any]] = {
    "T2I-XS/2": dict(input_size=16, in_channels=1, hidden_dim=128, depth=4, head_dim=32, mapping_dim=64, mapping_depth=1,
                     txt_in_dim=64, txt_refiner_dim=64, txt_refiner_head_dim=32, txt_refiner_depth=1,
                     text_encoder="byte-toy", text_length=32),
    "T2I-B/2": dict(input_size=32, in_channels=4, hidden_dim=768, depth=12, head_dim=64, mapping_dim=256, mapping_depth=2,
                    txt_in_dim=2048, txt_refiner_dim=768, txt_refiner_head_dim=64, txt_refiner_depth=2,
                    text_encoder="qwen3-vl-embedding-2b", text_length=256),
    "T2I-1.2B/2": dict(input_size=32, in_channels=32, hidden_dim=1536, depth=28, head_dim=96, mapping_dim=384, mapping_depth=2,
                       txt_in_dim=2048, txt_refiner_dim=1536, txt_refiner_head_dim=128, txt_refiner_depth=2,
                       text_encoder="qwen3-vl-embedding-2b", text_length=256),
}


def t2i_preset_config(preset: str, **overrides: Any) -> T2IConfig:
    """Resolve a T2I preset name plus overrides (e.g. ``in_channels=4``) into a T2IConfig."""
    if preset not in T2I_PRESETS:
        raise ConfigError(f"unknown text-to-image preset {preset!r}; choose one of: {', '.join(T2I_PRESETS)}")
    known = {f.name for f in dataclasses.fields(T2IConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown text-to-image option(s) {bad}; valid overrides: {sorted(known)}")
    return T2IConfig(**{**T2I_PRESETS[preset], **overrides})


class TimeConditioning(NamedTuple):
    """Time embeddings and how tokens map onto them; ``apply(linear)`` gives ``c W^T`` per token.

    ``index`` None: ``vectors`` is (B, M), one per sample, broadcast over tokens; or (B, N, M),
    one per token. Otherwise ``vectors`` (U, M) holds the distinct times and ``index`` (B, N)
    picks each token's row.
    """

    vectors: Tensor
    index: Tensor | None

    def apply(self, layer: nn.Module) -> Tensor:
        out = layer(self.vectors)
        if self.index is not None:
            return out[self.index]  # (B, N, D)
        return out[:, None, :] if out.ndim == 2 else out  # (B, 1, D) or (B, N, D)


class _TextCache:
    """The refined text and per-block text keys for the last ``y`` seen under no_grad."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.y: Tensor | None = None
        self.mask: Tensor | None = None
        self.value: tuple[Tensor, list[tuple[Tensor, Tensor]]] | None = None

    def lookup(self, y: Tensor, mask: Tensor | None, key: tuple):
        if self.value is None or self.key != key or self.y.shape != y.shape:
            return None
        if (mask is None) != (self.mask is None) or (mask is not None and not torch.equal(self.mask, mask)):
            return None
        if not torch.equal(self.y, y):
            return None
        return self.value

    def store(self, y: Tensor, mask: Tensor | None, key: tuple, value) -> None:
        self.y, self.mask, self.key, self.value = y.detach().clone(), None if mask is None else mask.clone(), key, value


class PatchForcingT2I(Network):
    """docs/method.md §8.7. State-dict names and order as in the reference (docs/method.md §8.9)."""

    def __init__(self, config: T2IConfig):
        super().__init__()
        self.config = config
        c = config
        self.t_embedder = TimestepEmbedder(c.mapping_dim, c.mapping_depth)
        self.merge = TokenMerge2D(c.in_channels, c.hidden_dim, c.patch_size)
        self.blocks = nn.ModuleList(
            [ImageBlock(c.hidden_dim, c.head_dim, c.mapping_dim, c.txt_refiner_dim) for _ in range(c.depth)]
        )
        self.split = TokenSplitLast2D(c.hidden_dim, c.out_channels, c.patch_size)
        self.txt_proj = nn.Linear(c.txt_in_dim, c.txt_refiner_dim)
        self.txt_refiner = nn.ModuleList([TextBlock(c.txt_refiner_dim, c.txt_refiner_head_dim) for _ in range(c.txt_refiner_depth)])
        self.share_modulation = True  # False: one time embedding per token (the reference's path)
        self.cache_text = True  # False: refine the text at every call (the reference's path)
        self._cache = _TextCache()
        self._rope_key: tuple | None = None  # the frozen RoPE tables the grouping below was read from
        self._rope_first: list[int] = []  # per table, the index of the first table holding the same values

    # --- text ---------------------------------------------------------------------------------
    def refine_text(self, y: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """Steps 1-2 of docs/method.md §8.7: ``txt_proj`` then the refiner. (B, L, D_in) -> (B, L, D_t)."""
        text = self.txt_proj(y)
        pos = torch.arange(y.shape[1], device=y.device, dtype=torch.float32)  # token indices 0 .. L-1
        for layer in self.txt_refiner:
            text = layer(text, pos, key_mask=text_mask)
        return text

    def encode_text(self, y: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The refined text (B, L, D_t) and each block's scaled text keys and values (B, H, L, d_h).

        Cached for the last ``y`` under ``torch.no_grad`` so a sampling run computes them once.
        """
        caching = self.cache_text and not torch.is_grad_enabled()
        key = (y.dtype, y.device, tuple((p.data_ptr(), p._version) for p in self.parameters())) if caching else None
        if caching:
            hit = self._cache.lookup(y, text_mask, key)
            if hit is not None:
                return hit
        text = self.refine_text(y, text_mask)
        keys = [block.cross_attn.text_keys(text) for block in self.blocks]
        if caching:
            self._cache.store(y, text_mask, key, (text, keys))
        return text, keys

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, y: Tensor, text_mask: Tensor | None = None) -> ModelOutput:
        """Predict velocity and the per-pixel log-variance.

        Args:
            x: (B, C, H, W) noisy latent.
            t: (B, N) one time per patch (row-major), or (B,) broadcast; raw values in [0, 1].
            y: (B, L, D_in) text-encoder states (padding positions included, as the reference).
            text_mask: optional (B, L) bool, True for real tokens. Not in the reference (which
                attends to padding); None reproduces the reference exactly.
        Returns:
            ModelOutput(velocity (B, C, H, W), logvar (B, 1, H, W); None for a global-time network).
        """
        b = self._check_inputs(x, t, y, text_mask)
        _, keys = self.encode_text(y.to(self.txt_proj.weight.dtype), text_mask)  # encoders give float32 states
        cond = self._conditioning(t if t.ndim == 2 else t[:, None].expand(b, self.num_patches))
        pos = image_positions(x.shape[2], x.shape[3], self.patch_size, x.device)  # (N, 2) float32
        z = self.merge(x)  # (B, N, D)
        rots = self._rotations(pos, z.dtype)
        for block, block_keys, (self_rot, cross_rot) in zip(self.blocks, keys, zip(rots[::2], rots[1::2], strict=False), strict=False):
            z = block.self_attn(z, self_rot, cond.apply(block.self_attn.norm.linear))
            z = block.cross_attn(z, cross_rot, cond.apply(block.cross_attn.norm.linear), block_keys, text_mask)
            z = block.ff(z, cond.apply(block.ff.norm.linear))
        grid = (x.shape[2] // self.patch_size, x.shape[3] // self.patch_size)
        out = self.split(z, grid)  # (B, C + 1, H, W)
        c = self.config.in_channels
        return ModelOutput(out[:, :c], out[:, c:] if self.has_difficulty_head else None)

    def _rotations(self, pos: Tensor, dtype: torch.dtype) -> list[Rotation]:
        """The image RoPE of every block's self- then cross-attention (docs/method.md §8.5), for pos (N, 2).

        The frozen tables normally all hold the same values: each distinct table is evaluated once
        per forward. Which tables are equal is read again only when one of them changes.
        """
        attns = [attn for block in self.blocks for attn in (block.self_attn, block.cross_attn)]
        if torch.compiler.is_compiling():  # no value comparisons inside a compiled graph
            return [Rotation.of(attn.pos_emb.angles(pos, dtype), dtype) for attn in attns]
        tables = [attn.pos_emb.freqs for attn in attns]
        key = tuple((f.data_ptr(), f._version, f.device, f.dtype) for f in tables)
        if key != self._rope_key:
            self._rope_first = [next(j for j in range(i + 1) if j == i or torch.equal(tables[j], f)) for i, f in enumerate(tables)]
            self._rope_key = key
        built = {i: Rotation.of(attns[i].pos_emb.angles(pos, dtype), dtype) for i in set(self._rope_first)}
        return [built[i] for i in self._rope_first]

    def _conditioning(self, t: Tensor) -> TimeConditioning:
        """Time embeddings of the distinct times and the map of tokens onto them (c depends on t only).

        At inference a sample holds one or two distinct times (Euler; dual-loop, look-ahead), so the
        time path and every AdaRMSNorm linear run once per distinct time; with mostly distinct
        times (training) the per-token path of the reference is cheaper and is taken.
        """
        b, n = t.shape
        if not self.share_modulation:
            return TimeConditioning(self.t_embedder(t), None)  # (B, N, M)
        if bool((t == t[:, :1]).all()):  # one time per sample
            return TimeConditioning(self.t_embedder(t[:, 0]), None)
        times, index = torch.unique(t, return_inverse=True)  # (U,), (B, N)
        if 2 * times.numel() > b * n:
            return TimeConditioning(self.t_embedder(t), None)
        return TimeConditioning(self.t_embedder(times), index)

    def _check_inputs(self, x: Tensor, t: Tensor, y: Tensor, text_mask: Tensor | None) -> int:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % cfg.patch_size or x.shape[3] % cfg.patch_size:
            raise ShapeError(
                f"x has shape {tuple(x.shape)} but this network takes (B, {cfg.in_channels}, H, W) with H, W "
                f"multiples of {cfg.patch_size}; create the network with matching in_channels"
            )
        b, n = x.shape[0], (x.shape[2] // cfg.patch_size) * (x.shape[3] // cfg.patch_size)
        if not (t.shape == (b,) or t.shape == (b, n)):
            raise ShapeError(f"t has shape {tuple(t.shape)}; expected ({b},) or ({b}, {n}), one time per patch")
        if not torch.is_tensor(y) or y.ndim != 3 or y.shape[0] != b or y.shape[2] != cfg.txt_in_dim:
            got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ShapeError(
                f"y has shape {got}; this text network takes text-encoder states ({b}, L, {cfg.txt_in_dim}): "
                f"encode prompts with the network's text encoder ({cfg.text_encoder!r}), e.g. "
                "condition=patchforcing.text.text_condition(load_text_encoder(...), prompts)"
            )
        if text_mask is not None and text_mask.shape != y.shape[:2]:
            raise ShapeError(f"text_mask has shape {tuple(text_mask.shape)}; expected {tuple(y.shape[:2])}")
        return b
