"""One command that runs every GPU path this project claims and prints one markdown table.

    python benchmarks/gpu_check.py                  # on the GPU it finds (make gpu-check); <= 10 min on one H100/H200
    python benchmarks/gpu_check.py --device cpu     # a tiny version of every step, a few minutes on 2 CPU cores
    python benchmarks/gpu_check.py --out table.md   # also keep the table in a file, rewritten after every check,
                                                    # so a run cut off by a time limit keeps the rows it finished
    PYTHONPATH=src python3 benchmarks/gpu_check.py  # with a CUDA PyTorch already installed, nothing to install: the
                                                    # prepare-latents and evaluate rows need diffusers (else SKIP)

Rows (status PASS / FAIL / SKIP with the reason, the measured value, the tolerance or note):
  * train bf16, eager and torch.compile (blocks compiled as ``train --compile``), PF-B/2 and
    T2I-B/2: three steps of the trainer's ``train_step`` (its AdamW, schedule and EMA, the
    ``imagenet-b2`` preset's settings) from the same weights on the same batches; every loss finite, and
    compiled within 2 % of eager at every step (bf16 rounds fused and unfused kernels differently).
  * DDP with nccl under ``torchrun`` on the visible GPUs (a subprocess training a tiny run).
  * every sampler x {CFG, CFG in an interval, autoguidance} on the device against the CPU in
    float32 (TF32 off), same weights and noise: the max |difference| of the samples.
  * ``prepare-latents`` on the device through a tiny VAE, against the same command on the CPU.
  * ``train`` on those latents, then ``evaluate ... --save-npz`` decoding through the tiny VAE.
  * the SDPA kernel that actually ran (torch.profiler event names: flash, efficient, cudnn, math).
  * the training step against a literal reference-style step (``benchmarks/train_step_cost.py``'s
    ``ReferenceStyleNet``; a step includes AdamW and the EMA update as each trainer runs them),
    PF-B/2, same weights and batches, bf16, paired rounds: the median and quartiles of the
    per-round time ratios, both eager and both compiled region by region (target <= 0.95x).
  * throughput, eager bf16: training images/s and MFU against the device's dense bf16 peak
    (``benchmarks/gpu_throughput.py``'s table and FLOP count) for PF-B/2 and SiT-B/2, and sampling
    images/s of every sampler at NFE 32, each as a ratio to the SiT baseline of the same size
    (SiT-B/2 training; SiT-B/2 Euler sampling at the same NFE).

On the CPU (``--device cpu``) the networks shrink (depth 2, width 64, 8x8 latents), compilation
uses the ``aot_eager`` backend (no C++ toolchain needed), the samplers are compared against a
float64 CPU run, and the nccl row is skipped with its reason. Exit status 1 when any row fails.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import interleaved_times, paired_ratios  # noqa: E402
from gpu_throughput import bench_training, device_peak, sync  # noqa: E402
from patchforcing.loss import Example  # noqa: E402
from patchforcing.models import create_model  # noqa: E402
from patchforcing.runs import atomic_write_text  # noqa: E402
from patchforcing.runtime import resolve_device  # noqa: E402
from patchforcing.timesteps import timestep_distribution  # noqa: E402
from patchforcing.training import resolve_config  # noqa: E402
from patchforcing.training.distributed import compile_network  # noqa: E402
from patchforcing.training.step import make_ema_and_optimizer, step_options, train_step  # noqa: E402
from train_step_cost import ReferenceStyleNet, ours_step, reference_step  # noqa: E402

ROWS: list[tuple[str, str, str, str, float]] = []
COMPILE_TOL = 0.02  # relative loss difference, compiled vs eager, bf16
SAMPLER_TOL = {"cuda": 1e-3, "cpu": 1e-4}  # max |device - reference| of the samples (float32 vs float32 / float64)


def sizes(gpu: bool) -> SimpleNamespace:
    """Network sizes and batch sizes of the full (GPU) and tiny (CPU) check."""
    if gpu:
        return SimpleNamespace(pf={}, t2i={}, batch=32, text_length=64, sample_batch=4, nfe=32, bench_batch=64,
                               bench_steps=10, bench_sample_batch=64, tiny_steps=4, cost_repeats=20)
    small = dict(depth=2, hidden_size=64, num_heads=2, input_size=8)
    t2i = dict(depth=2, hidden_dim=64, head_dim=32, mapping_dim=32, txt_in_dim=32, txt_refiner_dim=64,
               txt_refiner_head_dim=32, input_size=8)
    return SimpleNamespace(pf=small, t2i=t2i, batch=4, text_length=8, sample_batch=2, nfe=4, bench_batch=2,
                           bench_steps=1, bench_sample_batch=1, tiny_steps=2, cost_repeats=3)


def row(check: str, status: str, value: str = "", note: str = "", seconds: float = 0.0) -> None:
    ROWS.append((check, status, value, note, seconds))
    print(f"[{status}] {check}: {value} {note}", flush=True)


def run_check(check: str, fn) -> None:
    """Run one check; an exception becomes a FAIL row with its first line."""
    start = time.perf_counter()
    try:
        results = fn()
    except Exception as err:  # noqa: BLE001 - every failure is reported in the table, then the next check runs
        row(check, "FAIL", "", f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}",
            time.perf_counter() - start)
        return
    for i, (name, status, value, note) in enumerate(results):
        row(name or check, status, value, note, time.perf_counter() - start if i == 0 else 0.0)


def cli(*args: str, env: dict | None = None, launcher: list[str] | None = None, timeout: float = 300) -> str:
    """Run ``python -m patchforcing ARGS`` (or under ``launcher``); raise with its last lines on failure."""
    cmd = (launcher or [sys.executable]) + ["-m", "patchforcing", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`{' '.join(cmd[-len(args):][:3])} ...` exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def training_batches(cfg, sz, device: torch.device, count: int, text: bool = False) -> list[list[torch.Tensor]]:
    """``count`` seeded batches ``[x1, x0, t (ltg, per patch), labels or text states]`` on ``device``."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        x1 = torch.randn(sz.batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
        cond = (torch.randn(sz.batch, sz.text_length, cfg.txt_in_dim, generator=g) if text
                else torch.randint(0, 1000, (sz.batch,), generator=g))
        t = timestep_distribution("ltg")(sz.batch, cfg.num_patches, generator=g)
        batches.append([v.to(device) for v in (x1, torch.randn(x1.shape, generator=g), t, cond)])
    return batches


# --- 1. bf16 training steps, eager and compiled ---------------------------------------------------
def check_training(name: str, overrides: dict, device: torch.device, sz) -> list[tuple]:
    torch.manual_seed(0)
    text = name.startswith("T2I")
    extra = {} if text else {"num_classes": 1000, "in_channels": 4}
    eager = create_model(name, **{**extra, **overrides}).to(device).train()
    batches = training_batches(eager.config, sz, device, 3, text=text)
    train_cfg = resolve_config("imagenet-b2")
    options = {**step_options(train_cfg, device), "autocast": torch.bfloat16}  # bf16 on the CPU too

    def losses(net, compiled: bool) -> list[float]:
        ema, optimizer, scheduler = make_ema_and_optimizer(net, train_cfg)
        if compiled:  # after the EMA copy, as the trainer compiles (the blocks in place)
            compile_network(net, **({} if device.type == "cuda" else {"backend": "aot_eager"}))
        return [float(train_step(net, ema, optimizer, Example(*batch), scheduler=scheduler, **options)["loss"])
                for batch in batches]

    a, b = losses(copy.deepcopy(eager), False), losses(eager, True)
    finite = all(np.isfinite(a + b))
    rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b, strict=False))
    ok = finite and rel <= COMPILE_TOL
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    return [(f"train bf16 {name} eager vs compiled ({backend})", "PASS" if ok else "FAIL",
             f"losses {a[0]:.4f}/{a[-1]:.4f}, max rel diff {rel:.2e}", f"finite: {finite}; tolerance {COMPILE_TOL:g}")]


# --- 2. DDP with nccl ----------------------------------------------------------------------------------
TINY_TRAIN = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--val-every", "0", "--sample-every", "0",
              "--warmup-steps", "1"]


def check_ddp(device: torch.device, work: Path, sz) -> list[tuple]:
    if device.type != "cuda":
        return [("DDP nccl under torchrun", "SKIP", "", "nccl needs CUDA GPUs (the CPU run does not check it)")]
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return [("DDP nccl under torchrun", "SKIP", f"{gpus} GPU visible",
                 "nccl refuses two ranks on one GPU; needs >= 2 visible GPUs")]
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", str(gpus)]
    out = cli("train", "--out", str(work / "ddp"), "--device", "cuda", "--steps", str(sz.tiny_steps), *TINY_TRAIN,
              "--batch-size", str(8 * gpus), launcher=torchrun, timeout=400)
    ckpts = sorted((work / "ddp" / "checkpoints").glob("step-*.pt"))
    ok = bool(ckpts)
    return [("DDP nccl under torchrun", "PASS" if ok else "FAIL", f"{gpus} processes, {len(ckpts)} checkpoint(s)",
             out.strip().splitlines()[-1][:120] if out.strip() else "")]


# --- 3. samplers on the device against the CPU ---------------------------------------------------------
def check_samplers(device: torch.device, sz) -> list[tuple]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    small = dict(depth=4, hidden_size=256, num_heads=4, input_size=16) if device.type == "cuda" else sz.pf
    torch.manual_seed(0)
    net = create_model("PF-S/2", num_classes=10, in_channels=4, **small).eval()
    weak = create_model("PF-S/2", num_classes=10, in_channels=4, **small).eval()
    for m in (net, weak):
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.05)
    ref_dtype = torch.float32 if device.type == "cuda" else torch.float64
    cfg = net.config
    noise = torch.randn(sz.sample_batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(sz.sample_batch) % 10
    on_dev = (net.to(device), weak.to(device))
    on_ref = (copy.deepcopy(net).to("cpu", ref_dtype), copy.deepcopy(weak).to("cpu", ref_dtype))
    steps = 8 if device.type == "cuda" else 2
    worst, rows = 0.0, []
    for sampler in pf.SAMPLERS:
        for mode, kw in (("cfg", {}), ("interval", {"guidance_interval": (0.25, 0.75)}), ("autoguidance", {"guide": True})):
            outs = []
            for (main, guide), dev in ((on_dev, device), (on_ref, torch.device("cpu"))):
                options = {"guide_model": guide} if kw.get("guide") else {k: v for k, v in kw.items() if k != "guide"}
                with torch.no_grad():
                    x = pf.sample(main, noise.to(dev, next(main.parameters()).dtype), sampler=sampler, steps=steps,
                                  labels=labels.to(dev), cfg_scale=2.0, generator=torch.Generator().manual_seed(2), **options)
                outs.append(x.double().cpu())
            diff = float((outs[0] - outs[1]).abs().max())
            worst = max(worst, diff)
            rows.append((sampler, mode, diff))
    tol = SAMPLER_TOL[device.type]
    ref = "CPU float32" if device.type == "cuda" else "CPU float64"
    result = [("samplers x {cfg, interval, autoguidance}", "PASS" if worst <= tol else "FAIL",
               f"max |diff| {worst:.2e} over {len(rows)} runs", f"{device.type} float32 vs {ref}, {steps} steps; tolerance {tol:g}")]
    result += [(f"  {s} / {m}", "PASS" if d <= tol else "FAIL", f"{d:.2e}", "") for s, m, d in rows]
    return result


# --- 4, 5. prepare-latents on the device; train and evaluate through a tiny VAE ------------------------
def make_tiny_vae(folder: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  block_out_channels=(8, 8)).save_pretrained(folder)


def check_prepare(device: torch.device, work: Path) -> list[tuple]:
    from patchforcing.data.latents import load_latent_dataset

    make_tiny_vae(work / "vae")
    for dev in dict.fromkeys((device.type, "cpu")):
        cli("prepare-latents", "--data", "digits", "--vae", str(work / "vae"), "--out", str(work / f"lat-{dev}"),
            "--resolution", "16", "--batch-size", "128", "--device", dev, "--hflip")
    a = load_latent_dataset(work / f"lat-{device.type}", lazy=False)
    b = load_latent_dataset(work / "lat-cpu", lazy=False)
    diff = float((a.images - b.images).abs().max())
    ok = diff <= 1e-3 and a.latent_views is not None and a.latent_views.flip is not None
    return [(f"prepare-latents --device {device.type} --hflip", "PASS" if ok else "FAIL",
             f"{a.images.shape[0]} latents, max |{device.type} - cpu| {diff:.2e}", "tiny VAE, 16 px digits; tolerance 1e-3")]


def check_evaluate(device: torch.device, work: Path, sz) -> list[tuple]:
    run = work / "run-latent"
    cli("train", "--out", str(run), "--data", str(work / f"lat-{device.type}"), "--device", device.type,
        "--steps", str(sz.tiny_steps), "--batch-size", "8", *TINY_TRAIN)
    cli("evaluate", "--checkpoint", str(run), "--vae", str(work / "vae"), "--sampler", "look-ahead", "--nfe", "4",
        "--num-samples", "8", "--batch-size", "8", "--save-npz", "--device", device.type, "--out", str(work / "eval"))
    arr = np.load(work / "eval" / "samples.npz")["arr_0"]
    ok = arr.shape == (8, 16, 16, 3) and arr.dtype == np.uint8
    return [("train on latents + evaluate --save-npz via tiny VAE", "PASS" if ok else "FAIL",
             f"samples.npz arr_0 {tuple(arr.shape)} {arr.dtype}", "")]


# --- 6. which SDPA kernel ran ----------------------------------------------------------------------------
KERNELS = {"flash": "flash", "efficient": "efficient", "cudnn": "cudnn", "math": "math"}


def check_sdpa(device: torch.device, sz) -> list[tuple]:
    from torch.profiler import ProfilerActivity, profile

    net = create_model("PF-B/2", num_classes=1000, in_channels=4, **sz.pf).to(device).eval()
    cfg = net.config
    x = torch.randn(2, 4, cfg.input_size, cfg.input_size, device=device)
    t, y = torch.rand(2, device=device), torch.zeros(2, dtype=torch.long, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        net(x, t, y)
        with profile(activities=activities) as prof:
            net(x, t, y)
            sync(device)
    names = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or "attention" in e.key.lower()}
    found = sorted({label for label, word in KERNELS.items() for n in names if word in n.lower()})
    if device.type != "cuda":
        return [("SDPA kernel (profiler)", "SKIP", ", ".join(found) or "none", "CPU kernels; flash/efficient are CUDA kernels")]
    ok = bool(set(found) & {"flash", "efficient", "cudnn"}) and "math" not in found
    return [("SDPA kernel (profiler)", "PASS" if ok else "FAIL", ", ".join(found) or "none",
             "bf16 forward of PF-B/2; ops: " + ", ".join(sorted(names))[:160])]


# --- 7. the training step against the reference-style step ------------------------------------------------
def check_step_cost(device: torch.device, sz) -> list[tuple]:
    """Paired rounds of four training steps as the trainers run them (forward, loss, backward,
    clipping, AdamW, EMA) on the same weights and batches: the reference-style step and ours,
    eager, and both compiled region by region (ours as ``train --compile``, the reference-style
    network as the reference's ``compile: true`` configurations); each ours is paired with the
    reference-style step of the same mode."""
    torch.manual_seed(0)
    ours = create_model("PF-B/2", num_classes=1000, in_channels=4, **sz.pf).to(device).train()
    with torch.no_grad():  # non-zero modulation and output weights, so no product is trivially zero
        for prm in ours.parameters():
            if prm.requires_grad:
                prm.normal_(0, 0.02)
    options = {} if device.type == "cuda" else {"backend": "aot_eager"}
    batches = training_batches(ours.config, sz, device, 2)
    fns = {"reference": reference_step(ReferenceStyleNet(copy.deepcopy(ours)).train(), batches, device),
           "ours": ours_step(copy.deepcopy(ours), batches, device),
           "reference compiled": reference_step(ReferenceStyleNet(copy.deepcopy(ours), compile_options=options).train(), batches, device),
           "ours compiled": ours_step(compile_network(copy.deepcopy(ours), **options), batches, device)}
    times = interleaved_times(fns, repeats=sz.cost_repeats, warmup=2)
    rows = []
    for key, base, label in (("ours", "reference", "eager"), ("ours compiled", "reference compiled", "both compiled")):
        q1, ratio, q3 = paired_ratios(times[key], times[base])
        rows.append((f"train step PF-B/2 vs reference-style step ({label}, {'bf16' if device.type == 'cuda' else 'float32'}, "
                     f"batch {sz.batch})", "INFO", f"{ratio:.3f}x (quartiles {q1:.3f}-{q3:.3f})",
                     f"{sz.cost_repeats} paired rounds, step incl. AdamW + EMA; target <= 0.95x: {'met' if ratio <= 0.95 else 'not met'}"))
    return rows


# --- 8. throughput -----------------------------------------------------------------------------------------
def check_throughput(device: torch.device, sz) -> list[tuple]:
    peak = device_peak(device, None)
    args = SimpleNamespace(compile=False, batch_size=sz.bench_batch, warmup=2, steps=sz.bench_steps)
    results = []
    train = {}
    for name in ("SiT-B/2", "PF-B/2"):
        if sz.pf:  # the tiny CPU check: bench_training builds the 32x32 preset; time a step of the small one instead
            r = _tiny_bench(name, sz, device, peak)
        else:
            r = bench_training(name, args, device, peak)
        train[name] = r
    base = train["SiT-B/2"]["images_per_s"]
    for name, r in train.items():
        mfu = "n/a (unknown peak)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}% of {peak:g} TFLOP/s"
        results.append((f"train {name} images/s (eager bf16, batch {sz.bench_batch})", "INFO",
                        f"{r['images_per_s']:.1f} ({r['images_per_s'] / base:.2f}x SiT-B/2)", f"MFU {mfu}"))
    results += _sampling_rows(train, device, sz)
    return results


def _tiny_bench(name: str, sz, device: torch.device, peak) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from gpu_throughput import train_step_fn

    torch.manual_seed(0)
    net = create_model(name, num_classes=1000, in_channels=4, **sz.pf).to(device).train()
    step = train_step_fn(net, sz.bench_batch, device, bf16=device.type == "cuda")
    counter = FlopCounterMode(display=False)
    with counter:
        step()  # also the first warm-up step
    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(2):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / 2
    achieved = counter.get_total_flops() / seconds
    return {"images_per_s": sz.bench_batch / seconds, "mfu": None if peak is None else achieved / (peak * 1e12), "net": net}


@torch.no_grad()
def _sampling_rows(train: dict, device: torch.device, sz) -> list[tuple]:
    rows, speed = [], {}
    batch = sz.bench_sample_batch
    for name, r in train.items():
        net = r["net"].eval()
        cfg = net.config
        noise = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
        y = torch.arange(batch, device=device) % 1000
        for sampler in ("euler",) if name.startswith("SiT") else pf.SAMPLERS:
            steps = pf.steps_for_nfe(sampler, sz.nfe)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                pf.sample(net, noise, sampler=sampler, steps=steps, labels=y)  # warm-up
                sync(device)
                start = time.perf_counter()
                pf.sample(net, noise, sampler=sampler, steps=steps, labels=y)
                sync(device)
            speed[(name, sampler)] = batch / (time.perf_counter() - start)
    base = speed[("SiT-B/2", "euler")]
    for (name, sampler), ips in speed.items():
        rows.append((f"sample {name} {sampler} at NFE {sz.nfe} (batch {batch})", "INFO",
                     f"{ips:.2f} images/s ({ips / base:.2f}x SiT-B/2 euler)", ""))
    return rows


# --- the table -------------------------------------------------------------------------------------------
def render_table(where: str, seconds: float, done: bool) -> str:
    """The markdown table of the rows so far; a table written before the last check says so."""
    lines = [f"### gpu_check on {where}: torch {torch.__version__}, {seconds:.0f} s" + ("" if done else " (still running)"),
             f"`python {' '.join(sys.argv)}`", "", "| check | status | value | note | s |", "|---|---|---|---|---|"]
    for check, status, value, note, secs in ROWS:
        cells = [c.replace("|", "\\|") for c in (check, status, value, note)] + [f"{secs:.1f}" if secs else ""]
        lines.append("| " + " | ".join(cells) + " |")
    failed = sum(r[1] == "FAIL" for r in ROWS)
    lines += ["", f"{failed} failed of {len(ROWS)} rows"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (the GPU when there is one), cuda, cuda:K or cpu")
    ap.add_argument("--skip", nargs="*", default=[], choices=("train", "ddp", "samplers", "prepare", "evaluate", "sdpa", "step-cost", "throughput"),
                    help="leave out some checks")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the table to this markdown file, rewritten after every check")
    args = ap.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    sz = sizes(gpu)
    start = time.perf_counter()
    where = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads), tiny sizes"
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        checks = {
            "train": [(f"train {n}", lambda n=n, o=o: check_training(n, o, device, sz)) for n, o in (("PF-B/2", sz.pf), ("T2I-B/2", sz.t2i))],
            "ddp": [("DDP nccl under torchrun", lambda: check_ddp(device, work, sz))],
            "samplers": [("samplers", lambda: check_samplers(device, sz))],
            "prepare": [("prepare-latents", lambda: check_prepare(device, work))],
            "evaluate": [("train + evaluate via tiny VAE", lambda: check_evaluate(device, work, sz))],
            "sdpa": [("SDPA kernel", lambda: check_sdpa(device, sz))],
            "step-cost": [("train step vs reference-style", lambda: check_step_cost(device, sz))],
            "throughput": [("throughput", lambda: check_throughput(device, sz))],
        }
        needs_diffusers = "diffusers is not installed (pip install diffusers, or carry its wheel)"
        missing = {key: needs_diffusers for key in ("prepare", "evaluate") if importlib.util.find_spec("diffusers") is None}
        for key, items in checks.items():
            if key in args.skip or key in missing:
                row(key, "SKIP", "", "--skip" if key in args.skip else missing[key])
                continue
            for name, fn in items:
                run_check(name, fn)
                if args.out:  # replaced atomically: a run cut off by a time limit keeps its last table
                    atomic_write_text(args.out, render_table(where, time.perf_counter() - start, done=False))
    text = render_table(where, time.perf_counter() - start, done=True)
    if args.out:
        atomic_write_text(args.out, text)
    print()
    print(text, end="")
    return 1 if any(r[1] == "FAIL" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
