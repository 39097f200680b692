"""Cost of one text-to-image forward (docs/method.md §8.7): this project's network against a literal
reference-style forward with the same weights, side by side, CPU float32.

    OMP_NUM_THREADS=1 python benchmarks/t2i_forward_cost.py                  # width 384, 4 blocks, 256 tokens, 64 text tokens
    OMP_NUM_THREADS=1 python benchmarks/t2i_forward_cost.py --preset T2I-B/2 --text-length 256 --batch 1 --repeats 3

The reference-style forward (``reference_style_forward`` below) is what the reference computes at
every call: the text projection and refiner, one time embedding and one AdaRMSNorm gain per
TOKEN, the text keys and values of every block, RoPE tables from the positions. Our network gives
the same numbers (checked in float64 first) but reuses the refined text and the text keys while
the prompt does not change (sampling) and evaluates the time path once per distinct time.

Cases (each reported as median seconds per call, and as the median and quartiles of the
round-by-round ratios to the reference-style forward; every round runs all calls back to back,
every other round in reverse order, so load on a shared machine hits both sides of a pair). The
seconds are this process's CPU time by default (``--clock cpu``; with one thread the compute time,
which other jobs on a shared machine do not inflate), or wall time with ``--clock wall``:
  * train: per-patch times all distinct, a new text at every call for both (nothing to reuse);
  * euler: one time per sample, the same text at every call (a sampling step);
  * look-ahead: two times per sample, the same text (look-ahead / dual-loop steps).
Text encoding itself is not part of a forward; see benchmarks/t2i_text_cost.py.
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

sys.path.insert(0, os.path.dirname(__file__))
from common import command_line, describe_machine, interleaved_times, paired_ratios  # noqa: E402
from patchforcing.models import create_model  # noqa: E402


def _rms(x, g):
    return x * g * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _heads(x, d):
    b, n, _ = x.shape
    return x.view(b, n, -1, d).transpose(1, 2)


def _cos(x, s):
    return x * s.sqrt()[:, None, None] * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _rope(x, theta):
    m = theta.shape[-1]
    c, s = theta.cos(), theta.sin()
    return torch.cat([x[..., :m] * c - x[..., m : 2 * m] * s, x[..., m : 2 * m] * c + x[..., :m] * s, x[..., 2 * m :]], -1)


def _swiglu(x, w):
    a, g = (x @ w.T).chunk(2, -1)
    return a * F.silu(g)


def reference_style_forward(sd: dict, x, t, y, *, p: int, head_dim: int, txt_head_dim: int):
    """docs/method.md §8.7 as the reference evaluates it at every call (per-token time path, text refined each call)."""
    b, c_in, hh, ww = x.shape
    h, w = hh // p, ww // p
    # text: projection and refiner
    txt = y @ sd["txt_proj.weight"].T + sd["txt_proj.bias"]
    pos_t = torch.arange(y.shape[1], dtype=x.dtype)
    r = 0
    while f"txt_refiner.{r}.ff.norm.scale" in sd:
        pre = f"txt_refiner.{r}"
        u = _rms(txt, sd[f"{pre}.self_attn.norm.scale"])
        q, k, v = (_heads(z, txt_head_dim) for z in (u @ sd[f"{pre}.self_attn.qkv_proj.weight"].T).chunk(3, -1))
        s, theta = sd[f"{pre}.self_attn.scale"], pos_t[None, :, None] * sd[f"{pre}.self_attn.pos_emb.freqs"][:, None, :]
        o = F.scaled_dot_product_attention(_rope(_cos(q, s), theta), _rope(_cos(k, s), theta), v, scale=1.0)
        txt = txt + o.transpose(1, 2).reshape(txt.shape) @ sd[f"{pre}.self_attn.out_proj.weight"].T
        txt = txt + _swiglu(_rms(txt, sd[f"{pre}.ff.norm.scale"]), sd[f"{pre}.ff.up_proj.weight"]) @ sd[f"{pre}.ff.down_proj.weight"].T
        r += 1
    # time, one embedding per token
    f = 2 * math.pi * t[..., None] @ sd["t_embedder.time_emb.weight"].T
    e = torch.cat([f.cos(), f.sin()], -1) @ sd["t_embedder.time_in_proj.weight"].T
    e = _rms(e, sd["t_embedder.mapping.in_norm.scale"])
    k_ = 0
    while f"t_embedder.mapping.blocks.{k_}.norm.scale" in sd:
        pre = f"t_embedder.mapping.blocks.{k_}"
        e = e + _swiglu(_rms(e, sd[f"{pre}.norm.scale"]), sd[f"{pre}.up_proj.weight"]) @ sd[f"{pre}.down_proj.weight"].T
        k_ += 1
    cond = _rms(e, sd["t_embedder.mapping.out_norm.scale"])  # (B, N, M)
    # positions: patch centres on [-1, 1]
    rows = (-1 + (2 * torch.arange(h, dtype=x.dtype) + 1) / h)
    cols = (-1 + (2 * torch.arange(w, dtype=x.dtype) + 1) / w)
    pos = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
    z = x.view(b, c_in, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, -1) @ sd["merge.proj.weight"].T
    k_ = 0
    while f"blocks.{k_}.ff.up_proj.weight" in sd:
        pre = f"blocks.{k_}"
        fr = sd[f"{pre}.self_attn.pos_emb.freqs"]
        theta = torch.cat([pos[None, :, :1] * fr[0][:, None, :], pos[None, :, 1:] * fr[1][:, None, :]], -1)
        u = _rms(z, 1 + cond @ sd[f"{pre}.self_attn.norm.linear.weight"].T)
        q, k, v = (_heads(a, head_dim) for a in (u @ sd[f"{pre}.self_attn.qkv_proj.weight"].T).chunk(3, -1))
        s = sd[f"{pre}.self_attn.scale"]
        o = F.scaled_dot_product_attention(_rope(_cos(q, s), theta), _rope(_cos(k, s), theta), v, scale=1.0)
        z = z + o.transpose(1, 2).reshape(z.shape) @ sd[f"{pre}.self_attn.out_proj.weight"].T
        u = _rms(z, 1 + cond @ sd[f"{pre}.cross_attn.norm.linear.weight"].T)
        kv = _rms(txt, sd[f"{pre}.cross_attn.norm_cross.scale"]) @ sd[f"{pre}.cross_attn.kv_proj.weight"].T
        k, v = (_heads(a, head_dim) for a in kv.chunk(2, -1))
        s = sd[f"{pre}.cross_attn.scale"]
        o = F.scaled_dot_product_attention(_rope(_cos(_heads(u @ sd[f"{pre}.cross_attn.q_proj.weight"].T, head_dim), s), theta), _cos(k, s), v, scale=1.0)
        z = z + o.transpose(1, 2).reshape(z.shape) @ sd[f"{pre}.cross_attn.out_proj.weight"].T
        u = _rms(z, 1 + cond @ sd[f"{pre}.ff.norm.linear.weight"].T)
        z = z + _swiglu(u, sd[f"{pre}.ff.up_proj.weight"]) @ sd[f"{pre}.ff.down_proj.weight"].T
        k_ += 1
    o = _rms(z, sd["split.norm.scale"]) @ sd["split.proj.weight"].T
    o = o.view(b, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, hh, ww)
    return o[:, :c_in], o[:, c_in:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="T2I-B/2")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--hidden-dim", type=int, default=384)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--txt-in-dim", type=int, default=512)
    ap.add_argument("--text-length", type=int, default=64)
    ap.add_argument("--input-size", type=int, default=32, help="32 with patch 2 gives 256 tokens")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="cpu: process CPU time (robust to other jobs); wall: elapsed time")
    ap.add_argument("--full-size", action="store_true", help="the preset's own sizes (ignore --depth/--hidden-dim/...)")
    ap.add_argument("--profile", type=int, default=0, metavar="CALLS",
                    help="also profile CALLS training-case calls of each (torch.profiler): CPU time and the matrix products' share")
    args = ap.parse_args()
    torch.manual_seed(0)
    sizes = {} if args.full_size else dict(depth=args.depth, hidden_dim=args.hidden_dim, head_dim=args.head_dim, txt_in_dim=args.txt_in_dim,
                                           txt_refiner_dim=args.hidden_dim, txt_refiner_head_dim=args.head_dim, mapping_dim=args.hidden_dim // 2)
    net = create_model(args.preset, input_size=args.input_size, in_channels=4, **sizes).eval()
    with torch.no_grad():
        for name, prm in net.named_parameters():
            if prm.requires_grad:
                base = 10.0 if name.endswith("attn.scale") else 1.0 if name.endswith("scale") else 0.0  # temperatures, gains
                prm.normal_(0, 0.05).add_(base)
    cfg = net.config
    b, n = args.batch, net.num_patches
    x = torch.randn(b, 4, args.input_size, args.input_size)
    y = torch.randn(b, args.text_length, cfg.txt_in_dim)
    t_one = torch.rand(b)[:, None].expand(b, n).contiguous()
    t_two = torch.where(torch.rand(b, n) < 0.4, t_one + 0.1, t_one)
    t_all = torch.rand(b, n)
    kw = dict(p=cfg.patch_size, head_dim=cfg.head_dim, txt_head_dim=cfg.txt_refiner_head_dim)

    # 1. the same numbers in float64
    sd64 = {k: v.double() for k, v in net.state_dict().items()}
    net64 = create_model(cfg).double().eval()
    net64.load_state_dict(sd64)
    with torch.no_grad():
        ours = net64(x.double(), t_two.double(), y.double())
        ref = reference_style_forward(sd64, x.double(), t_two.double(), y.double(), **kw)
    err = max((ours.velocity - ref[0]).abs().max().item(), (ours.logvar - ref[1]).abs().max().item())
    print(f"float64 agreement with the reference-style forward: max |diff| = {err:.2e}")

    sd = dict(net.state_dict())
    ys = [y + 1e-3 * (i + 1) for i in range(args.repeats + 3)]  # a new text per call for the training case, never y
    counter = {"i": 0}

    def ours_fn(t, same_text):
        def fn():
            with torch.no_grad():
                net(x, t, y if same_text else ys[counter["i"] % len(ys)])
            counter["i"] += 1
        return fn

    def ref_fn(t, same_text):
        def fn():
            with torch.no_grad():
                reference_style_forward(sd, x, t, y if same_text else ys[counter["i"] % len(ys)], **kw)
        return fn

    cases = {"train": (t_all, False), "euler": (t_one, True), "look-ahead": (t_two, True)}
    fns = {}
    for name, (t, same) in cases.items():
        fns[f"{name}/reference-style"] = ref_fn(t, same)
        fns[f"{name}/ours"] = ours_fn(t, same)
    times = interleaved_times(fns, repeats=args.repeats, clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# {command_line()}")
    print(f"# {describe_machine()}; {args.preset} depth {cfg.depth}, width {cfg.hidden_dim}, head {cfg.head_dim}, "
          f"{n} image tokens, {args.text_length} text tokens of width {cfg.txt_in_dim}, batch {b}")
    print(f"# {args.clock} seconds per call (medians of {args.repeats} interleaved rounds); ours / ref: median and quartiles of the per-round ratios")
    print(f"{'case':<12} {'reference-style s':>18} {'ours s':>10} {'ours / ref':>11} {'quartiles':>14}")
    for name in cases:
        ref_s, ours_s = times[f"{name}/reference-style"], times[f"{name}/ours"]
        q1, ratio, q3 = paired_ratios(ours_s, ref_s)
        print(f"{name:<12} {med[f'{name}/reference-style']:>18.4f} {med[f'{name}/ours']:>10.4f} {ratio:>11.3f} {q1:>6.3f}-{q3:.3f}")
    if args.profile:
        for name in ("train/reference-style", "train/ours"):
            total, mm = profile_cpu(fns[name], args.profile)
            print(f"# profile {name}: {total / args.profile:.4f} s of CPU per call, matrix products {mm / total:.0%} of it")


def profile_cpu(fn, calls: int) -> tuple[float, float]:
    """CPU seconds of ``calls`` calls of ``fn`` under torch.profiler, in all and in matrix products."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
    return total, mm


if __name__ == "__main__":
    main()
