"""How far two processes drift from one: the same run trained by ``torchrun --nproc_per_node 2``
(gloo, CPU) and by a single process, compared checkpoint by checkpoint.

Both see the same global batches and make the same updates; only the order in which the gradient
is summed differs (each process sums its half, then the all-reduce adds the halves), so the
weights agree up to floating-point rounding, and that rounding compounds over steps.

    OMP_NUM_THREADS=1 python benchmarks/two_process_drift.py --steps 400 --every 50 --out /tmp/drift

Prints, per checkpoint step, the largest absolute difference of the trained and of the EMA weights
and the difference's L2 norm relative to the weights' norm, then both runs' last logged loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from patchforcing import runs


def train(out: Path, procs: int, steps: int, every: int) -> None:
    flags = ["train", "--out", str(out), "--device", "cpu", "--steps", str(steps), "--ckpt-every", str(every),
             "--keep-checkpoints", str(steps // every + 1), "--val-every", "0", "--sample-every", "0"]
    if procs == 1:
        cmd = [sys.executable, "-m", "patchforcing", *flags]
    else:
        torchrun = Path(sys.executable).parent / "torchrun"
        cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(procs), "-m", "patchforcing", *flags]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def differences(a: dict, b: dict) -> tuple[float, float]:
    """(largest absolute difference, L2 norm of the difference / L2 norm of ``a``) over float tensors."""
    keys = [k for k in a if a[k].is_floating_point()]
    largest = max(float((a[k].double() - b[k].double()).abs().max()) for k in keys)
    diff = sum(float((a[k].double() - b[k].double()).square().sum()) for k in keys) ** 0.5
    norm = sum(float(a[k].double().square().sum()) for k in keys) ** 0.5
    return largest, diff / norm


def last_loss(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e for e in lines if "loss" in e][-1]["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps of the digits preset")
    parser.add_argument("--every", type=int, default=50, help="compare at every multiple of this step")
    parser.add_argument("--out", default="drift", help="folder for the two run folders (rerunning reuses finished runs)")
    args = parser.parse_args()
    out = Path(args.out)
    train(out / "one", 1, args.steps, args.every)
    train(out / "two", 2, args.steps, args.every)
    print(f"{'step':>6} {'max|dw|':>10} {'rel L2 dw':>10} {'max|dEMA|':>10} {'rel L2 dEMA':>12}")
    for path in runs.list_checkpoints(out / "one"):
        step = runs.checkpoint_step(path)
        one = torch.load(path, weights_only=True)
        two = torch.load(runs.checkpoint_path(out / "two", step), weights_only=True)
        (w_max, w_rel), (e_max, e_rel) = differences(one["model"], two["model"]), differences(one["ema"], two["ema"])
        print(f"{step:>6} {w_max:>10.3g} {w_rel:>10.3g} {e_max:>10.3g} {e_rel:>12.3g}")
    print(f"last logged training loss: one process {last_loss(out / 'one'):.4f}, two processes {last_loss(out / 'two'):.4f}")


if __name__ == "__main__":
    main()
