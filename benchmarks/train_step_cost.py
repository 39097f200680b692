"""Cost of one class-conditional training step (the paper's network and objective): this project's step
against a literal reference-style step with the same weights, side by side, CPU float32
(``benchmarks/gpu_check.py`` runs the same two steps on a GPU in bf16).

    OMP_NUM_THREADS=1 python benchmarks/train_step_cost.py                  # width 384, 4 blocks, 256 tokens, batch 8
    OMP_NUM_THREADS=1 python benchmarks/train_step_cost.py --depth 12 --batch 16 --repeats 30

A step is what a trainer runs: forward, loss, backward, gradient-norm clipping at 1.0, AdamW
(PyTorch's default in both on a CPU; ours takes the fused kernel on CUDA), and the EMA update
(ours: one fused lerp over all weights; the reference trainer's: ``mul_`` then ``add_`` per
parameter). Ours is ``patchforcing.training.step.train_step``, the step ``train`` runs, with the
optimizer, warm-up schedule and EMA that ``train`` builds for the ``imagenet-b2`` preset (lr 1e-4,
EMA decay 0.9999, clip 1.0). The reference-style network (``ReferenceStyleNet`` below)
computes what the method describes, token by token, as DiT/SiT code does it: the time embedding
of every token, ``c = t_emb + y_emb`` of shape (B, N, D), and every block's ``SiLU -> Linear(D, 6D)``
applied to that (B, N, D) tensor inside the block, attention as timm's (fused qkv, ``unbind``,
SDPA). Our loss is ``patchforcing.loss.example_loss`` on ``PatchForcingTransformer``. Both steps start
from the same weights and see the same batches; the losses agree (printed, float64).

A third step, ours with the per-token modulation gathered through an identity index (what this
project did before), shows what skipping that copy saves. With ``--compiled``, both steps also
run compiled region by region with inductor: ours as ``train --compile`` does it (the blocks and
the final layer), the reference-style one as the reference's ``compile: true`` configurations do
(each block and the final layer, modulation product inside); the compiled ratio pairs the two.
With ``--as-processes``, the two steps also run each in its own process, set up as its trainer sets
its process up: ours with the allocator ``patchforcing train`` sets on a CPU
(``runtime.steady_cpu_allocator``), the reference-style one with glibc's defaults (the reference
trainer sets none); the parent sends one step to each per round, never both at once.
Reported: median seconds per step of each, the median and quartiles of the round-by-round
ratios (every round runs all steps back to back, every other round in reverse order, so load on a
shared machine hits both sides of a pair), and the share of one profiled step spent in matrix
products. Seconds are this process's CPU time by default (``--clock cpu``; with one thread, other
jobs do not inflate it) or wall time.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line, describe_machine, interleaved_times, paired_ratios  # noqa: E402
from patchforcing import runtime  # noqa: E402
from patchforcing.flow import interpolate  # noqa: E402
from patchforcing.loss import Example, gaussian_nll  # noqa: E402
from patchforcing.training import resolve_config  # noqa: E402
from patchforcing.training.distributed import compile_network  # noqa: E402
from patchforcing.training.step import make_ema_and_optimizer, step_options, train_step  # noqa: E402


class _LiteralBlock(nn.Module):
    """One block as the reference writes it: its own ``SiLU -> Linear(D, 6D)`` on the per-token ``c``
    inside the block (so a compiled block holds the modulation product too, as the reference compiles it)."""

    def __init__(self, blk: nn.Module, heads: int):
        super().__init__()
        self.blk, self.heads = blk, heads

    def forward(self, z, c):
        blk = self.blk
        s1, c1, g1, s2, c2, g2 = blk.adaLN_modulation(c).chunk(6, dim=-1)  # (B, N, D) each
        z = z + g1 * self._attn(blk.attn, blk.norm1(z) * (1 + c1) + s1)
        return z + g2 * blk.mlp(blk.norm2(z) * (1 + c2) + s2)

    def _attn(self, a, x):
        b, n, d = x.shape
        q, k, v = a.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)  # as timm's Attention
        return a.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _LiteralFinal(nn.Module):
    def __init__(self, fl: nn.Module):
        super().__init__()
        self.fl = fl

    def forward(self, z, c):
        shift, scale = self.fl.adaLN_modulation(c).chunk(2, dim=-1)
        return self.fl.linear(self.fl.norm_final(z) * (1 + scale) + shift)  # (B, N, p*p*C_out)


class ReferenceStyleNet(nn.Module):
    """The network as the method writes it, per token; same parameter names as ours (loads our weights).

    ``compile_options`` (a dict, e.g. ``{}`` or ``{"backend": "aot_eager"}``): compile every block and
    the final layer with ``torch.compile(fullgraph=True, **compile_options)``, each region holding
    its own modulation product, as the reference's ``compile: true`` configurations do.
    """

    def __init__(self, net: pf.PatchForcingTransformer, compile_options: dict | None = None):
        super().__init__()
        cfg = net.config
        self.p, self.c_in, self.grid = cfg.patch_size, cfg.in_channels, cfg.grid_size
        self.x_embedder, self.t_embedder, self.y_embedder = net.x_embedder, net.t_embedder, net.y_embedder
        self.pos_embed, self.blocks, self.final_layer = net.pos_embed, net.blocks, net.final_layer
        # plain lists, not submodules: the weights stay registered (and named) under blocks / final_layer
        self._regions = [_LiteralBlock(blk, cfg.num_heads) for blk in net.blocks] + [_LiteralFinal(net.final_layer)]
        if compile_options is not None:
            for region in self._regions:
                region.compile(fullgraph=True, **compile_options)

    def forward(self, x, t, y):
        """x (B, C, H, W), t (B, N), y (B,) -> velocity (B, C, H, W), logvar (B, 1, H, W)."""
        z = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D), as timm's PatchEmbed: a transposed view
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[..., None] * freqs
        c = self.t_embedder.mlp(torch.cat([args.cos(), args.sin()], -1).to(z.dtype))  # (B, N, D): one per token
        c = c + self.y_embedder.embedding_table(y)[:, None]
        for region in self._regions[:-1]:
            z = region(z, c)
        o = self._regions[-1](z, c)  # (B, N, p*p*C_out)
        b, g, p = x.shape[0], self.grid, self.p
        o = torch.einsum("nhwpqc->nchpwq", o.reshape(b, g, g, p, p, -1)).reshape(b, -1, g * p, g * p)
        return o[:, : self.c_in], o[:, self.c_in :]


@torch.no_grad()
def reference_ema_update(ema: nn.Module, net: nn.Module, decay: float = 0.9999) -> None:
    """The reference trainer's EMA step: per named parameter, ``mul_(decay)`` then ``add_`` (two passes each)."""
    ema_params = dict(ema.named_parameters())
    for name, prm in net.named_parameters():
        if prm.requires_grad:
            ema_params[name].mul_(decay).add_(prm.data, alpha=1 - decay)


def reference_loss(net, x1, x0, t, y, p):
    xt = interpolate(x0, x1, t, p)
    u = x1 - x0
    v, logvar = net(xt, t, y)
    flow = (v - u).pow(2).mean()
    return flow + 0.01 * gaussian_nll(u, v.detach(), logvar).mean()


def training_step(net, batches, loss_fn, ema_update, optimizer, device: torch.device | None = None):
    """The reference-style step as its trainer runs it, cycling through ``batches`` of ``(x1, x0, t, y)``:
    zero grads, forward + loss (under bf16 autocast on CUDA), backward, clip at 1.0, the trainer's AdamW
    (``optimizer(params, **hyper)``), its EMA update; on CUDA it waits for the device before returning."""
    params = [q for q in net.parameters() if q.requires_grad]
    opt = optimizer(params, lr=1e-4, weight_decay=0.0)
    cuda = device is not None and device.type == "cuda"
    count = {"i": 0}

    def fn():
        x1, x0, t, y = batches[count["i"] % len(batches)]
        count["i"] += 1
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(x1, x0, t, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update()
        if cuda:
            torch.cuda.synchronize(device)
    return fn


def ours_step(net: pf.PatchForcingTransformer, batches, device: torch.device | None = None):
    """This project's step, cycling through ``batches``: ``train_step`` with the optimizer (AdamW, fused on
    CUDA), schedule and ``EMA`` (one fused lerp) that ``train`` builds for ``imagenet-b2``; on CUDA it
    waits for the device before returning."""
    device = device if device is not None else torch.device("cpu")
    cfg = resolve_config("imagenet-b2")
    ema, optimizer, scheduler = make_ema_and_optimizer(net, cfg)
    options = step_options(cfg, device)  # bf16 autocast on CUDA, clip 1.0
    count = {"i": 0}

    def fn():
        example = Example(*batches[count["i"] % len(batches)])
        count["i"] += 1
        train_step(net, ema, optimizer, example, scheduler=scheduler, **options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return fn


def reference_step(net: ReferenceStyleNet, batches, device: torch.device | None = None):
    """The reference-style step: its loss, PyTorch's default AdamW and its trainer's per-parameter EMA."""
    ema = copy.deepcopy(net)
    return training_step(net, batches, lambda x1, x0, t, y: reference_loss(net, x1, x0, t, y, net.p),
                         lambda: reference_ema_update(ema, net), torch.optim.AdamW, device)


def build(args) -> tuple[pf.PatchForcingTransformer, ReferenceStyleNet, list]:
    """Our network (seeded, every trainable weight drawn from N(0, 0.02) so no product is trivially
    zero), the reference-style network on a copy of the same weights, and four seeded batches."""
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
    b, n, side = args.batch, ours.num_patches, args.input_size
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(b, 4, side, side, generator=g), torch.randn(b, 4, side, side, generator=g),
                torch.rand(b, n, generator=g), torch.randint(0, 1001, (b,), generator=g)) for _ in range(4)]
    return ours, ref, batches


def _clock(args):
    return time.process_time if args.clock == "cpu" else time.perf_counter


def worker(args) -> None:
    """``--worker ours|reference``: set the process up as that trainer does, then run one step per
    ``step`` line on stdin and answer with its seconds."""
    if args.worker == "ours":
        runtime.steady_cpu_allocator()
    ours, ref, batches = build(args)
    fn = ours_step(ours, batches) if args.worker == "ours" else reference_step(ref, batches)
    clock = _clock(args)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = clock()
        fn()
        print(clock() - start, flush=True)


def as_processes(args) -> dict[str, list[float]]:
    """Paired rounds across two worker processes (one step each per round, never at the same time;
    every other round in reverse order): ``{"ours": [...], "reference": [...]}`` seconds."""
    base = [sys.executable, os.path.abspath(__file__), "--depth", str(args.depth), "--hidden-size", str(args.hidden_size),
            "--heads", str(args.heads), "--input-size", str(args.input_size), "--batch", str(args.batch), "--clock", args.clock]
    workers = {name: subprocess.Popen(base + ["--worker", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for name in ("reference", "ours")}
    try:
        for name, proc in workers.items():
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {name} worker did not start (exit status {proc.wait()})")

        def step(name: str) -> float:
            workers[name].stdin.write("step\n")
            workers[name].stdin.flush()
            return float(workers[name].stdout.readline())

        fns = {name: (lambda name=name: step(name)) for name in workers}
        times: dict[str, list[float]] = {name: [] for name in workers}
        for name in fns:  # warm-up: two steps each
            fns[name](), fns[name]()
        for r in range(args.repeats):
            for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(fns[name]())
        return times
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=384)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--input-size", type=int, default=32, help="32 with patch 2 gives 256 tokens")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--glibc-allocator", action="store_true",
                    help="leave glibc's allocator defaults (page faults add a few %% of run-to-run noise); by default both "
                         "steps run with runtime.steady_cpu_allocator, as `train` on a CPU")
    ap.add_argument("--compiled", action="store_true", help="also time both steps compiled region by region (inductor; compiles for about a minute)")
    ap.add_argument("--as-processes", action="store_true",
                    help="also time the two steps each in its own process set up as its trainer sets it up: ours with the "
                         "allocator `train` sets on a CPU, the reference-style step with glibc's defaults (its trainer sets none)")
    ap.add_argument("--worker", choices=("ours", "reference"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    allocator = "glibc defaults" if args.glibc_allocator or not runtime.steady_cpu_allocator() else "steady (train's CPU setting)"
    ours, ref, batches = build(args)
    b, n, p = args.batch, ours.num_patches, ours.patch_size

    # 1. the same loss (float64 copies, before any update)
    x1, x0, t, y = (v.double() if v.is_floating_point() else v for v in batches[0])
    ours64 = pf.create_model(ours.config).double()
    ours64.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    with torch.no_grad():
        mine = pf.training_loss(ours64, x1, x0=x0, t=t, labels=y, label_dropout=False)["loss"]
        theirs = reference_loss(ReferenceStyleNet(ours64), x1, x0, t, y, p)
    print(f"float64 agreement of the loss with the reference-style step: |diff| = {abs(float(mine - theirs)):.2e}")

    def copy_of_ours():
        net = pf.create_model(ours.config)
        net.load_state_dict(ours.state_dict())
        return net.train()

    gathered = copy_of_ours()  # the former per-token path: an identity index_select per modulation
    gathered._conditioning = _with_identity_gather(gathered._conditioning)
    fns = {"reference-style": reference_step(ref, batches), "ours": ours_step(ours, batches), "ours-gather": ours_step(gathered, batches)}
    if args.compiled:  # both compiled region by region with inductor: ours as `train --compile`, the reference as its configs
        fns["reference-style-compiled"] = reference_step(ReferenceStyleNet(copy_of_ours(), compile_options={}), batches)
        fns["ours-compiled"] = ours_step(compile_network(copy_of_ours()), batches)
    shares = {key: matmul_share(fns[key]) for key in ("reference-style", "ours")}
    times = interleaved_times(fns, repeats=args.repeats, clock=_clock(args))
    print(f"# {command_line()}")
    print(f"# {describe_machine()}; PF width {args.hidden_size}, {args.depth} blocks, {n} tokens, batch {b}; a step is "
          f"forward, loss, backward, clip 1.0, AdamW and the EMA update, as each trainer runs them; allocator: {allocator}")
    print(f"# {args.clock} seconds per step (medians of {args.repeats} interleaved rounds); ratios to the reference-style "
          "step: median and quartiles of the per-round ratios")
    print(f"{'step':<50} {'s':>8} {'/ ref':>7} {'quartiles':>14}")
    rows = [("reference-style", "reference-style (per token, as the method)", "reference-style"),
            ("ours", "ours (no gather on the per-token path)", "reference-style"),
            ("ours-gather", "ours with the former identity gather", "reference-style")]
    rows += [("reference-style-compiled", "reference-style, regions compiled", "reference-style"),
             ("ours-compiled", "ours, blocks compiled (train --compile)", "reference-style-compiled")] if args.compiled else []
    for key, label, base in rows:
        cells = "" if key == base else "{1:>7.3f} {0:>6.3f}-{2:.3f}".format(*paired_ratios(times[key], times[base]))
        print(f"{label:<50} {statistics.median(times[key]):>8.4f} {cells}")
    if args.compiled:
        print("(the compiled rows' ratio: ours compiled / the reference-style step compiled)")
    q1, ratio, q3 = paired_ratios(times["ours"], times["ours-gather"])
    print(f"ours / ours with the gather: {ratio:.3f} ({q1:.3f}-{q3:.3f})")
    q1, ratio, q3 = paired_ratios(times["ours"], times["reference-style"])
    ours_s = statistics.median(times["ours"])
    rest = ours_s * (1 - shares["ours"])  # seconds of everything but the matrix products in our step
    need = (ratio - 0.95) * ours_s / ratio / rest if rest > 0 else float("nan")
    print(f"matrix products (aten mm/addmm/bmm, profiled step): {shares['reference-style']:.1%} of the reference-style step, "
          f"{shares['ours']:.1%} of ours (the same products in both); target ours / ref <= 0.95 (paired median {ratio:.3f}): "
          + ("met" if ratio <= 0.95 else f"not met; it would take {need:.0%} less of all our other work"))
    if args.as_processes:
        apart = as_processes(args)
        q1, ratio, q3 = paired_ratios(apart["ours"], apart["reference"])
        print(f"each step in its own process, set up as its trainer sets it up (ours: the allocator `train` sets on a CPU; "
              f"the reference-style step: glibc's defaults), {args.repeats} paired rounds: reference-style "
              f"{statistics.median(apart['reference']):.4f} s, ours {statistics.median(apart['ours']):.4f} s, "
              f"ours / ref {ratio:.3f} ({q1:.3f}-{q3:.3f}); target <= 0.95: {'met' if ratio <= 0.95 else 'not met'}")


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def matmul_share(step) -> float:
    """Fraction of one step's CPU time (profiled, after a warm-up step) spent in matrix-product kernels."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / total


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
