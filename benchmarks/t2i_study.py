"""Patch Forcing against the same text-to-image network trained with one global time, on
digits-captions, at equal NFE: euler-pf / dual-loop / look-ahead, FID, digit accuracy and attribute
adherence, plus a grid of prompts x samplers.

Train the two networks first (equal steps; the only difference is the timestep distribution):

    OMP_NUM_THREADS=1 patchforcing train --preset digits-t2i --out runs/t2i-pf --steps 800 --timesteps auto
    OMP_NUM_THREADS=1 patchforcing train --preset digits-t2i --out runs/t2i-global --steps 800 --timesteps uniform
    OMP_NUM_THREADS=1 python benchmarks/t2i_study.py --pf runs/t2i-pf --global runs/t2i-global --out docs/t2i

``--timesteps auto`` is ltg with loc 0.5 for text networks; ``uniform`` draws one time per image
(standard flow matching). Writes ``study.json``, ``study.md`` (the table) and ``grid.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line, describe_machine  # noqa: E402
from patchforcing.evaluation import evaluate_model  # noqa: E402
from patchforcing.evaluation.conditions import Prompts  # noqa: E402
from patchforcing.evaluation.generate import generate_images  # noqa: E402
from patchforcing.sampling import SamplingPlan  # noqa: E402
from patchforcing.text import load_text_encoder  # noqa: E402
from patchforcing.training.evaluate import save_training_grid  # noqa: E402

SAMPLERS = ("euler-pf", "dual-loop", "look-ahead")
GRID_PROMPTS = ("a bold seven, upright", "a thin seven, slanted right", "the digit 2, thin and slanted left",
                "the digit 2, bold and upright", "a bold handwritten 0, slanted right", "three written in thin strokes, upright")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pf", required=True, help="run folder of the Patch Forcing network (ltg)")
    ap.add_argument("--global", dest="global_run", required=True, help="run folder of the global-time network (uniform)")
    ap.add_argument("--nfe", type=int, default=16)
    ap.add_argument("--num-samples", type=int, default=600)
    ap.add_argument("--cfg-scales", default="1,2")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nets = {"patch-forcing": pf.load_model(args.pf), "global-time": pf.load_model(args.global_run)}
    encoder = load_text_encoder(nets["patch-forcing"].config.text_encoder, max_length=nets["patch-forcing"].config.text_length)
    rows = []
    for cfg_scale in [float(c) for c in args.cfg_scales.split(",")]:
        for name, net in nets.items():
            for sampler in SAMPLERS:
                t0 = time.perf_counter()
                plan = SamplingPlan.from_nfe(sampler, args.nfe, guidance=pf.Guidance(cfg_scale))
                r = evaluate_model(net, plan, num_samples=args.num_samples, encoder=encoder)
                r.update(network=name, seconds=time.perf_counter() - t0)
                rows.append(r)
                print(f"{name:<14} {sampler:<11} cfg {cfg_scale:g}: NFE {r['nfe']}, FID {r['fid']:.2f}, acc {r['accuracy']:.3f}, "
                      f"thick {r['thickness_adherence']:.3f}, slant {r['slant_adherence']:.3f}, both {r['attribute_adherence']:.3f}", flush=True)
    header = "| network | sampler | CFG | NFE | FID (classifier features) | digit acc. | thickness | slant | both |"
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['network']} | {r['sampler']} | {r['cfg_scale']:g} | {r['nfe']} | {r['fid']:.2f} | {r['accuracy']:.3f} | "
                     f"{r['thickness_adherence']:.3f} | {r['slant_adherence']:.3f} | {r['attribute_adherence']:.3f} |")
    # grid: rows = prompts, columns = (network, sampler), the same noise per row, CFG 2
    tiles = []
    for prompt_index, prompt in enumerate(GRID_PROMPTS):
        for net in nets.values():
            for sampler in SAMPLERS:
                plan = SamplingPlan.from_nfe(sampler, args.nfe, guidance=pf.Guidance(2.0))
                _, img, _, _ = generate_images(net, plan, num_samples=1, seed=100 + prompt_index,
                                               conditions=Prompts([prompt], encoder))
                tiles.append(img)
    save_training_grid(torch.cat(tiles), out / "grid.png", len(nets) * len(SAMPLERS))
    meta = {"command": command_line(), "machine": describe_machine(), "grid_prompts": GRID_PROMPTS,
            "grid_columns": [f"{n} {s}" for n in nets for s in SAMPLERS]}
    (out / "study.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
