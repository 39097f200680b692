"""The Patch Forcing transformer (docs/method.md §3): DiT/SiT with per-token conditioning.

The network knows nothing about noise, time distributions or samplers. It maps
``(x (B, C, H, W), t (B,) or (B, N), y (B,))`` to ``ModelOutput(velocity (B, C, H, W),
logvar (B, 1, H, W) or None)``. With a REPA projector (``config.repa_dim > 0``) and
``return_features=True`` the output also carries ``features`` (B, N, z) (docs/method.md §7.1).

Shared modulation: the adaLN ``Linear(D, 6D)`` of every block depends only on the token's
conditioning vector ``c = t_emb(t) + y_emb(y)``. At inference most tokens of a sample share a
time (all in Euler; two values in dual-loop and look-ahead), so we evaluate the time MLP and
every modulation once per distinct (sample, time) pair and broadcast or gather the result. The
outputs equal the per-token computation (the same rows pass through the same linear layers).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from patchforcing.errors import ShapeError
from patchforcing.models.config import ModelConfig
from patchforcing.models.layers import (
    Block,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    sincos_pos_embed_2d,
)


class ModelOutput(NamedTuple):
    velocity: Tensor  # (B, C, H, W)
    logvar: Tensor | None  # (B, 1, H, W) per-pixel log-variance, None without the head


class FeatureOutput(ModelOutput):
    """A ``ModelOutput`` (it unpacks as ``velocity, logvar``) that also holds the REPA ``features``
    (B, N, z): the projected hidden tokens after block ``repa_depth``."""

    features: Tensor

    def __new__(cls, velocity: Tensor, logvar: Tensor | None, features: Tensor) -> FeatureOutput:
        self = super().__new__(cls, velocity, logvar)
        self.features = features
        return self


class Conditioning(NamedTuple):
    """Distinct conditioning vectors and how tokens map onto them.

    ``index`` None: ``vectors`` is (B, D), row b for every token of sample b (broadcast path), or
    (B, N, D), one row per token (per-token path: no gather, the layer's output is already laid
    out per token). Otherwise ``vectors`` (P, D) holds the distinct rows and ``index`` (B, N)
    says which row each token uses.
    """

    vectors: Tensor
    index: Tensor | None

    def apply(self, layer: nn.Module) -> Tensor:
        """Evaluate ``layer`` on the distinct rows and spread the result to tokens: (B, 1 or N, k*D)."""
        if self.vectors.ndim == 3:  # per token: one (B*N, D) matrix product, then a view
            b, n, d = self.vectors.shape
            return layer(self.vectors.reshape(b * n, d)).view(b, n, -1)  # (B, N, k*D)
        out = layer(self.vectors)  # (P, k*D)
        if self.index is None:
            return out[:, None, :]  # (B, 1, k*D), broadcast over tokens
        b, n = self.index.shape
        return torch.index_select(out, 0, self.index.reshape(-1)).view(b, n, -1)  # (B, N, k*D)


class Network(nn.Module):
    """What samplers and tools read from every network (class-conditional or text-to-image), all
    taken from ``self.config``."""

    config: ModelConfig  # or T2IConfig; both are NetworkConfigs

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    @property
    def has_difficulty_head(self) -> bool:
        return self.config.has_difficulty_head

    @property
    def null_label(self) -> int | None:
        return self.config.null_label


class PatchForcingTransformer(Network):
    """DiT/SiT layout with per-patch time; ``config.kind`` chooses Patch Forcing or SiT."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed(p, config.in_channels, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes + int(config.has_null_class), d)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, d), requires_grad=False)
        self.blocks = nn.ModuleList([Block(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        self.final_layer = FinalLayer(d, p, config.out_channels)
        self.share_modulation = True  # False forces the per-token path (reference behaviour)
        self.initialize_weights()
        if config.has_projector:  # registered after final_layer (the reference's state-dict order) and
            # built after the other weights are drawn: with or without it they start the same
            z, hidden = config.repa_dim, config.repa_projector_dim
            self.projector = nn.Sequential(nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, z))
            self._initialize_projector()

    def initialize_weights(self) -> None:
        """docs/method.md §3.5: Xavier linears, zero biases, zero adaLN and output layers, N(0, 0.02) embeddings.

        The REPA projector gets the same Xavier/zero-bias initialisation (docs/method.md §7.1), drawn last,
        so a network with a projector starts with the same other weights as one without.
        """
        projector = list(self.projector.modules()) if hasattr(self, "projector") else []
        for m in self.modules():
            if isinstance(m, nn.Linear) and not any(m is p for p in projector):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if not self.pos_embed.is_meta:  # on the meta device (shapes only) the table is not computed at all
            pos = sincos_pos_embed_2d(self.config.hidden_size, self.config.grid_size)
            self.pos_embed.data.copy_(torch.from_numpy(pos).float()[None])
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if projector:
            self._initialize_projector()

    def _initialize_projector(self) -> None:
        for m in self.projector:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # --- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, return_features: bool = False) -> ModelOutput:
        """Predict velocity (and the per-pixel log-variance for Patch Forcing networks).

        Args:
            x: (B, C, H, W) noisy input.
            t: (B,) one time per sample, or (B, N) one per patch (row-major), raw values in [0, 1].
            y: (B,) class labels; None means the null class (unconditional).
            return_features: also return the REPA projection of the tokens after block
                ``repa_depth`` (networks with ``repa_dim > 0``); off by default, and then the
                projector is never run.

        Returns:
            ``ModelOutput(velocity, logvar)``, or with ``return_features`` a ``FeatureOutput``
            whose ``features`` are (B, N, repa_dim).
        """
        b = self._check_inputs(x, t, y)
        if return_features and not self.config.has_projector:
            raise ShapeError("return_features=True needs a REPA projector: create the network with repa_dim=Z (and repa_depth)")
        if y is None:
            y = torch.full((b,), self.config.null_label, dtype=torch.long, device=x.device)
        tokens = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        cond = self._conditioning(t, y)
        hidden = None
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, cond.apply(block.adaLN_modulation))
            if return_features and index == self.config.repa_depth:
                hidden = tokens  # (B, N, D) residual stream, no norm or modulation
        out = self.final_layer(tokens, cond.apply(self.final_layer.adaLN_modulation))  # (B, N, p*p*C_out)
        out = self.unpatchify(out)  # (B, C_out, H, W)
        c = self.config.in_channels
        # learn_sigma: the extra channels are discarded
        velocity, logvar = out[:, :c], (out[:, c:] if self.config.has_difficulty_head else None)
        if return_features:
            return FeatureOutput(velocity, logvar, self.projector(hidden))  # (B, N, z)
        return ModelOutput(velocity, logvar)

    def _conditioning(self, t: Tensor, y: Tensor) -> Conditioning:
        y_emb = self.y_embedder(y)  # (B, D)
        if t.ndim == 1:
            return Conditioning(self.t_embedder(t) + y_emb, None)
        b, n = t.shape
        if not self.share_modulation:
            return Conditioning(self.t_embedder(t) + y_emb[:, None], None)  # (B, N, D)
        if bool((t == t[:, :1]).all()):  # one time per sample: broadcast path
            return Conditioning(self.t_embedder(t[:, 0]) + y_emb, None)
        # Distinct (sample, time) pairs: unique times, then unique (sample, time-id) keys.
        times, time_id = torch.unique(t, return_inverse=True)  # (U,), (B, N)
        key = torch.arange(b, device=t.device)[:, None] * times.numel() + time_id  # (B, N)
        keys, index = torch.unique(key, return_inverse=True)  # (P,), (B, N)
        if keys.numel() * 2 > b * n:  # mostly distinct (training): sharing would not pay
            return Conditioning(self.t_embedder(t) + y_emb[:, None], None)  # (B, N, D)
        sample_of, tid_of = keys // times.numel(), keys % times.numel()
        vectors = self.t_embedder(times)[tid_of] + y_emb[sample_of]  # (P, D)
        return Conditioning(vectors, index)

    def unpatchify(self, x: Tensor) -> Tensor:
        """(B, N, p*p*C) -> (B, C, H, W); token (i, j), in-patch (a, b), channel c -> (c, i*p+a, j*p+b)."""
        p, g = self.config.patch_size, self.config.grid_size
        c = x.shape[-1] // (p * p)
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def _check_inputs(self, x: Tensor, t: Tensor, y: Tensor | None) -> int:
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ShapeError(
                f"x has shape {tuple(x.shape)} but this network takes (B, {', '.join(map(str, expected))}); "
                "resize the input or create the network with matching input_size/in_channels"
            )
        b = x.shape[0]
        if not (t.shape == (b,) or t.shape == (b, cfg.num_patches)):
            raise ShapeError(
                f"t has shape {tuple(t.shape)}; expected ({b},) for one time per sample or "
                f"({b}, {cfg.num_patches}) for one time per patch"
            )
        if y is not None and y.shape != (b,):
            raise ShapeError(f"y has shape {tuple(y.shape)}; expected ({b},) class labels")
        if y is None and cfg.null_label is None:
            raise ShapeError("this network has no null class (class_dropout_prob=0): pass labels y")
        return b
