"""An independent, deliberately literal re-implementation of docs/method.md §8, for tests only.

Written from docs/method.md (not from ``src/``): explicit formulas, per-head and per-token loops,
float64, everything read from a state_dict by name. When it disagrees with the package, docs/method.md §8
decides which one is wrong.

Contents:
    * ``ref_freqs_2d``, ``ref_freqs_1d`` -- §8.5 RoPE frequency tables.
    * ``ref_image_positions``             -- §8.5 canvas positions, patch-averaged.
    * ``ref_t2i_forward``                 -- §8.7 the whole network.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

F64 = torch.float64
EPS = 1e-6


# --------------------------------------------------------------------------------------------
# §8.2-8.4 elementary pieces
# --------------------------------------------------------------------------------------------
def silu(x: Tensor) -> Tensor:
    return x / (1.0 + torch.exp(-x))


def rmsnorm(x: Tensor, gain: Tensor) -> Tensor:
    """x * g / sqrt(mean_j x_j^2 + 1e-6) over the last dim."""
    return x * gain / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + EPS)


def lin(x: Tensor, weight: Tensor) -> Tensor:
    """y = x W^T (no bias)."""
    return x @ weight.T


def swiglu(x: Tensor, up: Tensor) -> Tensor:
    """[a, g] = x U^T (first half a, second half g); a * silu(g)."""
    h = lin(x, up)
    half = h.shape[-1] // 2
    return h[..., :half] * silu(h[..., half:])


# --------------------------------------------------------------------------------------------
# §8.5 positions and RoPE
# --------------------------------------------------------------------------------------------
def ref_freqs_2d(num_heads: int, head_dim: int) -> Tensor:
    """(H, K) with [h, k] = F_{k H + h}, F_j = pi * 10^(j / (H K)), computed in float32."""
    k_per = head_dim // 8
    out = torch.zeros(num_heads, k_per, dtype=torch.float32)
    total = num_heads * k_per
    lo, hi = math.log(math.pi), math.log(10 * math.pi)
    for h in range(num_heads):
        for k in range(k_per):
            j = k * num_heads + h
            out[h, k] = torch.exp(torch.tensor(lo + j * (hi - lo) / total, dtype=torch.float32))
    return out


def ref_freqs_1d(num_heads: int, head_dim: int) -> Tensor:
    """(H_t, K_t) with [h, k] = F'_{k H_t + h}, F'_j = 10^(-4 + 4 j / (H_t K_t)), float32."""
    k_per = head_dim // 4
    out = torch.zeros(num_heads, k_per, dtype=torch.float32)
    total = num_heads * k_per
    lo, hi = math.log(1e-4), 0.0
    for h in range(num_heads):
        for k in range(k_per):
            j = k * num_heads + h
            out[h, k] = torch.exp(torch.tensor(lo + j * (hi - lo) / total, dtype=torch.float32))
    return out


def ref_image_positions(hx: int, wx: int, p: int) -> Tensor:
    """(N, 2) (row, column): pixel cell centres of P(Hx, Wx), mean over each patch, float32."""
    er, ec = min(1.0, hx / wx), min(1.0, wx / hx)
    h, w = hx // p, wx // p
    out = torch.zeros(h * w, 2, dtype=torch.float32)
    for big_i in range(h):
        for big_j in range(w):
            rows, cols = [], []
            for a in range(p):
                for b in range(p):
                    i, j = big_i * p + a, big_j * p + b
                    rows.append(-er + (2 * i + 1) * er / hx)
                    cols.append(-ec + (2 * j + 1) * ec / wx)
            out[big_i * w + big_j, 0] = torch.tensor(rows, dtype=torch.float32).mean()
            out[big_i * w + big_j, 1] = torch.tensor(cols, dtype=torch.float32).mean()
    return out


def rotate_head(x: Tensor, theta: Tensor) -> Tensor:
    """One head: x (N, d_h), theta (N, m) with m = d_h/4. Pairs (i, i + m); the rest unchanged."""
    m = theta.shape[1]
    y = x.clone()
    for i in range(m):
        c, s = torch.cos(theta[:, i]), torch.sin(theta[:, i])
        y[:, i] = x[:, i] * c - x[:, i + m] * s
        y[:, i + m] = x[:, i + m] * c + x[:, i] * s
    return y


def angles_2d(pos: Tensor, freqs: Tensor, h: int) -> Tensor:
    """(N, d_h/4): row angles r * F[h, k], then column angles c * F[h, k]."""
    f = freqs.to(F64)  # freqs (2, H, K)
    r, c = pos[:, 0:1].to(F64), pos[:, 1:2].to(F64)
    return torch.cat([r * f[0, h][None], c * f[1, h][None]], dim=1)


def angles_1d(length: int, freqs: Tensor, h: int) -> Tensor:
    """(L, d_t/4): n * F'[h, k]."""
    n = torch.arange(length, dtype=F64)[:, None]
    return n * freqs.to(F64)[h][None]


def cos_scale(x: Tensor, s: Tensor) -> Tensor:
    """x (N, d) * sqrt(s) / sqrt(sum x^2 + 1e-6)."""
    return x * torch.sqrt(s) / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + EPS)


def softmax_rows(a: Tensor) -> Tensor:
    a = a - a.max(dim=-1, keepdim=True).values
    e = torch.exp(a)
    return e / e.sum(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------
# §8.6 layers for ONE sample
# --------------------------------------------------------------------------------------------
def self_attention(z: Tensor, u: Tensor, sd: dict, pre: str, head_dim: int, angle_fn) -> Tensor:
    """z + out_proj(concat_h softmax(q_h k_h^T) v_h), q/k cosine-scaled then rotated."""
    d = z.shape[1]
    qkv = lin(u, sd[f"{pre}.qkv_proj.weight"])
    q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
    heads = []
    for h in range(d // head_dim):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        s = sd[f"{pre}.scale"][h]
        theta = angle_fn(h)
        qh = rotate_head(cos_scale(q[:, sl], s), theta)
        kh = rotate_head(cos_scale(k[:, sl], s), theta)
        heads.append(softmax_rows(qh @ kh.T) @ v[:, sl])
    return z + lin(torch.cat(heads, dim=1), sd[f"{pre}.out_proj.weight"])


def cross_attention(z: Tensor, u: Tensor, txt: Tensor, sd: dict, pre: str, head_dim: int, pos: Tensor) -> Tensor:
    """Queries from the image (rotated by 2-D position), keys/values from the refined text (not rotated)."""
    d = z.shape[1]
    q = lin(u, sd[f"{pre}.q_proj.weight"])
    kv = lin(rmsnorm(txt, sd[f"{pre}.norm_cross.scale"]), sd[f"{pre}.kv_proj.weight"])
    k, v = kv[:, :d], kv[:, d:]
    heads = []
    for h in range(d // head_dim):
        sl = slice(h * head_dim, (h + 1) * head_dim)
        s = sd[f"{pre}.scale"][h]
        qh = rotate_head(cos_scale(q[:, sl], s), angles_2d(pos, sd[f"{pre}.pos_emb.freqs"], h))
        kh = cos_scale(k[:, sl], s)
        heads.append(softmax_rows(qh @ kh.T) @ v[:, sl])
    return z + lin(torch.cat(heads, dim=1), sd[f"{pre}.out_proj.weight"])


def feed_forward(z: Tensor, u: Tensor, sd: dict, pre: str) -> Tensor:
    return z + lin(swiglu(u, sd[f"{pre}.up_proj.weight"]), sd[f"{pre}.down_proj.weight"])


def time_embedding(t: Tensor, sd: dict) -> Tensor:
    """c for one scalar t: Fourier features, time_in_proj, mapping network (§8.3)."""
    omega = sd["t_embedder.time_emb.weight"][:, 0]
    f = 2 * math.pi * t * omega
    e = lin(torch.cat([torch.cos(f), torch.sin(f)]), sd["t_embedder.time_in_proj.weight"])
    e = rmsnorm(e, sd["t_embedder.mapping.in_norm.scale"])
    k = 0
    while f"t_embedder.mapping.blocks.{k}.norm.scale" in sd:
        pre = f"t_embedder.mapping.blocks.{k}"
        e = e + lin(swiglu(rmsnorm(e, sd[f"{pre}.norm.scale"]), sd[f"{pre}.up_proj.weight"]), sd[f"{pre}.down_proj.weight"])
        k += 1
    return rmsnorm(e, sd["t_embedder.mapping.out_norm.scale"])


def ada(z: Tensor, c: Tensor, weight: Tensor) -> Tensor:
    """AdaRMSNorm: RMSNorm(z; 1 + c W^T), per token."""
    return rmsnorm(z, 1.0 + lin(c, weight))


# --------------------------------------------------------------------------------------------
# §8.7 the network
# --------------------------------------------------------------------------------------------
def ref_t2i_forward(sd: dict, x: Tensor, t: Tensor, txt_emb: Tensor, *, patch_size: int, head_dim: int, txt_head_dim: int):
    """docs/method.md §8.7 in float64 from a state_dict. x (B, C, Hx, Wx), t (B, N), txt_emb (B, L, D_in).

    Returns (velocity (B, C, Hx, Wx), logvar (B, 1, Hx, Wx)).
    """
    sd = {k: v.detach().to(F64) for k, v in sd.items()}
    x, t, txt_emb = x.to(F64), t.to(F64), txt_emb.to(F64)
    b, c_in, hx, wx = x.shape
    p = patch_size
    h, w = hx // p, wx // p
    pos = ref_image_positions(hx, wx, p)
    vel = torch.zeros(b, c_in, hx, wx, dtype=F64)
    logvar = torch.zeros(b, 1, hx, wx, dtype=F64)
    for s in range(b):
        # 1-2: text projection and refiner (plain RMSNorms, 1-D RoPE, no mask).
        txt = txt_emb[s] @ sd["txt_proj.weight"].T + sd["txt_proj.bias"]
        length = txt.shape[0]
        r = 0
        while f"txt_refiner.{r}.ff.norm.scale" in sd:
            pre = f"txt_refiner.{r}"
            freqs = sd[f"{pre}.self_attn.pos_emb.freqs"]
            u = rmsnorm(txt, sd[f"{pre}.self_attn.norm.scale"])
            txt = self_attention(txt, u, sd, f"{pre}.self_attn", txt_head_dim, lambda hh, length=length, freqs=freqs: angles_1d(length, freqs, hh))
            txt = feed_forward(txt, rmsnorm(txt, sd[f"{pre}.ff.norm.scale"]), sd, f"{pre}.ff")
            r += 1
        # 3: per-token time embedding.
        c = torch.stack([time_embedding(t[s, n], sd) for n in range(h * w)])  # (N, M)
        # 5: TokenMerge2D, u[(a p + b) C + ch] = x[ch, I p + a, J p + b].
        wm = sd["merge.proj.weight"]
        z = torch.zeros(h * w, wm.shape[0], dtype=F64)
        for big_i in range(h):
            for big_j in range(w):
                vec = torch.zeros(p * p * c_in, dtype=F64)
                for a in range(p):
                    for bb in range(p):
                        for ch in range(c_in):
                            vec[(a * p + bb) * c_in + ch] = x[s, ch, big_i * p + a, big_j * p + bb]
                z[big_i * w + big_j] = lin(vec, wm)
        # 6: image blocks.
        k = 0
        while f"blocks.{k}.ff.up_proj.weight" in sd:
            pre = f"blocks.{k}"
            freqs = sd[f"{pre}.self_attn.pos_emb.freqs"]
            z = self_attention(z, ada(z, c, sd[f"{pre}.self_attn.norm.linear.weight"]), sd, f"{pre}.self_attn", head_dim,
                               lambda hh, freqs=freqs: angles_2d(pos, freqs, hh))
            z = cross_attention(z, ada(z, c, sd[f"{pre}.cross_attn.norm.linear.weight"]), txt, sd, f"{pre}.cross_attn", head_dim, pos)
            z = feed_forward(z, ada(z, c, sd[f"{pre}.ff.norm.linear.weight"]), sd, f"{pre}.ff")
            k += 1
        # 7: TokenSplitLast2D, o[(a p + b)(C+1) + ch] -> pixel (ch, I p + a, J p + b).
        o = lin(rmsnorm(z, sd["split.norm.scale"]), sd["split.proj.weight"])
        for big_i in range(h):
            for big_j in range(w):
                for a in range(p):
                    for bb in range(p):
                        for ch in range(c_in + 1):
                            val = o[big_i * w + big_j, (a * p + bb) * (c_in + 1) + ch]
                            if ch < c_in:
                                vel[s, ch, big_i * p + a, big_j * p + bb] = val
                            else:
                                logvar[s, 0, big_i * p + a, big_j * p + bb] = val
    return vel, logvar
