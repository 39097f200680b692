"""Building blocks of the text-to-image Patch Forcing transformer (docs/method.md §8.2-8.6).

Parameter names and shapes follow the reference (``norm.linear.weight``, ``qkv_proj``,
``pos_emb.freqs`` ...) so that its state_dicts load as-is. No layer has a bias except the text
input projection, which lives in the network module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-6


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Norm statistics in at least float32 (docs/method.md §8.2)."""
    return torch.promote_types(x.dtype, torch.float32)


def rms_normalize(x: Tensor, gain: Tensor) -> Tensor:
    """``x * gain / sqrt(mean(x^2) + 1e-6)`` over the last dim; computed in >= float32, cast back."""
    dtype = _stat_dtype(x)
    xs = x.to(dtype)
    inv = torch.rsqrt(xs.pow(2).mean(dim=-1, keepdim=True) + EPS)
    return (xs * inv * gain.to(dtype)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain ``scale`` (ones), no centring, no bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_normalize(x, self.scale)


def ada_rms_normalize(x: Tensor, cond_out: Tensor) -> Tensor:
    """``rms_normalize(x, 1 + cond_out)``, computed as ``(x + x * cond_out) / rms(x)`` (one pass fewer).

    A ``cond_out`` of lower precision than the statistics (bf16 autocast) is first turned into the
    gain ``1 + cond_out`` in its own dtype, as the reference rounds it.
    """
    dtype = _stat_dtype(x)
    xs = x.to(dtype)
    inv = torch.rsqrt(xs.pow(2).mean(dim=-1, keepdim=True) + EPS)
    if cond_out.dtype != dtype:
        return (xs * inv * (1 + cond_out).to(dtype)).to(x.dtype)
    return (torch.addcmul(xs, xs, cond_out) * inv).to(x.dtype)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose gain is ``1 + c W^T`` per token (``linear`` (D, M), zero-initialised).

    The gain arrives precomputed (``TimeConditioning.apply(self.linear)``), so tokens that share a
    time share one evaluation of ``linear``.
    """

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.linear = nn.Linear(cond_dim, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: Tensor, cond_out: Tensor) -> Tensor:
        """x (B, N, D); cond_out (B, N, D) or (B, 1, D) = ``c W^T``."""
        return ada_rms_normalize(x, cond_out)


class LinearSwiGLU(nn.Linear):
    """``[a, g] = x U^T`` (first half value, second half gate); returns ``a * silu(g)``."""

    def __init__(self, d_in: int, d_ff: int):
        super().__init__(d_in, 2 * d_ff, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, g = super().forward(x).chunk(2, dim=-1)
        return a * F.silu(g)


def _zero_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


# --- time embedding (docs/method.md §8.3) -----------------------------------------------------------------------
class FourierFeatures(nn.Module):
    """Random Fourier features: buffer ``weight`` (M/2, 1) ~ N(0, 1), saved in the checkpoint."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.randn(dim // 2, 1))

    def forward(self, t: Tensor) -> Tensor:
        """t (...,) -> (..., M) = ``[cos f, sin f]``, ``f = 2 pi t omega``."""
        f = 2 * math.pi * t[..., None].to(self.weight.dtype) @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class MappingBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.up_proj = LinearSwiGLU(dim, 3 * dim)
        self.down_proj = _zero_linear(3 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down_proj(self.up_proj(self.norm(x)))


class MappingNetwork(nn.Module):
    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.in_norm = RMSNorm(dim)
        self.blocks = nn.ModuleList([MappingBlock(dim) for _ in range(depth)])
        self.out_norm = RMSNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)


class TimestepEmbedder(nn.Module):
    """Per-token time embedding ``c`` (..., M): Fourier features, ``time_in_proj``, mapping network."""

    def __init__(self, dim: int, depth: int):
        super().__init__()
        self.time_emb = FourierFeatures(dim)
        self.time_in_proj = nn.Linear(dim, dim, bias=False)
        self.mapping = MappingNetwork(dim, depth)

    def forward(self, t: Tensor) -> Tensor:
        dtype = self.time_in_proj.weight.dtype
        return self.mapping(self.time_in_proj(self.time_emb(t.to(dtype)).to(dtype)))


# --- positions and RoPE (docs/method.md §8.5) -------------------------------------------------------------------
def image_positions(rows: int, cols: int, patch_size: int, device: torch.device | None = None) -> Tensor:
    """Patch-centre positions (rows/p * cols/p, 2) as (row, column), float32 as the reference builds them.

    Pixel cell centres of a ``rows x cols`` canvas (the longer side spans [-1, 1]) averaged over
    each ``p x p`` patch; tokens in row-major order.
    """
    ext_r, ext_c = min(1.0, rows / cols), min(1.0, cols / rows)
    r = -ext_r + (2 * torch.arange(rows, dtype=torch.float32, device=device) + 1) * ext_r / rows  # (rows,)
    c = -ext_c + (2 * torch.arange(cols, dtype=torch.float32, device=device) + 1) * ext_c / cols  # (cols,)
    p = patch_size
    r = r.view(rows // p, p).mean(dim=1)
    c = c.view(cols // p, p).mean(dim=1)
    grid = torch.stack(torch.meshgrid(r, c, indexing="ij"), dim=-1)  # (h, w, 2)
    return grid.reshape(-1, 2)


def _log_ladder(lo: float, hi: float, heads: int, per_head: int) -> Tensor:
    """``exp(linspace(ln lo, ln hi, H K + 1)[:-1])`` dealt round-robin: (H, K), entry [h, k] = F_{k H + h}."""
    f = torch.linspace(math.log(lo), math.log(hi), heads * per_head + 1, dtype=torch.float32)[:-1].exp()
    return f.view(per_head, heads).T.contiguous()


class AxialRoPE2D(nn.Module):
    """Frozen frequency table ``freqs`` (2, H, d_h/8), pi .. 10 pi, identical for rows and columns."""

    def __init__(self, head_dim: int, num_heads: int):
        super().__init__()
        table = _log_ladder(math.pi, 10.0 * math.pi, num_heads, head_dim // 8)
        self.freqs = nn.Parameter(torch.stack([table, table]), requires_grad=False)

    def angles(self, pos: Tensor, dtype: torch.dtype) -> Tensor:
        """pos (N, 2) -> angles (H, N, d_h/4): row angles, then column angles, per head."""
        pos, freqs = pos.to(dtype), self.freqs.to(dtype)
        rows = pos[None, :, 0:1] * freqs[0][:, None, :]  # (H, N, K)
        cols = pos[None, :, 1:2] * freqs[1][:, None, :]
        return torch.cat([rows, cols], dim=-1)


class AxialRoPETime(nn.Module):
    """Frozen 1-D table ``freqs`` (H_t, d_t/4), 1e-4 .. 1, for text positions 0 .. L-1."""

    def __init__(self, head_dim: int, num_heads: int):
        super().__init__()
        self.freqs = nn.Parameter(_log_ladder(1e-4, 1.0, num_heads, head_dim // 4), requires_grad=False)

    def angles(self, pos: Tensor, dtype: torch.dtype) -> Tensor:
        """pos (L,) token indices -> angles (H_t, L, d_t/4)."""
        return pos.to(dtype)[None, :, None] * self.freqs.to(dtype)[:, None, :]


class Rotation(NamedTuple):
    """cos and sin (H, N, m) of RoPE angles, in the activation dtype; built once per forward and
    shared by every attention whose frozen frequency table holds the same values."""

    cos: Tensor
    sin: Tensor

    @classmethod
    def of(cls, theta: Tensor, dtype: torch.dtype) -> Rotation:
        return cls(theta.cos().to(dtype), theta.sin().to(dtype))


def rotate(x: Tensor, rot: Rotation) -> Tensor:
    """RoPE: x (B, H, N, d_h), ``rot`` of angles (H, N, m); pairs (i, i + m) for i < m are rotated,
    features ``[2m, d_h)`` pass unchanged."""
    m = rot.cos.shape[-1]
    x1, x2, rest = x[..., :m], x[..., m : 2 * m], x[..., 2 * m :]
    return torch.cat([x1 * rot.cos - x2 * rot.sin, x2 * rot.cos + x1 * rot.sin, rest], dim=-1)


# --- attention (docs/method.md §8.4, §8.6) -----------------------------------------------------------------------
def cosine_scale(x: Tensor, scale: Tensor) -> Tensor:
    """``x * sqrt(s_h) / sqrt(sum x^2 + 1e-6)`` per head; x (B, H, N, d), scale (H,)."""
    dtype = _stat_dtype(x)
    xs = x.to(dtype)
    factor = scale.to(dtype).sqrt()[:, None, None] * torch.rsqrt(xs.pow(2).sum(dim=-1, keepdim=True) + EPS)
    return x * factor.to(x.dtype)


def split_heads(x: Tensor, head_dim: int) -> Tensor:
    """(B, N, H*d) -> (B, H, N, d), head i = features [i d, (i+1) d)."""
    b, n, _ = x.shape
    return x.view(b, n, -1, head_dim).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (B, N, H*d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
    """softmax(q k^T) v with scale 1; ``key_mask`` (B, L) bool, True = attend (an extension)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


class SelfAttention(nn.Module):
    """Residual cosine self-attention; ``norm`` is AdaRMSNorm (image) or RMSNorm (text refiner)."""

    def __init__(self, dim: int, head_dim: int, cond_dim: int | None, rope: type[nn.Module]):
        super().__init__()
        self.head_dim = head_dim
        heads = dim // head_dim
        self.scale = nn.Parameter(torch.full((heads,), 10.0))
        self.norm = AdaRMSNorm(dim, cond_dim) if cond_dim is not None else RMSNorm(dim)
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.out_proj = _zero_linear(dim, dim)
        self.pos_emb = rope(head_dim, heads)

    def forward(self, x: Tensor, rot: Rotation, cond_out: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """x (B, N, D); ``rot`` of this module's angles (``pos_emb.angles``); cond_out (B, N|1, D) in image blocks."""
        u = self.norm(x) if cond_out is None else self.norm(x, cond_out)
        q, k, v = (split_heads(part, self.head_dim) for part in self.qkv_proj(u).chunk(3, dim=-1))  # (B, H, N, d)
        q, k = rotate(cosine_scale(q, self.scale), rot), rotate(cosine_scale(k, self.scale), rot)
        return x + self.out_proj(merge_heads(attend(q, k, v, key_mask)))


class CrossAttention(nn.Module):
    """Residual cosine cross-attention from image tokens to the refined text.

    RoPE rotates the image queries only; the text keys are not rotated (docs/method.md §8.10).
    """

    def __init__(self, dim: int, head_dim: int, cond_dim: int, text_dim: int):
        super().__init__()
        self.head_dim = head_dim
        heads = dim // head_dim
        self.scale = nn.Parameter(torch.full((heads,), 10.0))
        self.norm = AdaRMSNorm(dim, cond_dim)
        self.norm_cross = RMSNorm(text_dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.kv_proj = nn.Linear(text_dim, 2 * dim, bias=False)
        self.out_proj = _zero_linear(dim, dim)
        self.pos_emb = AxialRoPE2D(head_dim, heads)

    def text_keys(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled keys and values (B, H, L, d) of the refined text; they depend on the text only."""
        k, v = (split_heads(part, self.head_dim) for part in self.kv_proj(self.norm_cross(text)).chunk(2, dim=-1))
        return cosine_scale(k, self.scale), v

    def forward(self, x: Tensor, rot: Rotation, cond_out: Tensor, keys: tuple[Tensor, Tensor], key_mask: Tensor | None = None) -> Tensor:
        """x (B, N, D); ``rot`` of this module's image angles; keys from ``text_keys`` (B or 1, H, L, d)."""
        q = split_heads(self.q_proj(self.norm(x, cond_out)), self.head_dim)
        q = rotate(cosine_scale(q, self.scale), rot)
        k, v = keys
        if k.shape[0] != q.shape[0]:  # one text for the whole batch
            k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        return x + self.out_proj(merge_heads(attend(q, k, v, key_mask)))


class FeedForward(nn.Module):
    """``x + SwiGLU(Norm(x)) W_down^T`` with ``d_ff = 3 d``; AdaRMSNorm or RMSNorm."""

    def __init__(self, dim: int, cond_dim: int | None):
        super().__init__()
        self.norm = AdaRMSNorm(dim, cond_dim) if cond_dim is not None else RMSNorm(dim)
        self.up_proj = LinearSwiGLU(dim, 3 * dim)
        self.down_proj = _zero_linear(3 * dim, dim)

    def forward(self, x: Tensor, cond_out: Tensor | None = None) -> Tensor:
        u = self.norm(x) if cond_out is None else self.norm(x, cond_out)
        return x + self.down_proj(self.up_proj(u))


class ImageBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward; each with its own AdaRMSNorm."""

    def __init__(self, dim: int, head_dim: int, cond_dim: int, text_dim: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, head_dim, cond_dim, AxialRoPE2D)
        self.cross_attn = CrossAttention(dim, head_dim, cond_dim, text_dim)
        self.ff = FeedForward(dim, cond_dim)


class TextBlock(nn.Module):
    """A text-refiner layer: self-attention with 1-D RoPE, then feed-forward; no time."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.self_attn = SelfAttention(dim, head_dim, None, AxialRoPETime)
        self.ff = FeedForward(dim, None)

    def forward(self, x: Tensor, pos: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """x (B, L, D_t); pos (L,) token indices."""
        rot = Rotation.of(self.self_attn.pos_emb.angles(pos, x.dtype), x.dtype)  # (H_t, L, d_t/4), shared by q and k
        return self.ff(self.self_attn(x, rot, key_mask=key_mask))


# --- token layouts (docs/method.md §8.6) ------------------------------------------------------------------------
class TokenMerge2D(nn.Module):
    """(B, C, H, W) -> (B, N, D); a token's features are ordered (in-patch row, column, channel)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size * patch_size * in_channels, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        p = self.patch_size
        x = x.view(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return self.proj(x.reshape(b, (hh // p) * (ww // p), p * p * c))


class TokenSplitLast2D(nn.Module):
    """(B, N, D) -> (B, C_out, H, W) through a plain RMSNorm and ``proj`` (zero-initialised)."""

    def __init__(self, dim: int, out_channels: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.norm = RMSNorm(dim)
        self.proj = _zero_linear(dim, out_channels * patch_size * patch_size)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        b, _, _ = x.shape
        (h, w), p = grid, self.patch_size
        o = self.proj(self.norm(x)).view(b, h, w, p, p, -1)  # (B, h, w, p, p, C_out)
        return o.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h * p, w * p)
