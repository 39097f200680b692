"""What a run reports: ``metrics.jsonl``, the progress bar, and the summary line (rank 0 only)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from patchforcing.errors import TrainingError
from patchforcing.json_files import read_text_capped
from patchforcing.runs import METRICS_LIMIT, atomic_write


class MetricsLog:
    """Appends one JSON object per line to ``DIR/metrics.jsonl``, the source of truth, and hands the
    same line (and each sample grid) to the experiment trackers of ``--log`` (``trackers.py``).

    Training lines: ``{"step", "loss", "flow_loss", "uncertainty_loss", "lr", "grad_norm",
    "images_per_sec", "images_seen", "time_s"}`` (losses averaged over the steps since the last
    line and over processes). Validation lines: ``{"step", "val_loss", "val_segments": [8 floats]}``.
    """

    def __init__(self, path: Path, enabled: bool, trackers: Sequence[Any] = ()):
        self.path, self.enabled, self.trackers = path, enabled, list(trackers)

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after ``step``: a resumed run redoes them."""
        if not self.enabled or not self.path.exists():
            return
        text = read_text_capped(self.path, limit=METRICS_LIMIT, error=TrainingError,
                                fix="move it away (a resumed run rewrites it) or choose another --out")
        kept = [line for line in text.splitlines() if line.strip() and _step_of(line) <= step]
        atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))

    def write(self, entry: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            for tracker in self.trackers:
                tracker.log(entry)

    def image(self, step: int, path: Path) -> None:
        """A sample grid the trainer wrote (only the trackers take it; the PNG stays in ``samples/``)."""
        if self.enabled:
            for tracker in self.trackers:
                tracker.image(step, path)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (json.JSONDecodeError, AttributeError):
        return math.inf  # a half-written last line of a crashed run


class Progress:
    """A tqdm bar on a terminal; plain lines every ``print_every`` steps otherwise (logs, CI)."""

    def __init__(self, enabled: bool, first: int, total: int, print_every: int):
        self.enabled, self.total, self.print_every = enabled, total, print_every
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=first - 1, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, stats: dict[str, Any] | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if stats:
                self.bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{stats['images_per_sec']:.0f}", refresh=False)
        elif stats and (step % self.print_every == 0 or step == self.total):
            print(f"step {step}/{self.total}  loss {stats['loss']:.4f}  {stats['images_per_sec']:.0f} images/s", flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary_line(summary: dict[str, Any]) -> str:
    val = f"{summary['val_loss']:.4f}" if summary.get("val_loss") is not None else "n/a"
    loss = f"{summary['final_loss']:.4f}" if summary.get("final_loss") is not None else "n/a"
    return (
        f"trained {summary['steps']} steps (this run: {summary['steps_run']}): loss {loss}, val loss {val}, "
        f"{summary['images_per_sec']:.0f} images/s, {summary['minutes']:.1f} min; checkpoint {summary['checkpoint']}"
    )
