"""Training images/s and model FLOP utilisation (MFU) of PF-B/2 and PF-XL/2 at 256 px (SD-VAE
latents 4x32x32, 1000 classes), and sampling images/s per sampler at equal NFE.

    python benchmarks/gpu_throughput.py                                  # on the GPU it finds
    python benchmarks/gpu_throughput.py --compile --batch-size 64        # the paper's PF-B/2 batch
    OMP_NUM_THREADS=2 python benchmarks/gpu_throughput.py --device cpu   # tiny CPU defaults

Training step = the trainer's ``train_step`` (forward + backward of the flow + difficulty loss on LTG
times, gradient clipping, the trainer's AdamW -- fused on CUDA --, its warm-up schedule and its EMA
update) with the ``imagenet-b2`` preset's settings, under bf16 autocast on CUDA (float32 on the CPU),
on random latents (the data loader is not timed).
FLOPs per step are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one step (matmuls,
convolutions and attention, forward and backward); MFU = achieved FLOP/s / the device's dense
bf16 peak (a table of known GPUs, or ``--peak-tflops``; no MFU without a peak). Sampling uses
the network as initialised (speed does not depend on the weights), ``--nfe`` evaluations per
image for every sampler (each takes the most outer steps that fit).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from patchforcing.loss import Example
from patchforcing.models import Kind, create_model
from patchforcing.runtime import resolve_device
from patchforcing.sampling import SamplingPlan, sample
from patchforcing.sampling.registry import SAMPLERS
from patchforcing.timesteps import timestep_distribution
from patchforcing.training import resolve_config
from patchforcing.training.distributed import compile_network
from patchforcing.training.step import make_ema_and_optimizer, step_options, train_step

# Dense bf16 tensor-core peaks (TFLOP/s) of the SXM parts, from the vendor's data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "4090": 165.0}


def device_peak(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_fn(net, batch: int, device: torch.device, bf16: bool):
    """A closure running the trainer's ``train_step`` (its optimizer, schedule and EMA, built as
    ``train`` builds them for the ``imagenet-b2`` preset) on a fixed random batch."""
    cfg = net.config
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g).to(device)
    x0 = torch.randn(x1.shape, generator=g).to(device)
    t = timestep_distribution("ltg")(batch, cfg.num_patches, generator=g).to(device)  # (B, N)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    example = Example(x1, x0, t[:, 0] if cfg.kind is Kind.SIT else t, y)  # SiT: one time per sample, as the trainer
    train_cfg = resolve_config("imagenet-b2")
    ema, optimizer, scheduler = make_ema_and_optimizer(net, train_cfg)
    options = {**step_options(train_cfg, device), "autocast": torch.bfloat16 if bf16 else None}

    def step() -> None:
        train_step(net, ema, optimizer, example, scheduler=scheduler, **options)

    return step


def bench_training(name: str, args, device: torch.device, peak: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = create_model(name, input_size=32, in_channels=4, num_classes=1000).to(device).train()
    step = train_step_fn(net, args.batch_size, device, bf16=device.type == "cuda")
    if args.compile:  # after the EMA copy, as the trainer compiles (the blocks in place)
        compile_network(net)
    counter = FlopCounterMode(display=False)
    with counter:
        step()  # also the first warm-up step
    flops = counter.get_total_flops()
    for _ in range(args.warmup - 1):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    achieved = flops / seconds
    return {"model": name, "params_M": sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6,
            "images_per_s": args.batch_size / seconds, "gflop_per_image": flops / args.batch_size / 1e9,
            "tflops": achieved / 1e12, "mfu": None if peak is None else achieved / (peak * 1e12), "net": net}


@torch.no_grad()
def bench_sampling(net, args, device: torch.device) -> list[dict]:
    net.eval()
    cfg, rows = net.config, []
    noise = torch.randn(args.sample_batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    y = torch.arange(args.sample_batch, device=device) % cfg.num_classes
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    for sampler in SAMPLERS:
        plan = SamplingPlan.from_nfe(sampler, args.nfe)
        steps, used = plan.steps, plan.nfe
        with autocast:
            sample(net, noise, sampler=sampler, steps=steps, labels=y)  # warm-up (and compilation)
            sync(device)
            start = time.perf_counter()
            sample(net, noise, sampler=sampler, steps=steps, labels=y)
            sync(device)
        seconds = time.perf_counter() - start
        rows.append({"sampler": sampler, "steps": steps, "nfe": used, "images_per_s": args.sample_batch / seconds})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["PF-B/2", "PF-XL/2"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: 32 on CUDA, 2 on the CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default: 20 on CUDA, 2 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on the CPU)")
    p.add_argument("--compile", action="store_true", help="compile the blocks, as train --compile does")
    p.add_argument("--nfe", type=int, default=None, help="NFE per image for every sampler (default: 32 on CUDA, 8 on the CPU)")
    p.add_argument("--sample-batch", type=int, default=None, help="images per sampler call (default: 64 on CUDA, 1 on the CPU)")
    p.add_argument("--no-sampling", action="store_true", help="time training only")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: known GPUs)")
    args = p.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    for key, on_gpu, on_cpu in (("batch_size", 32, 2), ("steps", 20, 2), ("warmup", 5, 1), ("nfe", 32, 8),
                                ("sample_batch", 64, 1)):
        if getattr(args, key) is None:
            setattr(args, key, on_gpu if gpu else on_cpu)
    peak = device_peak(device, args.peak_tflops)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; training batch {args.batch_size}, {args.steps} timed steps after {args.warmup}; "
          f"{'bf16 autocast' if gpu else 'float32'}{', compiled blocks' if args.compile else ''}; "
          f"peak {'unknown (no MFU)' if peak is None else f'{peak:g} TFLOP/s'}")
    for name in args.models:
        r = bench_training(name, args, device, peak)
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"train  {name:8s} {r['params_M']:7.1f}M params  {r['images_per_s']:9.2f} images/s  "
              f"{r['gflop_per_image']:8.1f} GFLOP/image  {r['tflops']:8.3f} TFLOP/s  MFU {mfu}", flush=True)
        if not args.no_sampling:
            for s in bench_sampling(r["net"], args, device):
                print(f"sample {name:8s} {s['sampler']:18s} {s['steps']:3d} steps {s['nfe']:3d} NFE  "
                      f"{s['images_per_s']:9.3f} images/s (batch {args.sample_batch})", flush=True)
        del r


if __name__ == "__main__":
    main()
