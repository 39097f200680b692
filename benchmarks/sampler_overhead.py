"""Sampler overhead: wall time of ``patchforcing.sample`` against the time spent inside the network,
and each sampler's cost per network evaluation against Euler's.

    python benchmarks/sampler_overhead.py                  # width 384, 6 blocks, 256 tokens, batch 8
    python benchmarks/sampler_overhead.py --nfe 32 --batch 16

Targets: wall / network time <= 1.05 for every sampler (<= 1.01 for the second-order ones: a Heun
step must cost what its NFE says); time per NFE of dual-loop and look-ahead <= 1.10x Euler's (they
evaluate the network on two distinct times per sample). ``--schedule`` picks the time grid.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line, describe_machine  # noqa: E402


class TimedNetwork(torch.nn.Module):
    """Forwards to the network and adds up the seconds spent inside it."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.config = net.config
        self.seconds = 0.0

    def forward(self, x, t, y=None):
        t0 = time.perf_counter()
        out = self.net(x, t, y)
        self.seconds += time.perf_counter() - t0
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=384)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--nfe", type=int, default=16)
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--schedule", default="uniform", help="time grid: uniform, shift:ALPHA or edm:RHO")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = pf.create_model("PF-S/2", depth=args.depth, hidden_size=args.hidden_size, num_heads=args.heads,
                          input_size=args.input_size, in_channels=4, num_classes=1000).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    timed = TimedNetwork(net)
    noise = torch.randn(args.batch, 4, args.input_size, args.input_size)
    labels = torch.randint(0, 1000, (args.batch,))
    samplers = ["euler-pf", "dual-loop", "look-ahead", "random-dual-loop", "random-look-ahead",
                "heun-pf", "look-ahead-heun", "corrected-look-ahead"]
    rows = {}
    pf.sample(timed, noise, sampler="euler-pf", steps=2, labels=labels)  # warm-up
    for _ in range(args.repeats):  # interleave samplers round by round
        for name in samplers:
            steps = pf.steps_for_nfe(name, args.nfe, schedule=args.schedule)
            timed.seconds = 0.0
            t0 = time.perf_counter()
            _, info = pf.sample(timed, noise, sampler=name, steps=steps, labels=labels, cfg_scale=args.cfg_scale,
                                schedule=args.schedule, return_info=True, generator=torch.Generator().manual_seed(0))
            wall = time.perf_counter() - t0
            rows.setdefault(name, []).append((wall, timed.seconds, info["nfe"]))
    print(f"# {command_line()}")
    print(f"# {describe_machine()}; width {args.hidden_size}, {args.depth} blocks, {net.num_patches} tokens, "
          f"batch {args.batch}, NFE budget {args.nfe}, cfg {args.cfg_scale}, schedule {args.schedule}")
    per_nfe_euler = statistics.median(w / n for w, _, n in rows["euler-pf"])
    print(f"{'sampler':<21} {'NFE':>4} {'wall s':>8} {'in net s':>9} {'wall/net':>9} {'s/NFE vs euler':>15}")
    for name in samplers:
        wall = statistics.median(r[0] for r in rows[name])
        inside = statistics.median(r[1] for r in rows[name])
        nfe = rows[name][0][2]
        ratio = statistics.median(r[0] / r[1] for r in rows[name])
        per_nfe = statistics.median(r[0] / r[2] for r in rows[name]) / per_nfe_euler
        print(f"{name:<21} {nfe:>4} {wall:>8.3f} {inside:>9.3f} {ratio:>9.3f} {per_nfe:>15.3f}")


if __name__ == "__main__":
    main()
