"""Cost of a Patch Forcing forward against the global-time (SiT) forward of the same size.

    python benchmarks/forward_cost.py                      # width 384, 6 blocks, 256 tokens, batch 8
    python benchmarks/forward_cost.py --depth 12 --batch 16

Prints, as ratios to the SiT forward measured in the same run:
  * PF, one time per sample, per-token modulation (what the reference computes),
  * PF, one time per sample, shared modulation (this project; target <= 1.05x),
  * PF, two times per sample (dual-loop / look-ahead inputs), shared (target <= 1.10x of Euler's),
and checks that the shared path equals the per-token path in float64 (1e-12).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line, describe_machine, interleaved_medians  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=384)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--input-size", type=int, default=32, help="32 with patch 2 gives 256 tokens")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    size = dict(depth=args.depth, hidden_size=args.hidden_size, num_heads=args.heads, input_size=args.input_size,
                in_channels=4, num_classes=1000)
    pfnet = pf.create_model("PF-S/2", **size).eval()
    sit = pf.create_model("SiT-S/2", **size).eval()
    for net in (pfnet, sit):
        for p in net.parameters():
            p.data.normal_(0, 0.02)
    b, n = args.batch, pfnet.num_patches
    x = torch.randn(b, 4, args.input_size, args.input_size)
    y = torch.randint(0, 1000, (b,))
    t_global = torch.rand(b)
    t_one = t_global[:, None].expand(b, n).contiguous()
    t_two = torch.where(torch.rand(b, n) < 0.4, t_one + 0.1, t_one)

    def run(net, t, share=True):
        def fn():
            net.share_modulation = share
            with torch.no_grad():
                net(x, t, y)
        return fn

    med = interleaved_medians(
        {
            "sit": run(sit, t_global),
            "pf_per_token": run(pfnet, t_one, share=False),
            "pf_shared": run(pfnet, t_one),
            "pf_two_times_shared": run(pfnet, t_two),
            "pf_two_times_per_token": run(pfnet, t_two, share=False),
        },
        repeats=args.repeats,
    )
    # Exactness of the shared path (float64).
    net64 = pfnet.double()
    with torch.no_grad():
        errs = []
        for t in (t_one, t_two):
            net64.share_modulation = True
            a = net64(x.double(), t.double(), y)
            net64.share_modulation = False
            r = net64(x.double(), t.double(), y)
            errs.append(max(float((a.velocity - r.velocity).abs().max()), float((a.logvar - r.logvar).abs().max())))
    print(f"# {command_line()}")
    print(f"# {describe_machine()}; width {args.hidden_size}, {args.depth} blocks, {n} tokens, batch {b}")
    base = med["sit"]
    print(f"SiT forward (global t)                         {base * 1e3:8.2f} ms   1.000x")
    for key, label in (
        ("pf_per_token", "PF forward, per-token modulation (reference)"),
        ("pf_shared", "PF forward, one time/sample, shared"),
        ("pf_two_times_per_token", "PF forward, two times/sample, per-token"),
        ("pf_two_times_shared", "PF forward, two times/sample, shared"),
    ):
        print(f"{label:<46} {med[key] * 1e3:8.2f} ms   {med[key] / base:.3f}x")
    print(f"two-times cost per NFE vs Euler's (shared):     {med['pf_two_times_shared'] / med['pf_shared']:.3f}x  (target <= 1.10)")
    print(f"one-time PF vs SiT (shared):                    {med['pf_shared'] / base:.3f}x  (target <= 1.05)")
    print(f"max |shared - per-token| in float64: {max(errs):.2e}  (target <= 1e-12)")


if __name__ == "__main__":
    main()
