"""Shared helpers for the benchmark scripts: interleaved timing, so that ratios measured in one
run are fair on a noisy machine."""

from __future__ import annotations

import shlex
import statistics
import sys
import time
from typing import Callable

import torch


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall seconds per call of each function, alternating them round by round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def describe_machine() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu"
