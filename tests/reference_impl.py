"""An independent, deliberately literal re-implementation of docs/method.md §3-5, for tests only.

Written from docs/method.md (not from ``src/``): slow loops, explicit formulas, float64. Tests
compare the package against these functions; when the two disagree, read docs/method.md, not this file
or the package, to decide which one is wrong.

Contents:
    * ``ref_pos_embed``       -- docs/method.md §3.1, 2-D sin-cos position embedding.
    * ``ref_forward``         -- docs/method.md §3, the whole network from a state_dict, token by token.
    * ``ref_difficulty_mask`` -- docs/method.md §5.2, patch-averaged difficulty and the per-sample quantile.
    * ``RefGuide``            -- docs/method.md §5, guided evaluation with an NFE counter.
    * ``ref_euler``, ``ref_dual_loop``, ``ref_look_ahead`` -- docs/method.md §5 samplers as plain loops.
    * ``ref_training_loss``   -- docs/method.md §4 objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Elementary functions, written out
# --------------------------------------------------------------------------------------------
def silu(x: Tensor) -> Tensor:
    return x / (1.0 + torch.exp(-x))


def gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last dim, no affine, biased variance."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def linear(x: Tensor, sd: dict, name: str) -> Tensor:
    """``y = x W^T + b`` with the weights ``name.weight`` / ``name.bias`` of a state_dict."""
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


# --------------------------------------------------------------------------------------------
# docs/method.md §3.1: position embedding
# --------------------------------------------------------------------------------------------
def ref_pos_embed(dim: int, grid: int) -> Tensor:
    """(grid*grid, dim): token ``n = i*grid + j`` (row i, column j); first dim/2 encode the column.

    Each 1-D part is ``[sin(pos*w_k) for k], [cos(pos*w_k) for k]`` with ``w_k = 10000^(-k/(dim/4))``.
    """
    quarter = dim // 4
    out = torch.zeros(grid * grid, dim, dtype=F64)
    for i in range(grid):
        for j in range(grid):
            n = i * grid + j
            for part, pos in enumerate((j, i)):  # column first, then row
                base = part * (dim // 2)
                for k in range(quarter):
                    w_k = 10000.0 ** (-k / quarter)
                    out[n, base + k] = math.sin(pos * w_k)
                    out[n, base + quarter + k] = math.cos(pos * w_k)
    return out


# --------------------------------------------------------------------------------------------
# docs/method.md §3: the network, token by token
# --------------------------------------------------------------------------------------------
def time_features(t: Tensor) -> Tensor:
    """[cos(t f_k), sin(t f_k)], f_k = exp(-ln(10000) k / 128), k = 0..127 -> (..., 256)."""
    k = torch.arange(128, dtype=F64)
    f = torch.exp(-math.log(10000.0) * k / 128.0)
    args = t.to(F64)[..., None] * f
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attention(x: Tensor, sd: dict, prefix: str, num_heads: int) -> Tensor:
    """Multi-head self attention for ONE sample: x (N, D) -> (N, D), written with matmuls."""
    n, d = x.shape
    dh = d // num_heads
    qkv = linear(x, sd, f"{prefix}.qkv")  # (N, 3D): [q | k | v], heads contiguous inside each
    q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
    heads = []
    for hd in range(num_heads):
        sl = slice(hd * dh, (hd + 1) * dh)
        scores = (q[:, sl] @ k[:, sl].T) / math.sqrt(dh)  # (N, N)
        scores = scores - scores.max(dim=-1, keepdim=True).values
        a = torch.exp(scores)
        a = a / a.sum(dim=-1, keepdim=True)
        heads.append(a @ v[:, sl])  # (N, dh)
    return linear(torch.cat(heads, dim=-1), sd, f"{prefix}.proj")


def ref_forward(
    sd: dict,
    x: Tensor,
    t: Tensor,
    y: Tensor | None,
    *,
    patch_size: int,
    num_heads: int,
    head: bool,
) -> tuple[Tensor, Tensor | None]:
    """The Patch Forcing / SiT network of docs/method.md §3 evaluated from a state_dict, in float64.

    Args:
        sd: state_dict with the released parameter names.
        x: (B, C, H, W); t: (B,) or (B, N); y: (B,) labels or None (= the null class, last row).
        head: True for a Patch Forcing network (last output channel = logvar); False for SiT
            (output channels beyond C, e.g. learn_sigma, are discarded).
    Returns:
        (velocity (B, C, H, W), logvar (B, 1, H, W) or None), float64.
    """
    sd = {k: v.detach().to(F64) for k, v in sd.items()}
    x = x.to(F64)
    b, c, hh, ww = x.shape
    p = patch_size
    gh, gw = hh // p, ww // p
    n = gh * gw
    d = sd["pos_embed"].shape[-1]

    # Patch embedding: conv p x p stride p, one token at a time, row-major.
    wconv, bconv = sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"]  # (D, C, p, p), (D,)
    tokens = torch.zeros(b, n, d, dtype=F64)
    for i in range(gh):
        for j in range(gw):
            patch = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (B, C, p, p)
            tokens[:, i * gw + j] = torch.einsum("bcuv,dcuv->bd", patch, wconv) + bconv
    tokens = tokens + sd["pos_embed"].reshape(n, d)

    # Per-token conditioning c = t_emb + y_emb.
    t = t.to(F64)
    t_tok = t[:, None].expand(b, n) if t.ndim == 1 else t  # (B, N)
    t_emb = linear(silu(linear(time_features(t_tok), sd, "t_embedder.mlp.0")), sd, "t_embedder.mlp.2")
    table = sd["y_embedder.embedding_table.weight"]
    if y is None:
        y = torch.full((b,), table.shape[0] - 1, dtype=torch.long)
    cond = t_emb + table[y][:, None, :]  # (B, N, D)

    k = 0
    while f"blocks.{k}.attn.qkv.weight" in sd:
        pre = f"blocks.{k}"
        mod = linear(silu(cond), sd, f"{pre}.adaLN_modulation.1")  # (B, N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mod[..., r * d : (r + 1) * d] for r in range(6))
        h = layer_norm(tokens) * (1 + scale_msa) + shift_msa
        att = torch.stack([attention(h[s], sd, f"{pre}.attn", num_heads) for s in range(b)])
        tokens = tokens + gate_msa * att
        h = layer_norm(tokens) * (1 + scale_mlp) + shift_mlp
        mlp = linear(gelu_tanh(linear(h, sd, f"{pre}.mlp.fc1")), sd, f"{pre}.mlp.fc2")
        tokens = tokens + gate_mlp * mlp
        k += 1

    mod = linear(silu(cond), sd, "final_layer.adaLN_modulation.1")  # (B, N, 2D)
    shift, scale = mod[..., :d], mod[..., d:]
    out = linear(layer_norm(tokens) * (1 + scale) + shift, sd, "final_layer.linear")  # (B, N, p*p*C_out)

    # Unpatchify: token (i, j), in-patch (a, b), channel ch -> pixel (ch, i*p + a, j*p + b);
    # the token's features are laid out as (a, b, ch).
    c_out = out.shape[-1] // (p * p)
    img = torch.zeros(b, c_out, hh, ww, dtype=F64)
    for i in range(gh):
        for j in range(gw):
            for a in range(p):
                for bb in range(p):
                    for ch in range(c_out):
                        img[:, ch, i * p + a, j * p + bb] = out[:, i * gw + j, (a * p + bb) * c_out + ch]
    if head:
        return img[:, :c], img[:, c : c + 1]
    return img[:, :c], None


# --------------------------------------------------------------------------------------------
# docs/method.md §4: training objective
# --------------------------------------------------------------------------------------------
def patch_times_to_pixels(t: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """(B,) or (B, N) -> (B, 1, H, W): every pixel of patch (i, j) gets t[:, i*w + j]."""
    b = t.shape[0]
    gw = width // patch_size
    out = torch.zeros(b, 1, height, width, dtype=t.dtype)
    for r in range(height):
        for col in range(width):
            out[:, 0, r, col] = t if t.ndim == 1 else t[:, (r // patch_size) * gw + col // patch_size]
    return out


def ref_training_loss(net: Callable, x1: Tensor, x0: Tensor, t: Tensor, y: Tensor | None, patch_size: int, lam: float = 0.01):
    """(loss, flow, nll) of docs/method.md §4 with ``net(x, t, y) -> (v, logvar or None)``."""
    tp = patch_times_to_pixels(t.to(F64), patch_size, x1.shape[-2], x1.shape[-1])
    xt = tp * x1 + (1 - tp) * x0
    u = x1 - x0
    v, logvar = net(xt, t, y)
    flow = ((v - u) ** 2).mean()
    if logvar is None:
        return flow, flow, torch.zeros((), dtype=F64)
    sigma = torch.clamp(torch.exp(logvar / 2), math.exp(-15.0), math.exp(10.0))  # (B, 1, H, W)
    nll = 0.5 * (math.log(2 * math.pi) + 2 * torch.log(sigma) + (u - v.detach()) ** 2 / sigma**2)  # (B, C, H, W)
    nll = nll.mean()
    return flow + lam * nll, flow, nll


# --------------------------------------------------------------------------------------------
# docs/method.md §5: guidance, mask, samplers
# --------------------------------------------------------------------------------------------
class RefGuide:
    """``G(x, t) -> (v, logvar, v_cond)``; one network call per evaluation, counted in ``nfe``."""

    def __init__(self, net: Callable, labels: Tensor | None, w: float, null: int | None):
        self.net, self.labels, self.w, self.null = net, labels, float(w), null
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor):
        self.nfe += 1
        if self.w == 1.0:
            v, logvar = self.net(x, t, self.labels)
            return v, logvar, v
        b = x.shape[0]
        labels = torch.cat([torch.full((b,), self.null, dtype=torch.long), self.labels])  # null FIRST
        v, logvar = self.net(torch.cat([x, x]), torch.cat([t, t]), labels)
        v_u, v_c = v[:b], v[b:]
        guided_v = v_u + self.w * (v_c - v_u)
        guided_l = None
        if logvar is not None:
            l_u, l_c = logvar[:b], logvar[b:]
            guided_l = l_u + self.w * (l_c - l_u)
        return guided_v, guided_l, v_c


def ref_difficulty_mask(logvar: Tensor, patch_size: int, p_frac: float) -> Tensor:
    """(B, 1, H, W) bool, True = CERTAIN: patch-mean of exp(logvar) strictly below its quantile."""
    d = torch.exp(logvar.to(F64))
    b, _, hh, ww = d.shape
    p = patch_size
    pooled = torch.zeros_like(d)
    for s in range(b):
        for i in range(hh // p):
            for j in range(ww // p):
                block = d[s, 0, i * p : (i + 1) * p, j * p : (j + 1) * p]
                pooled[s, 0, i * p : (i + 1) * p, j * p : (j + 1) * p] = block.sum() / (p * p)
    certain = torch.zeros_like(d, dtype=torch.bool)
    for s in range(b):
        tau = torch.quantile(pooled[s].flatten(), p_frac)  # linear interpolation, float64
        certain[s] = pooled[s] < tau
    return certain


def ref_time_grid(steps: int) -> tuple[Tensor, Tensor]:
    """(float64 grid, float32 grid): the authors build ``linspace(0, 1, S+1)`` in float32."""
    g32 = torch.linspace(0, 1, steps + 1, dtype=torch.float32)
    return g32.to(F64), g32


def patch_mean(m: Tensor, patch_size: int) -> Tensor:
    """(B, 1, H, W) -> (B, N) row-major patch means, by loops."""
    b, _, hh, ww = m.shape
    p = patch_size
    gw = ww // p
    out = torch.zeros(b, (hh // p) * gw, dtype=m.dtype)
    for i in range(hh // p):
        for j in range(gw):
            out[:, i * gw + j] = m[:, 0, i * p : (i + 1) * p, j * p : (j + 1) * p].reshape(b, -1).mean(dim=1)
    return out


def ref_euler(net, noise, steps, *, labels=None, w=1.0, null=None, per_patch=False, patch_size=2):
    """Euler: global time (B,) (``euler``) or all-equal per-patch time (B, N) (``euler-pf``)."""
    grid, _ = ref_time_grid(steps)
    guide = RefGuide(net, labels, w, null)
    x = noise.clone()
    b = x.shape[0]
    n = (x.shape[-2] // patch_size) * (x.shape[-1] // patch_size)
    for k in range(steps):
        t = torch.full((b, n), float(grid[k]), dtype=F64) if per_patch else torch.full((b,), float(grid[k]), dtype=F64)
        v, _, _ = guide(x, t)
        x = x + (grid[k + 1] - grid[k]) * v
    return x, guide.nfe


def ref_dual_loop(net, noise, steps, *, labels=None, w=1.0, null=None, patch_size=2, p_frac=0.4, n_inner=4):
    grid, _ = ref_time_grid(steps)
    guide = RefGuide(net, labels, w, null)
    x = noise.clone()
    b = x.shape[0]
    n = (x.shape[-2] // patch_size) * (x.shape[-1] // patch_size)
    for k in range(steps):
        t_k = grid[k]
        big = grid[k + 1] - grid[k]
        small = big / n_inner
        v, logvar, _ = guide(x, torch.full((b, n), float(t_k), dtype=F64))
        certain = ref_difficulty_mask(logvar, patch_size, p_frac)
        x = torch.where(certain, x + big * v, x + small * v)
        T = torch.where(certain, t_k + big, t_k + small).to(F64)  # (B, 1, H, W)
        for _ in range(n_inner - 1):
            v, _, _ = guide(x, patch_mean(T, patch_size))
            x = torch.where(certain, x, x + small * v)
            T = torch.where(certain, T, T + small)
    return x, guide.nfe


def ref_look_ahead(net, noise, steps, *, labels=None, w=1.0, null=None, patch_size=2, p_frac=0.4, rho=1.4):
    grid, g32 = ref_time_grid(steps)
    warm_limit = torch.tensor(0.05, dtype=torch.float32)
    guide = RefGuide(net, labels, w, null)
    x = noise.clone()
    b = x.shape[0]
    n = (x.shape[-2] // patch_size) * (x.shape[-1] // patch_size)
    for k in range(steps):
        t_k = float(grid[k])
        big = grid[k + 1] - grid[k]
        v, logvar, v_c = guide(x, torch.full((b, n), t_k, dtype=F64))
        if bool(g32[k] <= warm_limit):  # warm-up, compared in float32: conditional velocity
            x = x + big * v_c
            continue
        certain = ref_difficulty_mask(logvar, patch_size, p_frac)
        delta = min(rho * t_k, 1.0) - t_k
        x_ctx = torch.where(certain, x + delta * v_c, x)
        certain_patch = patch_mean(certain.to(F64), patch_size) > 0.5  # (B, N)
        t_ctx = torch.where(certain_patch, t_k + delta, t_k).to(F64)
        v_ctx, _, _ = guide(x_ctx, t_ctx)
        x = torch.where(certain, x + big * v, x + big * v_ctx)
    return x, guide.nfe


def ref_nfe(sampler: str, steps: int, n_inner: int = 4) -> int:
    """NFE of docs/method.md §5.8, counted from the float32 grid."""
    if sampler in ("euler", "euler-pf"):
        return steps
    if sampler in ("dual-loop", "random-dual-loop"):
        return steps * n_inner
    _, g32 = ref_time_grid(steps)
    warm = int((g32[:-1] <= torch.tensor(0.05, dtype=torch.float32)).sum())
    return warm + 2 * (steps - warm)
