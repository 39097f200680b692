"""``patchforcing evaluate``: sample a checkpoint within an NFE budget and write its metrics.

    patchforcing evaluate --checkpoint PF-XS.safetensors --sampler look-ahead --nfe 32 \\
        --num-samples 1000 --save-npz --calibration --val-loss --out eval/look-ahead-32
    torchrun --standalone --nproc_per_node 8 -m patchforcing evaluate --checkpoint ... --out ...

One pipeline for class-conditional and text-to-image networks: a text network samples the balanced
digits-captions prompts and adds thickness/slant adherence to the metrics; every flag below works
for both, or is refused with one error line naming why.

Writes ``OUT/metrics.json`` (FID, precision, recall, accuracy, the sampling plan, NFE used, steps, seconds, and with
``--val-loss`` / ``--calibration`` the held-out diagnostics), ``OUT/samples.png`` (the first 100
samples) and, with ``--save-npz``, ``OUT/samples.npz`` (``arr_0`` uint8 NHWC RGB, ``arr_1`` labels)
for the ADM-style external evaluators. Compare samplers at equal ``--nfe``.

Resumable: the images are written to ``OUT/parts/`` as they are made (1000 per file); a killed
evaluation, rerun with the same command (any number of processes), makes only the missing ones.
The parts are removed once ``metrics.json`` is written. One evaluation at a time per ``--out``:
a second one stops at once with an error naming the first (``OUT/run.lock``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from patchforcing import runtime
from patchforcing.autoencoder import latent_decoder
from patchforcing.checkpoints import load_model
from patchforcing.commands.plan_flags import add_plan_flags, plan_from_args
from patchforcing.errors import ConfigError
from patchforcing.evaluation.evaluate import EvalSpec, check_num_samples, evaluate, save_samples_npz
from patchforcing.guides import load_guide_model
from patchforcing.images import pixels_to_float, save_grid
from patchforcing.runs import atomic_write, ensure_writable_folder
from patchforcing.runtime import DEFAULT_TIMEOUT_S

GRID_IMAGES = 100
PARTS_DIR = "parts"  # images in parts while sampling: a killed evaluation resumes (evaluation.parts)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="sample within an NFE budget and compute FID/precision/recall",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or a training run folder")
    add_plan_flags(p, budget="nfe")
    p.add_argument("--num-samples", type=int, required=True, help="images in total (image i uses seed + i)")
    p.add_argument("--seed", type=int, default=0, help="image i uses noise seed + i")
    p.add_argument("--data", default="digits",
                   help="digits (built-in metrics; text networks: the digits-captions prompts), or the network's "
                        "data set with --stats")
    p.add_argument("--stats", default=None,
                   help="reference Inception statistics (an ADM reference batch .npz, or mu and sigma) for non-digits data")
    p.add_argument("--vae", default=None,
                   help="decode a latent network's samples with this AutoencoderKL (folder or cached hub id; "
                        "default: the VAE the run folder records)")
    p.add_argument("--inception-weights", default=None,
                   help="FID Inception weights file (default: the torch hub cache)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per sampler call per process (results do not depend on it)")
    p.add_argument("--save-npz", action="store_true",
                   help="also write samples.npz for external evaluators (always written for latent networks "
                        "and when a metric cannot be computed here)")
    p.add_argument("--calibration", action="store_true", help="add difficulty-head calibration on the held-out split")
    p.add_argument("--val-loss", action="store_true", help="add the 8-segment validation loss (docs/method.md) on the held-out split")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a process waits for the slowest one under torchrun before the job fails")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    plan = plan_from_args(args)  # a bad sampler option, budget, interval or scale fails before any work
    check_num_samples(args.num_samples)
    runtime.check_seed(args.seed, count=max(args.num_samples, 0))
    ensure_writable_folder(args.out)  # before any work: a full disk or a bad --out never costs a sampling run
    procs = runtime.setup(args.device, args.dist_timeout, command="evaluate")
    ok, lock = False, None
    try:
        lock = runtime.own_folder(args.out, procs)  # one evaluation per --out: the parts of two would mix
        model = load_model(args.checkpoint, map_location=procs.device)
        guide_model = load_guide_model(plan, model, procs.device)
        decoder = latent_decoder(args.checkpoint, vae=args.vae, device=procs.device)
        spec = EvalSpec(args.num_samples, args.seed, data=args.data, stats=args.stats,
                        inception_weights=args.inception_weights, decoder=decoder, batch_size=args.batch_size,
                        parts_dir=Path(args.out) / PARTS_DIR, calibration=args.calibration, val_loss=args.val_loss)
        result = evaluate(model, plan, spec, guide_model=guide_model, procs=procs, keep="pixels")
        if decoder is not None:
            result["decoder"] = decoder.describe()
        runtime.run_on_main(lambda: write_outputs(model, result, args), procs)
        ok = True
    finally:
        runtime.teardown(procs, barrier=ok)  # after an error every rank raised together: no barrier
        if lock is not None:
            lock.release()
    return 0


def write_outputs(model, result: dict[str, Any], args: argparse.Namespace) -> Path:
    """Rank 0: write metrics.json, samples.png and samples.npz."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pixels, labels = result.pop("images_uint8"), result.pop("labels")
    metrics = {**result, "checkpoint": str(args.checkpoint), "model": model.config.to_dict(),
               "device": str(next(model.parameters()).device)}
    save_grid(pixels_to_float(pixels[:GRID_IMAGES]), out / "samples.png", ncols=10)
    if args.save_npz or "decoder" in metrics or metrics.get("not_computed"):
        save_samples_npz(out / "samples.npz", pixels, labels.numpy())
        metrics["samples_npz"] = str(out / "samples.npz")
    text = json.dumps(metrics, indent=2, default=_json_default)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    print(_summary(metrics, out))
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # kept only while the evaluation is unfinished
    return out


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _summary(m: dict[str, Any], out: Path) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4g}"

    text = (f"{m['sampler']}: {m['steps']} steps, {m['nfe']}/{m['nfe_budget']} NFE, {m['num_samples']} samples -> "
            f"FID {fmt(m['fid'])}, precision {fmt(m['precision'])}, recall {fmt(m['recall'])}, "
            f"accuracy {fmt(m['accuracy'])} ({m['seconds']:.1f} s)")
    if "attribute_adherence" in m:
        text += (f"; thickness {fmt(m['thickness_adherence'])}, slant {fmt(m['slant_adherence'])}, "
                 f"both {fmt(m['attribute_adherence'])}")
    if "val_loss" in m:
        text += f"; val loss {m['val_loss']:.4g}"
    for reason in dict.fromkeys((m.get("not_computed") or {}).values()):
        text += f"\nnot computed: {reason}"
    return f"{text}\nwrote {out / 'metrics.json'}"

