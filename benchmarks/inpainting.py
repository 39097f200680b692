"""Inpainting at equal NFE on held-out digits and photos: the known patches' modes against replacement.

    # the networks: the four `patchforcing train` commands of docs/inpainting.md (about 25 CPU minutes)
    OMP_NUM_THREADS=1 python benchmarks/inpainting.py --digits-pf-run inpaint_runs/digits-pf \
        --digits-sit-run inpaint_runs/digits-sit --photos-pf-run inpaint_runs/photos-pf \
        --photos-sit-run inpaint_runs/photos-sit --out inpaint_runs/bench
    python benchmarks/inpainting.py --tiny --out /tmp/inpaint        # seconds: tiny untrained networks
    OMP_NUM_THREADS=1 python benchmarks/inpainting.py --timing       # time per NFE, pf.inpaint against pf.sample

Per data set (the held-out digits; the first ``--photos-images`` held-out photo crops), mask (the
centre square, 25 % of the area; the right half: outpainting; 50 % of the patches at random, one
draw per image) and budget (NFE 8, 16, 32) and seed (0, 1, 2: image i of seed k has noise seed
``k * EVAL_SEED_STRIDE + i``): the Patch Forcing network with look-ahead and each mode of the known
patches (``same``, ``ahead``, ``clean``), and its SiT twin with Euler and replacement (``same``, the
only mode a global-time network has). Completions are unconditional (the null class), so the
known part alone says what to draw. Scores, against the held-out images in the data set's feature
space (digits: the bundled classifier's; photos: ``evaluation/photos.py``): FID, precision and
recall, and for digits the classifier's agreement between the completion and the original label.
Diversity (NFE 16, seed 0): the mean pairwise feature distance of 8 completions of each of
``--diversity-inputs`` inputs. One JSON row per measurement in ``OUT/rows`` and ``OUT/diversity``;
rerunning the command skips finished rows. The report's results block in ``docs/inpainting.md``
(between its markers) and the plots in ``docs/inpainting/`` are rewritten; the rest of the page is
kept. The rule that decides the default mode is stated in ``docs/inpainting.md`` (written before the runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
import patchforcing as pf  # noqa: E402
from common import command_line, interleaved_times, paired_ratios  # noqa: E402
from patchforcing.data import load_dataset  # noqa: E402
from patchforcing.errors import ConfigError  # noqa: E402
from patchforcing.evaluation.classifier import classification_accuracy, extract_features, load_digits_classifier  # noqa: E402
from patchforcing.evaluation.frechet import feature_statistics, frechet_distance  # noqa: E402
from patchforcing.evaluation.photos import photo_features  # noqa: E402
from patchforcing.evaluation.prdc import precision_recall  # noqa: E402
from patchforcing.images import save_grid  # noqa: E402
from patchforcing.report.common import fmt, machine_info, mean_std, parse_ints  # noqa: E402
from patchforcing.report.plots import PALETTE, panel_plot  # noqa: E402
from patchforcing.runs import atomic_write_text, newest_step  # noqa: E402
from patchforcing.sampling import SamplingPlan  # noqa: E402
from patchforcing.streams import EVAL_SEED_STRIDE  # noqa: E402

DATASETS = ("digits", "photos")
MASKS = ("centre", "right-half", "random-patches")
PF_SAMPLER, SIT_SAMPLER = "look-ahead", "euler"
CONFIGS = (("pf", "same"), ("pf", "ahead"), ("pf", "clean"), ("sit", "same"))  # (network, mode)
CANDIDATES = ("ahead", "clean")  # the modes the rule may promote over `same`
DIVERSITY_BUDGET, DIVERSITY_COMPLETIONS, DIVERSITY_SEED_OFFSET = 16, 8, 50  # completion j uses seed (50 + j) * stride + i
RANDOM_MASK_SEED = 7_000_000  # image i's random-patches mask is drawn from seed RANDOM_MASK_SEED + i
MARK_BEGIN, MARK_END = "<!-- results: written by benchmarks/inpainting.py -->", "<!-- end of results -->"
TINY = dict(images=12, photos_images=12, seeds=2, nfe=(4, 8), diversity_inputs=3, batch_size=16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for data in DATASETS:
        for kind in ("pf", "sit"):
            ap.add_argument(f"--{data}-{kind}-run", help=f"the {data} {'Patch Forcing' if kind == 'pf' else 'SiT'} network "
                            "(run folder or checkpoint)")
    ap.add_argument("--out", help="folder of the cached rows")
    ap.add_argument("--doc", help="the page whose results block is rewritten (default docs/inpainting.md; OUT/inpainting.md with --tiny)")
    ap.add_argument("--nfe", default=None, help="budgets, e.g. 8,16,32")
    ap.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default 3)")
    ap.add_argument("--digits-images", type=int, default=None, help="held-out digits per row (default: all 297)")
    ap.add_argument("--photos-images", type=int, default=None, help="held-out photo crops per row (default 256 of 1024, for CPU time)")
    ap.add_argument("--diversity-inputs", type=int, default=None, help="inputs completed 8 times each (default 16)")
    ap.add_argument("--batch-size", type=int, default=300)
    ap.add_argument("--tiny", action="store_true", help="tiny untrained networks and a few images: a smoke test")
    ap.add_argument("--timing", action="store_true", help="only the timing line: time per NFE of pf.inpaint against pf.sample")
    ap.add_argument("--repeats", type=int, default=12, help="--timing: interleaved rounds")
    ap.add_argument("--timing-sizes", default="digits,large", help="--timing: the network sizes, digits and/or large")
    args = ap.parse_args(argv)
    if args.timing:
        return args
    base = dict(TINY) if args.tiny else dict(images=297, photos_images=256, seeds=3, nfe=(8, 16, 32), diversity_inputs=16,
                                             batch_size=args.batch_size)
    args.nfe = tuple(sorted(set(parse_ints(args.nfe, "nfe")))) if args.nfe else base["nfe"]
    args.seeds = args.seeds or base["seeds"]
    args.images = {"digits": args.digits_images or base["images"], "photos": args.photos_images or base["photos_images"]}
    args.diversity_inputs = args.diversity_inputs or base["diversity_inputs"]
    args.batch_size = base["batch_size"]
    if not args.out:
        raise ConfigError("pass --out FOLDER (the cached rows), or --timing")
    runs = {(d, k): getattr(args, f"{d}_{k}_run") for d in DATASETS for k in ("pf", "sit")}
    for data in DATASETS:
        if not args.tiny and bool(runs[data, "pf"]) != bool(runs[data, "sit"]):
            raise ConfigError(f"pass both --{data}-pf-run and --{data}-sit-run, or neither")
    if not args.tiny and not any(runs.values()):
        raise ConfigError("pass the networks of a data set (--digits-pf-run and --digits-sit-run, --photos-...), or --tiny")
    args.runs = runs
    args.doc = Path(args.doc or (Path(args.out) / "inpainting.md" if args.tiny else "docs/inpainting.md"))
    return args


# --- networks and data ------------------------------------------------------------------------------
def tiny_network(kind: str, data: str) -> torch.nn.Module:
    """A 1-block width-32 network of the data set's shape with seeded random weights (untrained)."""
    torch.manual_seed(0)
    shape = dict(input_size=16, in_channels=1, num_classes=10) if data == "digits" else \
        dict(input_size=32, in_channels=3, num_classes=8, patch_size=4)
    net = pf.create_model("PF-XS/2" if kind == "pf" else "SiT-XS/2", depth=1, hidden_size=32, num_heads=2, **shape)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


def load_networks(args) -> dict[tuple[str, str], tuple[torch.nn.Module, str]]:
    """``{(data, kind): (model, identity)}``; the identity (path @ step) goes into every row."""
    nets = {}
    for (data, kind), path in args.runs.items():
        if args.tiny:
            nets[data, kind] = (tiny_network(kind, data), f"tiny-{data}-{kind}")
            continue
        if not path:
            continue
        model = pf.load_model(path)
        step = newest_step(path) if Path(path).is_dir() else None
        nets[data, kind] = (model.eval(), f"{Path(path).resolve()}@{step}")
        if model.config.has_difficulty_head != (kind == "pf"):
            raise ConfigError(f"--{data}-{kind}-run must be a {'Patch Forcing' if kind == 'pf' else 'SiT'} network")
        if (model.config.in_channels == 1) != (data == "digits"):
            raise ConfigError(f"--{data}-{kind}-run has {model.config.in_channels} channel(s), not the {data} data's")
    return nets


class HeldOut:
    """The held-out images of a data set, their labels and features, and the feature function."""

    def __init__(self, data: str, count: int):
        self.data = data
        ds = load_dataset("digits" if data == "digits" else "photos-labeled", split="test")
        self.images, self.labels = ds.images[:count].float(), ds.labels[:count]
        if data == "digits":
            self.classifier = load_digits_classifier()
            self.features = lambda x: extract_features(self.classifier.features, x.float())
        else:
            self.classifier = None
            self.features = lambda x: photo_features(x.float())
        self.reference = self.features(ds.images.float())  # every held-out image: the FID reference
        self.stats = feature_statistics(self.reference)


def make_mask(name: str, count: int, size: int, patch: int, offset: int = 0) -> torch.Tensor:
    """(count, 1, size, size) float 0/1, 1 = generate."""
    m = torch.zeros(count, 1, size, size)
    if name == "centre":
        m[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    elif name == "right-half":
        m[..., size // 2:] = 1
    else:  # half of the patches, one draw per image
        g = size // patch
        for i in range(count):
            chosen = torch.randperm(g * g, generator=torch.Generator().manual_seed(RANDOM_MASK_SEED + offset + i))[: g * g // 2]
            grid = torch.zeros(g * g)
            grid[chosen] = 1
            m[i, 0] = grid.view(g, g).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    return m


def completions(model, held: HeldOut, mask_name: str, mode: str, budget: int, seeds: list[int], indices: list[int],
                batch_size: int) -> tuple[torch.Tensor, int]:
    """The completed images of ``indices`` with noise seeds ``seeds`` (one per image) and the NFE used."""
    sampler = PF_SAMPLER if model.config.has_difficulty_head else SIT_SAMPLER
    plan = SamplingPlan.from_nfe(sampler, budget)
    cfg = model.config
    out, nfe = [], None
    for lo in range(0, len(indices), batch_size):
        part = indices[lo:lo + batch_size]
        image = held.images[part]
        masks = torch.cat([make_mask(mask_name, 1, cfg.input_size, cfg.patch_size, offset=i) for i in part])
        x, info = pf.inpaint(model, image, masks, plan, seeds=seeds[lo:lo + batch_size], mode=mode, return_info=True)
        out.append(x.float())
        nfe = info["nfe"]
    return torch.cat(out), int(nfe)


# --- rows ---------------------------------------------------------------------------------------------
def row_path(out: Path, folder: str, *key: Any) -> Path:
    return out / folder / ("__".join(str(k) for k in key) + ".json")


def cached(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if path.exists():
        row = json.loads(path.read_text())
        if all(row.get(k) == v for k, v in fingerprint.items()):
            return row
    return None


def write_row(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(row, indent=1) + "\n")
    return row


def quality_row(out: Path, nets, helds, args, data: str, kind: str, mode: str, mask: str, budget: int, seed: int) -> dict[str, Any]:
    model, identity = nets[data, kind]
    held = helds[data]
    n = len(held.images)
    path = row_path(out, "rows", data, kind, mode, mask, f"nfe{budget}", f"seed{seed}")
    fingerprint = {"network_id": identity, "images": n}
    row = cached(path, fingerprint)
    if row is not None:
        return row
    t0 = time.process_time()
    indices = list(range(n))
    x, nfe = completions(model, held, mask, mode, budget, [seed * EVAL_SEED_STRIDE + i for i in indices], indices, args.batch_size)
    feats = held.features(x)
    mu, sigma = feature_statistics(feats)
    row = {"data": data, "network": kind, "mode": mode, "mask": mask, "budget": budget, "seed": seed, **fingerprint,
           "nfe": nfe, "fid": float(frechet_distance(mu, sigma, *held.stats)), **precision_recall(held.reference, feats, k=3),
           "agreement": None if held.classifier is None else classification_accuracy(held.classifier, x, held.labels),
           "seconds": time.process_time() - t0}
    print(f"{data} {kind} {mode} {mask} NFE {nfe}/{budget} seed {seed}: FID {row['fid']:.3f} ({row['seconds']:.1f} s)", flush=True)
    return write_row(path, row)


def diversity_row(out: Path, nets, helds, args, data: str, kind: str, mode: str, mask: str) -> dict[str, Any]:
    model, identity = nets[data, kind]
    held = helds[data]
    k = args.diversity_inputs
    path = row_path(out, "diversity", data, kind, mode, mask, f"nfe{DIVERSITY_BUDGET}")
    fingerprint = {"network_id": identity, "inputs": k, "completions": DIVERSITY_COMPLETIONS}
    row = cached(path, fingerprint)
    if row is not None:
        return row
    t0 = time.process_time()
    indices = [i for i in range(k) for _ in range(DIVERSITY_COMPLETIONS)]
    seeds = [(DIVERSITY_SEED_OFFSET + j) * EVAL_SEED_STRIDE + i for i in range(k) for j in range(DIVERSITY_COMPLETIONS)]
    x, nfe = completions(model, held, mask, mode, DIVERSITY_BUDGET, seeds, indices, args.batch_size)
    feats = torch.from_numpy(held.features(x)).double().view(k, DIVERSITY_COMPLETIONS, -1)
    pairs = list(itertools.combinations(range(DIVERSITY_COMPLETIONS), 2))
    dist = torch.stack([(feats[:, a] - feats[:, b]).norm(dim=-1) for a, b in pairs], dim=1)  # (k, pairs)
    row = {"data": data, "network": kind, "mode": mode, "mask": mask, "budget": DIVERSITY_BUDGET, **fingerprint, "nfe": nfe,
           "diversity": float(dist.mean()), "seconds": time.process_time() - t0}
    return write_row(path, row)


# --- the rule -------------------------------------------------------------------------------------------
def scores(rows: list[dict]) -> dict[tuple, float]:
    """(data, mode, budget, seed) -> FID of the Patch Forcing network averaged over the masks."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["network"] == "pf":
            groups.setdefault((r["data"], r["mode"], r["budget"], r["seed"]), []).append(r["fid"])
    return {k: statistics.fmean(v) for k, v in groups.items() if len(v) == len(MASKS)}


def verdict(rows: list[dict], budgets: tuple[int, ...], seeds: int, measured: list[str]) -> dict[str, Any]:
    """Per candidate mode: the budgets it wins per data set, whether it passes, and the default mode."""
    s = scores(rows)
    out: dict[str, Any] = {"modes": {}}
    for mode in CANDIDATES:
        entry: dict[str, Any] = {"data": {}}
        for data in measured:
            won, notes = 0, []
            for b in budgets:
                mine = [s.get((data, mode, b, k)) for k in range(seeds)]
                base = [s.get((data, "same", b, k)) for k in range(seeds)]
                if None in mine or None in base:
                    notes.append(f"{b}: n/a")
                    continue
                wins = sum(m < x for m, x in zip(mine, base, strict=True))
                ok = statistics.fmean(mine) < statistics.fmean(base) and 2 * wins > seeds
                won += ok
                notes.append(f"{b}: {'win' if ok else 'no'} ({wins}/{seeds})")
            entry["data"][data] = {"won": won, "passes": won >= min(2, len(budgets)), "notes": notes}
        entry["passes"] = set(measured) == set(DATASETS) and all(d["passes"] for d in entry["data"].values())
        ratios = [s[(d, mode, b, k)] / s[(d, "same", b, k)] for d in measured for b in budgets for k in range(seeds)
                  if (d, mode, b, k) in s and (d, "same", b, k) in s]
        entry["ratio"] = statistics.fmean(ratios) if ratios else None
        out["modes"][mode] = entry
    passing = sorted((m for m, e in out["modes"].items() if e["passes"]), key=lambda m: out["modes"][m]["ratio"])
    out["default"] = passing[0] if passing else "same"
    return out


# --- report ---------------------------------------------------------------------------------------------
LABEL = {("pf", "same"): "PF look-ahead, same", ("pf", "ahead"): "PF look-ahead, ahead", ("pf", "clean"): "PF look-ahead, clean",
         ("sit", "same"): "SiT Euler, replacement"}


def summary(rows: list[dict]) -> dict[tuple, dict[str, Any]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["network"], r["mode"], r["mask"], r["budget"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        entry: dict[str, Any] = {"nfe": rs[0]["nfe"], "seeds": len(rs)}
        for m in ("fid", "precision", "recall", "agreement"):
            entry[m], entry[f"{m}_std"] = mean_std([r.get(m) for r in rs])
        out[key] = entry
    return out


def quality_table(summ: dict, data: str, budgets: tuple[int, ...]) -> list[str]:
    mid = budgets[len(budgets) // 2]
    agree = data == "digits"
    head = ["mask", "network, mode", *[f"FID @ {b}" for b in budgets], f"precision / recall @ {mid}"]
    head += [f"label agreement @ {b}" for b in budgets] if agree else []
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for mask in MASKS:
        for cfg in CONFIGS:
            es = [summ.get((data, *cfg, mask, b)) for b in budgets]
            if not any(es):
                continue
            cells = [("n/a" if e is None else f"{fmt(e['fid'], 2, e['fid_std'])} ({e['nfe']})") for e in es]
            e = summ.get((data, *cfg, mask, mid))
            cells.append("n/a" if e is None else f"{fmt(e['precision'], 3)} / {fmt(e['recall'], 3)}")
            if agree:
                cells += ["n/a" if e is None else fmt(e["agreement"], 3) for e in es]
            lines.append(f"| {mask} | {LABEL[cfg]} | " + " | ".join(cells) + " |")
    return lines + [""]


def diversity_table(div: list[dict], data: str) -> list[str]:
    by = {(r["network"], r["mode"], r["mask"]): r for r in div if r["data"] == data}
    lines = ["| network, mode | " + " | ".join(MASKS) + " |", "|---|" + "---:|" * len(MASKS)]
    for cfg in CONFIGS:
        if any(cfg + (m,) in by for m in MASKS):
            lines.append(f"| {LABEL[cfg]} | " + " | ".join(fmt(by[cfg + (m,)]["diversity"], 3) if cfg + (m,) in by else "n/a"
                                                        for m in MASKS) + " |")
    return lines + [""]


def plot(path: Path, rows: list[dict], data: str) -> Path:
    summ = summary(rows)
    panels = []
    for mask in MASKS:
        series = []
        for i, cfg in enumerate(CONFIGS):
            pts = sorted((e["nfe"], e["fid"], e["fid_std"]) for (d, n, m, mk, _), e in summ.items() if (d, n, m, mk) == (data, *cfg, mask))
            style = {"color": PALETTE[i], "linestyle": "--" if cfg[0] == "sit" else "-"}
            series.append((LABEL[cfg], [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], style))
        panels.append((mask, series))
    return panel_plot(path, panels, xlabel="NFE per image", ylabel="FID against the held-out images (lower is better)",
                      logy=True, suptitle=f"Inpainting on {data}: FID against NFE, per mask")


def examples(path: Path, nets, helds, data: str, budget: int, count: int = 6) -> Path:
    """A picture: per mask, rows = the input, the masked input, then each configuration's completion (seed 0)."""
    tiles = []
    for mask in ("centre", "right-half"):
        held = helds[data]
        model = nets[data, "pf"][0]
        m = torch.cat([make_mask(mask, 1, model.config.input_size, model.config.patch_size, offset=i) for i in range(count)])
        tiles += [held.images[:count], torch.where(m.bool(), torch.zeros(()), held.images[:count])]
        for kind, mode in CONFIGS:
            if (data, kind) in nets:
                tiles.append(completions(nets[data, kind][0], held, mask, mode, budget, list(range(count)), list(range(count)),
                                         count)[0])
    return save_grid(torch.cat(tiles), path, ncols=count)


def write_report(args, rows, div, measured, plots, pictures, cpu_minutes) -> dict[str, Any]:
    budgets = args.nfe
    summ = summary(rows)
    v = verdict(rows, budgets, args.seeds, measured)
    lines = [MARK_BEGIN, "", "## Results", "",
             f"Equal NFE per image (the NFE used in brackets: look-ahead takes the most steps that fit). FID, precision and recall "
             f"against the held-out images, mean ± std over {args.seeds} seeds; completions are unconditional (the null class). "
             f"Digits: {args.images['digits']} held-out images, the digit classifier's features; photos: the first "
             f"{args.images['photos']} of the 1024 held-out crops, the photo features of `evaluation/photos.py`.", ""]
    for data in measured:
        lines += [f"### {data.capitalize()}", "", *quality_table(summ, data, budgets), f"![FID against NFE on {data}]({plots[data]})", "",
                  f"Examples (NFE {budgets[len(budgets) // 2]}, seed 0; per mask: the input, the masked input, then "
                  + ", ".join(LABEL[c] for c in CONFIGS) + "):", "", f"![completions on {data}]({pictures[data]})", "",
                  f"Diversity: mean pairwise feature distance of {DIVERSITY_COMPLETIONS} completions of each of "
                  f"{args.diversity_inputs} inputs (NFE {DIVERSITY_BUDGET}, higher = more varied):", "", *diversity_table(div, data)]
    lines += ["### The rule", "", "| mode | " + " | ".join(f"{d}: budgets won (per budget: seeds won)" for d in measured)
              + " | passes | mean score / same |", "|---|" + "---|" * len(measured) + "---|---:|"]
    for mode, e in v["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{e['data'][d]['won']} of {len(budgets)} ({'; '.join(e['data'][d]['notes'])})"
                                                 for d in measured)
                     + f" | {'yes' if e['passes'] else 'no'} | {fmt(e['ratio'], 3)} |")
    lines += ["", f"Verdict: the default mode is **{v['default']}**"
              + (" (no other mode passes the rule)." if v["default"] == "same" else " (it passes the rule)."), "",
              f"Command: `{command_line()}`. Sampling and scoring by this invocation: {cpu_minutes:.1f} CPU min; summed over "
              "every cached row: " + ", ".join(f"{d} {sum(r['seconds'] for r in rows + div if r['data'] == d) / 60:.1f} min"
                                               for d in measured)
              + f". Machine: {machine_info()['cpu']}, {torch.get_num_threads()} torch thread(s).", "", MARK_END]
    doc = args.doc
    text = doc.read_text() if doc.exists() else "# Inpainting\n\n"
    if MARK_BEGIN in text and MARK_END in text:
        text = text[:text.index(MARK_BEGIN)] + "\n".join(lines) + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(doc, text)
    return v


# --- timing ---------------------------------------------------------------------------------------------
def timing(args) -> None:
    """Time per NFE of ``pf.inpaint`` against ``pf.sample`` on the same plan and noise (paired rounds, CPU time).

    ``same`` isolates the cost of the region (the network sees the times the sampler gives); ``ahead`` and ``clean``
    add the network's own cost of two distinct times per image (``docs/method.md`` §3.3: the modulation
    is shared per distinct time), which look-ahead's context evaluations already pay."""
    print(f"# {command_line()}")
    print("# CPU time per call, interleaved rounds (one thread); ratio = inpaint / sample at the same NFE: median "
          "(quartiles) of the paired rounds")
    sizes = {"digits": ("digits size (depth 2, width 64, 64 tokens)", dict(depth=2, hidden_size=64, num_heads=2, input_size=16,
                                                                         in_channels=1)),
             "large": ("sampler_overhead size (depth 6, width 384, 256 tokens)", dict(depth=6, hidden_size=384, num_heads=6,
                                                                                      input_size=32, in_channels=4))}
    chosen = [v for v in args.timing_sizes.split(",") if v]
    if not chosen or set(chosen) - set(sizes):
        raise ConfigError(f"--timing-sizes takes digits and/or large, comma-separated, got {args.timing_sizes!r}")
    for title, shape in (sizes[k] for k in chosen):
        torch.manual_seed(0)
        net = pf.create_model("PF-S/2", num_classes=10, **shape).eval()
        for p in net.parameters():
            p.data.normal_(0, 0.02)
        b, c, r = 8, shape["in_channels"], shape["input_size"]
        noise = pf.sampling.noise_for_seeds(range(b), (c, r, r))
        image = torch.rand(b, c, r, r) * 2 - 1
        mask = make_mask("centre", b, r, 2)
        for sampler in ("euler-pf", "look-ahead"):
            plan = SamplingPlan.from_nfe(sampler, 16)
            fns = {"sample": lambda n=net, p=plan, z=noise: pf.sample(n, z, p)}
            for mode in ("same", "ahead", "clean"):
                fns[mode] = lambda n=net, i=image, m=mask, p=plan, z=noise, mode=mode: pf.inpaint(n, i, m, p, noise=z, mode=mode)
            times = interleaved_times(fns, args.repeats, clock=time.process_time)
            per_nfe = statistics.median(times["sample"]) / plan.nfe * 1000
            cells = []
            for mode in ("same", "ahead", "clean"):
                q1, med, q3 = paired_ratios(times[mode], times["sample"])
                cells.append(f"{mode} {med:.3f} ({q1:.3f} .. {q3:.3f})")
            q1, med, q3 = paired_ratios(times["same"], times["sample"])
            print(f"{title}, {sampler}, NFE {plan.nfe}, batch {b}: sample {per_nfe:.2f} ms/NFE; inpaint / sample per NFE: "
                  + "; ".join(cells) + f" -> same {'within' if abs(med - 1) <= 0.02 else 'NOT within'} 2 %", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.timing:
            timing(args)
            return 0
        out = Path(args.out)
        nets = load_networks(args)
        measured = [d for d in DATASETS if (d, "pf") in nets]
        helds = {d: HeldOut(d, args.images[d]) for d in measured}
        t0 = time.process_time()
        rows, div = [], []
        for data in measured:
            for (kind, mode), mask in itertools.product(CONFIGS, MASKS):
                if (data, kind) not in nets:
                    continue
                rows += [quality_row(out, nets, helds, args, data, kind, mode, mask, b, k) for b in args.nfe for k in range(args.seeds)]
                div.append(diversity_row(out, nets, helds, args, data, kind, mode, mask))
        figures = args.doc.parent / ("inpainting" if not args.tiny else "inpainting_tiny")
        plots = {d: os.path.relpath(plot(figures / f"fid_{d}.png", rows, d), args.doc.parent) for d in measured}
        pictures = {d: os.path.relpath(examples(figures / f"examples_{d}.png", nets, helds, d, args.nfe[len(args.nfe) // 2]),
                                       args.doc.parent) for d in measured}
        v = write_report(args, rows, div, measured, plots, pictures, (time.process_time() - t0) / 60)
        atomic_write_text(figures / "results.json", json.dumps({"rows": rows, "diversity": div, "verdict": v,
                                                            "command": command_line()}, indent=1) + "\n")
        print(f"wrote {args.doc} and {figures}; default mode by the rule: {v['default']}")
        return 0
    except pf.PatchForcingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
