"""Images per second of the trainer against its bare step on one fixed batch.

    .venv/bin/python benchmarks/train_throughput.py                      # the digits preset
    .venv/bin/python benchmarks/train_throughput.py --preset digits --steps 200 --threads 1

The bare step is ``train_step`` (forward + backward + gradient clipping + the trainer's AdamW, its
warm-up schedule and EMA update, built by ``make_ema_and_optimizer`` as ``train`` builds them) on
one fixed batch. The trainer runs the same step and adds the per-step batch draw (data order,
noise, times, label dropout), the NaN bookkeeping and the metrics lines; its images/s are read
from ``metrics.jsonl`` (which excludes checkpoint, validation and sample time). Both run in
this process, alternating, twice each; the script prints the medians and the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from patchforcing import runtime
from patchforcing.data import load_dataset
from patchforcing.loss import Example
from patchforcing.models import PatchForcingTransformer
from patchforcing.timesteps import timestep_distribution
from patchforcing.training import resolve_config, train
from patchforcing.training.config import network_config
from patchforcing.training.step import make_ema_and_optimizer, step_options, train_step


def bare_images_per_sec(cfg, steps: int, warmup: int) -> float:
    data = load_dataset(cfg.data, resolution=cfg.resolution)
    mcfg = network_config(cfg, data)
    torch.manual_seed(cfg.seed)
    net = PatchForcingTransformer(mcfg).train()
    ema, optimizer, scheduler = make_ema_and_optimizer(net, cfg)
    options = step_options(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x1, labels = data.images[: cfg.batch_size], data.labels[: cfg.batch_size]
    x0 = torch.randn(x1.shape, generator=g)
    t = timestep_distribution(cfg.timestep_name)(cfg.batch_size, mcfg.num_patches, generator=g)
    t = t[:, 0] if not mcfg.has_difficulty_head else t
    example = Example(x1, x0, t, labels)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        train_step(net, ema, optimizer, example, scheduler=scheduler, **options)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def trainer_images_per_sec(cfg, steps: int, warmup: int) -> float:
    """Run ``train`` for ``warmup + steps`` steps with a metrics line every ``warmup`` steps."""
    import contextlib
    import io

    with tempfile.TemporaryDirectory() as tmp:
        run = cfg.replace(out=tmp, steps=warmup + steps, log_every=warmup, val_every=0, sample_every=0, ckpt_every=0)
        with contextlib.redirect_stdout(io.StringIO()):
            train(run)
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    timed = [m for m in lines if m["step"] > warmup]  # each covers `warmup` steps, eval time excluded
    seconds = sum(warmup * cfg.batch_size / m["images_per_sec"] for m in timed)
    return len(timed) * warmup * cfg.batch_size / seconds


def extras_ms_per_step(cfg, repeats: int = 200) -> dict[str, float]:
    """The trainer's additions to a bare step, each timed alone (ms): robust on a busy machine."""
    from patchforcing import runtime
    from patchforcing.training.batches import StepBatches
    from patchforcing.training.step import LossTracker

    data = load_dataset(cfg.data, resolution=cfg.resolution)
    mcfg = network_config(cfg, data)
    batches = StepBatches(data.images, data.labels, seed=0, batch_size=cfg.batch_size, rank=0, world_size=1,
                          timesteps=timestep_distribution(cfg.timestep_name), num_patches=mcfg.num_patches,
                          null_label=mcfg.null_label, drop_prob=mcfg.class_dropout_prob, global_time=not mcfg.has_difficulty_head)
    tracker = LossTracker(runtime.Processes(0, 1, 0, torch.device("cpu")))
    one = torch.tensor(1.0)
    parts = {"batch draw": lambda: batches[12345],
             "loss bookkeeping": lambda: tracker.add(7, dict.fromkeys(("loss", "flow_loss", "uncertainty_loss", "grad_norm"), one))}
    out = {}
    for name, fn in parts.items():
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - start) / repeats * 1000
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--steps", type=int, default=100, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--allocator", choices=("steady", "glibc"), default="steady",
                   help="steady: what `train` sets on a CPU (runtime.steady_cpu_allocator), for both steps; glibc: the "
                        "C library's defaults, for both (the trainer's call is switched off); run both to see the difference")
    args = p.parse_args()
    if args.steps % args.warmup:
        p.error("--steps must be a multiple of --warmup (the trainer logs every --warmup steps)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator == "steady":
        applied = runtime.steady_cpu_allocator()
    else:
        applied, runtime.steady_cpu_allocator = False, lambda: False
    overrides = {"device": "cpu"} | ({"batch_size": args.batch_size} if args.batch_size else {})
    cfg = resolve_config(args.preset, **overrides)
    bare, trainer = [], []
    for _ in range(2):
        bare.append(bare_images_per_sec(cfg, args.steps, args.warmup))
        trainer.append(trainer_images_per_sec(cfg, args.steps, args.warmup))
    b, t = statistics.median(bare), statistics.median(trainer)
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"preset {args.preset}: {cfg.model} depth={cfg.depth} hidden={cfg.hidden_size}, batch {cfg.batch_size}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, allocator {args.allocator}"
          f"{'' if applied or args.allocator == 'glibc' else ' (not applied: not glibc, or MALLOC_* set)'}")
    print(f"bare step    {b:8.1f} images/s  (runs: {', '.join(f'{x:.1f}' for x in bare)})")
    print(f"trainer step {t:8.1f} images/s  (runs: {', '.join(f'{x:.1f}' for x in trainer)})")
    print(f"trainer overhead: {100 * (b / t - 1):+.1f}% time per image (end to end; noisy on a shared machine)")
    extras = extras_ms_per_step(cfg)
    step_ms = 1000 * cfg.batch_size / b
    print(f"trainer extras alone: {', '.join(f'{k} {v:.2f} ms' for k, v in extras.items())}; "
          f"{sum(extras.values()):.2f} ms of a {step_ms:.1f} ms bare step ({100 * sum(extras.values()) / step_ms:.1f}%)")


if __name__ == "__main__":
    main()
