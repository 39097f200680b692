"""Shared helpers for the benchmark scripts: interleaved timing, so that ratios measured in one
run are fair on a noisy machine."""

from __future__ import annotations

import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch


def command_line() -> str:
    """The command that ran, with ``OMP_NUM_THREADS=N`` in front when it was set (the thread count
    decides the timings these scripts print)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    return ("" if threads is None else f"OMP_NUM_THREADS={shlex.quote(threads)} ") + "python " + " ".join(shlex.quote(a) for a in sys.argv)


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                      clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of every call of each function, alternating them round by round (round ``i`` of
    every function is entry ``i``, so two functions' times pair up round by round). Every other
    round runs them in reverse order, so no function always runs first.

    ``clock``: wall time by default; ``time.process_time`` counts only the CPU time of this
    process, which other jobs on a shared machine do not inflate (use it with one thread)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name, fn in list(fns.items())[:: 1 if r % 2 == 0 else -1]:
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall seconds per call of each function, alternating them round by round."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeats, warmup).items()}


def paired_ratios(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and quartiles (q1, median, q3) of the round-by-round ratios ``num[i] / den[i]``.

    Calls of one round run back to back, so a load that comes and goes on a shared machine hits
    both sides of a pair; the spread of the pairs says how far a single ratio can be trusted.
    """
    ratios = sorted(a / b for a, b in zip(num, den, strict=False))
    q1, med, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return q1, med, q3


def describe_machine() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu"
