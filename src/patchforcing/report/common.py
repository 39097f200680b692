"""Pieces shared by ``bench`` and ``demo``: training or reusing a run, one evaluation row
(generate at an NFE budget, then the digits metrics), a resumable cache of finished rows, and
machine information for the reports."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from patchforcing.errors import ConfigError
from patchforcing.evaluation.digits import digits_metrics
from patchforcing.evaluation.generate import generate_images
from patchforcing.json_files import read_json, read_text_capped
from patchforcing.runs import METRICS_LIMIT, RunFolder, atomic_write, newest_step
from patchforcing.sampling import Guidance, SamplingPlan, get_sampler
from patchforcing.sampling.schedules import UNIFORM, canonical_schedule
from patchforcing.streams import EVAL_SEED_STRIDE
from patchforcing.training import train

METRICS = ("fid", "precision", "recall", "accuracy")
RESULTS_LIMIT = 64 << 20  # bytes of a results.json row cache (a few kB per row)
Log = Callable[[str], None]


def say(text: str) -> None:
    print(text, flush=True)


# --- training ---------------------------------------------------------------------------------------
def train_or_reuse(config, log: Log = say) -> dict[str, Any]:
    """Train ``config`` unless its run folder already holds a finished run of ``config.steps`` steps.

    Rerunning the trainer on a finished run is itself a quick no-op (it checks the checkpoint fits
    the config); a run with fewer steps resumes. Returns the trainer's summary plus ``reused``.
    """
    run_dir = Path(config.out)
    before = newest_step(run_dir)
    if before is not None and before > config.steps:
        raise ConfigError(
            f"{run_dir} holds a run of {before} steps, more than the {config.steps} asked for; "
            f"ask for --steps {before} (or more), or choose another --out"
        )
    reused = before == config.steps
    log(f"{'reusing the finished run' if reused else 'training'} {run_dir} ({config.model}, timesteps "
        f"{config.timestep_name}, {config.steps} steps{'' if before is None or reused else f', resuming from step {before}'})")
    t0 = time.perf_counter()
    summary = dict(train(config))
    summary["reused"] = bool(reused or summary.get("steps_run") == 0)
    summary["wall_minutes"] = (time.perf_counter() - t0) / 60
    return summary


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """``metrics.jsonl`` of a run: (training lines, validation lines), each sorted by step."""
    path = RunFolder(run_dir).metrics
    train_rows, val_rows = [], []
    if path.exists():
        for line in read_text_capped(path, limit=METRICS_LIMIT, fix="delete the run folder to train it again").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a half-written last line
            if "val_loss" in entry:
                val_rows.append(entry)
            elif "loss" in entry:
                train_rows.append(entry)
    return sorted(train_rows, key=lambda e: e["step"]), sorted(val_rows, key=lambda e: e["step"])


def training_facts(run_dir: Path) -> dict[str, Any]:
    """Final loss, final validation loss, training seconds and images/s read back from a run folder.

    ``images_per_sec`` is the run's own figure, the one its summary line prints: every image its
    log lines count over the seconds those lines took (``log_speed``)."""
    train_rows, val_rows = read_metrics(run_dir)
    last = train_rows[-1] if train_rows else {}
    return {
        "steps": newest_step(run_dir),
        "final_loss": last.get("loss"),
        "val_loss": val_rows[-1]["val_loss"] if val_rows else None,
        "train_seconds": last.get("time_s"),
        "images_per_sec": log_speed(train_rows),
    }


def log_speed(train_rows: list[dict]) -> float | None:
    """Training images per second over a whole log: the images of every line (``images_seen`` since
    the line before) over the seconds they took (images / the line's ``images_per_sec``), as the
    trainer's summary counts them (time spent on validation, sample grids and checkpoints excluded).
    A log resumed after a kill counts each line once."""
    images = seconds = 0.0
    before = 0
    for row in train_rows:
        seen, speed = row.get("images_seen"), row.get("images_per_sec")
        if seen is None or not speed:
            continue
        n = seen - before
        before = seen
        if n > 0:
            images, seconds = images + n, seconds + n / speed
    return images / seconds if seconds > 0 else None


# --- one evaluation row -------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingSettings:
    """Sampler options, guidance and time grid every row of a report samples with (default: the
    registry's defaults, no guidance, the uniform grid), from the generated flags (``--p-frac``,
    ``--cfg-scale``, ``--schedule``, ...).

    Attributes:
        options: option values by field name; each applies to every sampler that has the field.
        guidance: a ``Guidance`` as JSON (``{}``: none).
        schedule: the time grid of every row (``uniform``, ``shift:ALPHA``, ``edm:RHO``).
    """

    options: dict = field(default_factory=dict)
    guidance: dict = field(default_factory=dict)
    schedule: str = UNIFORM

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", canonical_schedule(self.schedule))

    def check(self, samplers) -> None:
        """Every option must belong to one of ``samplers``; the guidance must be valid and need no guide network."""
        names = {f.name for s in samplers for f in dataclasses.fields(get_sampler(s).options_type)}
        unused = sorted(set(self.options) - names)
        if unused:
            raise ConfigError(f"no sampler run here has the option(s) {', '.join('--' + u.replace('_', '-') for u in unused)}: "
                              "drop them, or add a sampler that has them")
        for s in samplers:
            self.plan(s, SamplingPlan(s, 1).nfe)  # options out of range fail now
        if Guidance.from_json(self.guidance).guide is not None:
            raise ConfigError("reports train their own networks: autoguidance with an outside network is not offered here")

    def plan(self, sampler: str, nfe: int) -> SamplingPlan:
        """The plan of one row: ``sampler`` within ``nfe``, with the options it has and the guidance."""
        fields = {f.name for f in dataclasses.fields(get_sampler(sampler).options_type)}
        options = {k: v for k, v in self.options.items() if k in fields}
        return SamplingPlan.from_nfe(sampler, nfe, guidance=Guidance.from_json(self.guidance), schedule=self.schedule,
                                     **options)

    def fingerprint(self) -> dict[str, Any]:
        """Empty at the defaults, and no ``schedule`` key on the uniform grid (rows cached before these
        settings existed stay valid)."""
        if not (self.options or self.guidance or self.schedule != UNIFORM):
            return {}
        sampling = {"options": self.options, "guidance": self.guidance}
        return {"sampling": sampling if self.schedule == UNIFORM else {**sampling, "schedule": self.schedule}}

    def argv(self) -> list[str]:
        out = [a for k, v in self.options.items() for a in ("--" + k.replace("_", "-"), repr(v))]
        out += ["--schedule", self.schedule] if self.schedule != UNIFORM else []
        g = Guidance.from_json(self.guidance)
        if g.active:
            out += ["--cfg-scale", repr(g.scale)]
        if g.interval is not None:
            out += ["--guidance-interval", g.interval.to_text()]
        return out


def evaluate_row(model: nn.Module, *, sampler: str, nfe: int, num_samples: int, seed: int,
                 batch_size: int = 250, plan: SamplingPlan | None = None) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Generate ``num_samples`` digits with ``sampler`` within ``nfe`` network calls and score them.

    Args:
        plan: the sampling plan (default: ``SamplingPlan.from_nfe(sampler, nfe)``, the defaults'
            options and no guidance).

    Returns:
        (row with fid, precision, recall, accuracy, nfe, steps, seconds, sec_per_1000 and ``plan`` (its JSON);
        the images (M, C, H, W); their labels (M,)).
    """
    plan = plan or SamplingPlan.from_nfe(sampler, nfe)
    t0 = time.perf_counter()
    _, images, labels, info = generate_images(model, plan, num_samples=num_samples, seed=seed * EVAL_SEED_STRIDE,
                                              batch_size=batch_size)
    seconds = time.perf_counter() - t0
    metrics = digits_metrics(images, labels)
    row = {k: float(metrics[k]) if k in metrics else None for k in METRICS}
    row.update(nfe=int(info["nfe"] or plan.nfe), steps=plan.steps, seconds=seconds, sec_per_1000=seconds * 1000 / num_samples,
               plan=plan.to_json())
    return row, images, labels


def min_budget(samplers) -> int:
    """The smallest NFE budget in which every one of ``samplers`` (names) fits one outer step."""
    return max(SamplingPlan(name, 1).nfe for name in samplers)


def class_ordered(images: Tensor, labels: Tensor, per_class: int = 10, num_classes: int = 10) -> Tensor:
    """Up to ``per_class`` images of each class, laid out so a 10-column grid has one class per column."""
    picks = [(labels == c).nonzero().flatten()[:per_class] for c in range(num_classes)]
    rows = max((len(p) for p in picks), default=0)
    order = [int(p[r]) for r in range(rows) for p in picks if r < len(p)]
    return images[order] if order else images[:per_class * num_classes]


# --- a resumable cache of finished rows -------------------------------------------------------------
class RowCache:
    """A JSON file (``results.json``) holding finished rows under string keys, rewritten after every row.

    Rows cached under other row-deciding settings (``fingerprint``) are dropped with a note.
    """

    def __init__(self, path: Path, fingerprint: dict[str, Any], log: Log = say):
        self.path, self.fingerprint = Path(path), fingerprint
        self.doc: dict[str, Any] = {"fingerprint": fingerprint, "cache": {}}
        if self.path.exists():
            try:
                old = read_json(self.path, limit=RESULTS_LIMIT)
            except (OSError, ValueError):  # ValueError: not JSON, not a regular file, too large
                old = {}
                log(f"{self.path} is unreadable; starting its rows over")
            old = old if isinstance(old, dict) else {}
            if old.get("fingerprint") == fingerprint:
                self.doc.update(old)
                if self.doc["cache"]:
                    log(f"resuming: {len(self.doc['cache'])} finished row(s) found in {self.path}")
            elif old.get("cache"):
                changed = sorted(k for k in set(fingerprint) | set(old.get("fingerprint") or {})
                                 if (old.get("fingerprint") or {}).get(k) != fingerprint.get(k))
                log(f"settings changed ({', '.join(changed)}): the {len(old['cache'])} cached row(s) of {self.path} are redone")

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        """Finished rows by key (stored under ``"cache"``; reports write their own ``"rows"`` list)."""
        return self.doc["cache"]

    def put(self, key: str, row: dict[str, Any]) -> None:
        self.rows[key] = row
        self.save()

    def save(self, **extra: Any) -> Path:
        self.doc.update(extra)
        text = json.dumps(_finite(self.doc), indent=1) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))


def _finite(value: Any) -> Any:
    """JSON has no NaN: write non-finite floats as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for a single value) of the non-missing values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_over_seeds(rows: list[dict[str, Any]], metrics: tuple[str, ...], **extra: Any) -> list[dict[str, Any]]:
    """One entry per (network, sampler, budget), in first-seen order: its ``nfe``, ``steps``, the
    number of seeds, and ``m``/``m_std`` (mean and std over seeds) for every name in ``metrics``.

    ``extra`` maps a field name to ``fn(network, sampler, budget)`` for per-entry additions.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["network"], r["sampler"], r["budget"]), []).append(r)
    summary = []
    for (network, sampler, budget), rs in groups.items():
        entry: dict[str, Any] = {"network": network, "sampler": sampler, "budget": budget, "nfe": rs[0]["nfe"],
                                 "steps": rs[0]["steps"], "seeds": len(rs)}
        entry.update({name: fn(network, sampler, budget) for name, fn in extra.items()})
        for m in metrics:
            entry[m], entry[f"{m}_std"] = mean_std([r.get(m) for r in rs])
        summary.append(entry)
    return summary


# --- machine and formatting -------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or "unknown", "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU"
    return (f"{info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads{gpu}); "
            f"torch {info['torch']}, Python {info['python']}, {info['platform']}")


def fmt(value: float | None, digits: int = 2, std: float | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None else "")


def parse_ints(text: str, name: str) -> tuple[int, ...]:
    """``"16,32"`` -> (16, 32); a clear ConfigError otherwise."""
    try:
        values = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"--{name} {text!r}: write whole numbers separated by commas, e.g. 16,32") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--{name} {text!r}: give at least one value, each at least 1")
    return values
