"""Cost of one class-conditional training step (the paper's network and objective): this project's step
against a literal reference-style step with the same weights, side by side, CPU float32.

    OMP_NUM_THREADS=1 python benchmarks/train_step_cost.py                  # width 384, 4 blocks, 256 tokens, batch 8
    OMP_NUM_THREADS=1 python benchmarks/train_step_cost.py --depth 12 --batch 16 --repeats 30

A step is forward, loss, backward, gradient-norm clipping at 1.0 and an AdamW update. The
reference-style network (``ReferenceStyleNet`` below) computes what the method describes,
token by token, as DiT/SiT code does it: the time embedding of every token, ``c = t_emb + y_emb``
of shape (B, N, D), and every block's ``SiLU -> Linear(D, 6D)`` applied to that (B, N, D) tensor.
Our step is ``patchforcing.training_loss`` on ``PatchForcingTransformer``. Both steps start from
the same weights and see the same batches; the losses agree (printed, float64).

A third step, ours with the per-token modulation gathered through an identity index (what this
project did before), shows what skipping that copy saves. With ``--compiled``, a fourth: ours with
the blocks compiled (``train --compile``) and AdamW's fused CPU kernel, the fastest step this
project can take on a CPU without changing the arithmetic of the matrix products. Reported: median seconds per step of
each, and the median and quartiles of the round-by-round ratios to the reference (every round runs both back to back, every other round in reverse order,
so load on a shared machine hits both sides of a pair). Seconds are this process's CPU time by
default (``--clock cpu``; with one thread, other jobs do not inflate it) or wall time.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line, describe_machine, interleaved_times, paired_ratios  # noqa: E402
from patchforcing.flow import interpolate
from patchforcing.loss import gaussian_nll  # noqa: E402
from patchforcing.training.distributed import compile_network  # noqa: E402


class ReferenceStyleNet(nn.Module):
    """The network as the method writes it, per token; same parameter names as ours (loads our weights)."""

    def __init__(self, net: pf.PatchForcingTransformer):
        super().__init__()
        cfg = net.config
        self.p, self.heads, self.c_in, self.grid = cfg.patch_size, cfg.num_heads, cfg.in_channels, cfg.grid_size
        self.x_embedder, self.t_embedder, self.y_embedder = net.x_embedder, net.t_embedder, net.y_embedder
        self.pos_embed, self.blocks, self.final_layer = net.pos_embed, net.blocks, net.final_layer

    def _attn(self, a, x):
        b, n, d = x.shape
        qkv = a.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return a.proj(F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, d))

    def forward(self, x, t, y):
        """x (B, C, H, W), t (B, N), y (B,) -> velocity (B, C, H, W), logvar (B, 1, H, W)."""
        z = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[..., None] * freqs
        c = self.t_embedder.mlp(torch.cat([args.cos(), args.sin()], -1).to(z.dtype))  # (B, N, D): one per token
        c = c + self.y_embedder.embedding_table(y)[:, None]
        for blk in self.blocks:
            s1, c1, g1, s2, c2, g2 = blk.adaLN_modulation(c).chunk(6, dim=-1)  # (B, N, D) each
            z = z + g1 * self._attn(blk.attn, blk.norm1(z) * (1 + c1) + s1)
            z = z + g2 * blk.mlp(blk.norm2(z) * (1 + c2) + s2)
        fl = self.final_layer
        shift, scale = fl.adaLN_modulation(c).chunk(2, dim=-1)
        o = fl.linear(fl.norm_final(z) * (1 + scale) + shift)  # (B, N, p*p*C_out)
        b, g, p = x.shape[0], self.grid, self.p
        o = torch.einsum("nhwpqc->nchpwq", o.reshape(b, g, g, p, p, -1)).reshape(b, -1, g * p, g * p)
        return o[:, : self.c_in], o[:, self.c_in :]


def reference_loss(net, x1, x0, t, y, p):
    xt = interpolate(x0, x1, t, p)
    u = x1 - x0
    v, logvar = net(xt, t, y)
    flow = (v - u).pow(2).mean()
    return flow + 0.01 * gaussian_nll(u, v.detach(), logvar).mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=384)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--input-size", type=int, default=32, help="32 with patch 2 gives 256 tokens")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--compiled", action="store_true", help="also time ours with compiled blocks and fused AdamW (compiles for about 30 s)")
    args = ap.parse_args()
    size = dict(depth=args.depth, hidden_size=args.hidden_size, num_heads=args.heads, input_size=args.input_size,
                in_channels=4, num_classes=1000)
    torch.manual_seed(0)
    ours = pf.create_model("PF-S/2", **size)
    with torch.no_grad():
        for prm in ours.parameters():
            if prm.requires_grad:
                prm.normal_(0, 0.02)
    ref_base = pf.create_model(ours.config)
    ref_base.load_state_dict(ours.state_dict())
    ref = ReferenceStyleNet(ref_base)
    ours.train(), ref.train()
    b, n, p = args.batch, ours.num_patches, ours.patch_size
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(b, 4, args.input_size, args.input_size, generator=g), torch.randn(b, 4, args.input_size, args.input_size, generator=g),
                torch.rand(b, n, generator=g), torch.randint(0, 1001, (b,), generator=g)) for _ in range(4)]

    # 1. the same loss (float64 copies, before any update)
    x1, x0, t, y = (v.double() if v.is_floating_point() else v for v in batches[0])
    ours64 = pf.create_model(ours.config).double()
    ours64.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    with torch.no_grad():
        mine = pf.training_loss(ours64, x1, x0=x0, t=t, labels=y, label_dropout=False)["loss"]
        theirs = reference_loss(ReferenceStyleNet(ours64), x1, x0, t, y, p)
    print(f"float64 agreement of the loss with the reference-style step: |diff| = {abs(float(mine - theirs)):.2e}")

    def stepper(net, loss_fn, fused=None):
        params = [q for q in net.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=fused)
        count = {"i": 0}

        def fn():
            x1, x0, t, y = batches[count["i"] % len(batches)]
            count["i"] += 1
            opt.zero_grad(set_to_none=True)
            loss_fn(x1, x0, t, y).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return fn

    gathered = pf.create_model(ours.config)  # the former per-token path: an identity index_select per modulation
    gathered.load_state_dict(ours.state_dict())
    gathered.train()
    gathered._conditioning = _with_identity_gather(gathered._conditioning)
    fns = {
        "reference-style": stepper(ref, lambda x1, x0, t, y: reference_loss(ref, x1, x0, t, y, p)),
        "ours": stepper(ours, lambda x1, x0, t, y: pf.training_loss(ours, x1, x0=x0, t=t, labels=y, label_dropout=False)["loss"]),
        "ours-gather": stepper(gathered, lambda x1, x0, t, y: pf.training_loss(gathered, x1, x0=x0, t=t, labels=y,
                                                                                label_dropout=False)["loss"]),
    }
    if args.compiled:
        compiled = compile_network(pf.create_model(ours.config))
        compiled.load_state_dict(ours.state_dict())
        compiled.train()
        fns["ours-compiled"] = stepper(compiled, lambda x1, x0, t, y: pf.training_loss(compiled, x1, x0=x0, t=t, labels=y,
                                                                                      label_dropout=False)["loss"], fused=True)
    times = interleaved_times(fns, repeats=args.repeats, clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    print(f"# {command_line()}")
    print(f"# {describe_machine()}; PF width {args.hidden_size}, {args.depth} blocks, {n} tokens, batch {b}, AdamW + clip 1.0")
    print(f"# {args.clock} seconds per step (medians of {args.repeats} interleaved rounds); ratios to the reference-style "
          "step: median and quartiles of the per-round ratios")
    print(f"{'step':<46} {'s':>8} {'/ ref':>7} {'quartiles':>14}")
    print(f"{'reference-style (per token, as the method)':<46} {statistics.median(times['reference-style']):>8.4f}")
    rows = [("ours", "ours (no gather on the per-token path)"), ("ours-gather", "ours with the former identity gather")]
    rows += [("ours-compiled", "ours, blocks compiled + fused AdamW")] if args.compiled else []
    for key, label in rows:
        q1, ratio, q3 = paired_ratios(times[key], times["reference-style"])
        print(f"{label:<46} {statistics.median(times[key]):>8.4f} {ratio:>7.3f} {q1:>6.3f}-{q3:.3f}")
    q1, ratio, q3 = paired_ratios(times["ours"], times["ours-gather"])
    print(f"ours / ours with the gather: {ratio:.3f} ({q1:.3f}-{q3:.3f}); target ours / ref <= 0.95")


def _with_identity_gather(conditioning):
    """Wrap ``_conditioning`` so the per-token path gathers its (B*N, D) rows through an identity index."""
    from patchforcing.models.transformer import Conditioning

    def wrapped(t, y):
        c = conditioning(t, y)
        if c.vectors.ndim != 3:
            return c
        b, n, d = c.vectors.shape
        return Conditioning(c.vectors.reshape(b * n, d), torch.arange(b * n, device=t.device).view(b, n))
    return wrapped


if __name__ == "__main__":
    main()
