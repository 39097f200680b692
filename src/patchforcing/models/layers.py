"""Building blocks of the Patch Forcing transformer (docs/method.md §3). Parameter names follow the
released checkpoints (``x_embedder.proj``, ``t_embedder.mlp``, ``attn.qkv``, ``mlp.fc1`` ...)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding, (grid_size**2, dim), float64 (MAE style).

    The first ``dim/2`` channels encode the column index, the last ``dim/2`` the row index; each
    1-D part is ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (dim/4))``.
    """
    rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # (D/4,)

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)  # (N, D/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (N, D/2)

    # Token n = i*w + j (row-major). The reference grid puts the column coordinate first.
    return np.concatenate([embed_1d(cols), embed_1d(rows)], axis=1)


def timestep_frequencies(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of raw times in [0, 1] (no x1000): ``[cos(t f), sin(t f)]``, cos first.

    Args:
        t: any shape ``S``. Returns ``S + (dim,)`` in ``t``'s dtype.
    """
    half = dim // 2
    k = torch.arange(half, device=t.device, dtype=t.dtype)
    freqs = torch.exp(-math.log(max_period) * k / half)  # (half,)
    args = t[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PatchEmbed(nn.Module):
    """Conv p x p, stride p, C -> D, flattened to tokens (B, N, D) in row-major order."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        # Token-major memory, once: the transposed view would make the whole residual stream
        # inherit the conv's (B, D, N) layout, so every LayerNorm copied it and every residual
        # add mixed two layouts (a strided loop). The values are the same either way.
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)


class TimestepEmbedder(nn.Module):
    """t -> Linear(256, D) -> SiLU -> Linear(D, D); works on any leading shape."""

    def __init__(self, dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        dtype = self.mlp[0].weight.dtype
        # Features in at least float32 (as the reference computes them), float64 for float64 weights.
        feat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return self.mlp(timestep_frequencies(t.to(feat_dtype), self.frequency_dim).to(dtype))


class LabelEmbedder(nn.Module):
    """Class table; the row after the last class is the null class used for guidance."""

    def __init__(self, num_rows: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_rows, dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # q, k, v as views (B, heads, N, d_head) of the qkv output, the strides timm's
        # permute(2, 0, 3, 1, 4).unbind(0) gives. Unbinding the (B, N, 3, heads, d_head) view first
        # makes the backward stack the three gradients straight into the qkv output's layout (one
        # copy; unbinding the permuted view stacks them permuted, and the reshape copies again).
        q, k, v = (part.transpose(1, 2) for part in self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d_head)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class Block(nn.Module):
    """adaLN-Zero block with token-wise modulation (docs/method.md §3.3).

    The modulation arrives precomputed (see ``Conditioning``), so that tokens sharing a
    (sample, time) pair share one ``Linear(D, 6D)`` evaluation.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        """x (B, N, D); mod (B, N, 6D) or (B, 1, 6D) from ``self.adaLN_modulation``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)
