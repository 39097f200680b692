"""Devices and processes: the one module of the project that touches ``torch.distributed``.

``torchrun`` (and ``accelerate launch --multi_gpu``) start one process per GPU and describe it
in ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. With
``WORLD_SIZE > 1``, ``setup`` joins a process group (nccl on CUDA, gloo on the CPU); otherwise
the run is a single process and every collective below is a no-op. Every command (``train``,
``evaluate``, ``sample``, ``prepare-latents``) resolves its device and its processes here.

A worker that hangs (a dead node, a stuck data read) makes the others wait in their next
collective; they give up after ``timeout_s`` seconds (``--dist-timeout``, default 10 minutes)
instead of torch's default of 30 minutes (nccl) or longer.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from patchforcing import runs
from patchforcing.errors import ConfigError
from patchforcing.runs import RunLock

DEFAULT_TIMEOUT_S = 600.0  # a hung rank fails the job after 10 minutes instead of 30
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
T = TypeVar("T")
_STARTED_GROUPS: list[int] = []  # the process groups ``setup`` started in this process (their sizes)


@dataclass(frozen=True)
class Processes:
    """Where this process sits: its ``rank`` among ``world_size`` and its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and prints; the others only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# glibc's mallopt parameters (<malloc.h>) and the values steady_cpu_allocator sets
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def steady_cpu_allocator() -> bool:
    """Let the process keep the CPU memory it frees (Linux with glibc; process-wide, for the rest of it).

    By default glibc hands out blocks above its (adaptive) threshold as fresh memory maps, unmaps
    them on free and trims the heap's free top, so a training step on the CPU page-faults its
    activations in anew every time. With allocations up to 32 MiB served from the heap and the
    heap trimmed only beyond 1 GiB of free space, a step reuses the pages of the last one:
    ``benchmarks/train_throughput.py`` measures the difference. Freed memory stays with the
    process (up to that 1 GiB) instead of going back to the system.

    Returns whether it applied: not where the user set ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` (theirs win), nor on another C library or system.
    """
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):  # no confstr name (not glibc / not Linux), or no libc.so.6
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def check_seed(seed: int, flag: str = "--seed", count: int = 0) -> int:
    """Check a seed flag: image ``i`` uses seed ``seed + i`` (``i < count``), and seeds are
    non-negative integers below 2^63.

    Raises:
        ConfigError: a negative or too large seed; the message names ``flag``.
    """
    if not (0 <= seed and seed + count < 2**63):
        raise ConfigError(f"{flag} must be an integer in [0, 2^63), got {seed}; seeds of image i are {flag} + i")
    return seed


# --- devices -----------------------------------------------------------------------------------
def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a ``--device`` value.

    Args:
        name: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:K`` or ``mps``.
        local_rank: under a launcher, plain ``cuda`` means GPU ``local_rank`` of this node.

    Raises:
        ConfigError: an unknown name, or a device this machine does not have.
    """
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:K (a GPU index) or mps")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}, but PyTorch sees no CUDA device here; use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if name == "cuda":  # one GPU per process, chosen by the launcher's LOCAL_RANK
            return torch.device("cuda", local_rank % count)
        index = int(name.split(":")[1])
        if index >= count:
            raise ConfigError(f"--device {name}, but this machine has {count} GPU(s): use cuda:0 .. cuda:{count - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps, but PyTorch sees no Apple GPU here; use --device cpu (or auto)")
    return torch.device(name)


def launcher_world_size() -> int:
    """``WORLD_SIZE`` as the launcher set it (1 without a launcher); readable before ``setup``."""
    return _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer; start the processes "
                          "with torchrun, which sets it") from None


# --- process group -----------------------------------------------------------------------------
def setup(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S, command: str = "train") -> Processes:
    """Read the launcher's environment, resolve the device and join the process group if any.

    Args:
        device: a ``--device`` value (see ``resolve_device``).
        timeout_s: seconds a collective waits for the slowest rank before the job fails.
        command: the subcommand, named in the error for a half-configured launch.

    Returns:
        This process's ``Processes``; a single process when ``WORLD_SIZE`` is unset or 1.
    """
    if not timeout_s > 0:
        raise ConfigError(f"--dist-timeout must be a positive number of seconds, got {timeout_s}")
    world_size, rank = launcher_world_size(), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world_size} but MASTER_ADDR is not set; start the processes with "
                              f"`torchrun --nproc_per_node N -m patchforcing {command} ...`")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        _STARTED_GROUPS.append(world_size)
    return Processes(rank, world_size, local_rank, dev)


def started_process_group() -> bool:
    """Whether ``setup`` started a process group in this process (the command ran under ``torchrun``)."""
    return bool(_STARTED_GROUPS)


def teardown(procs: Processes, barrier: bool = True) -> None:
    """Leave the process group; ``barrier`` waits for every rank first (skip it after an error)."""
    if procs.distributed and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def data_parallel(net: nn.Module, procs: Processes) -> nn.Module:
    """``net`` wrapped in DistributedDataParallel when distributed, else ``net`` itself."""
    if not procs.distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)


# --- collectives -------------------------------------------------------------------------------
def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """The mean of ``values`` over processes (a copy; ``values`` itself when single)."""
    if procs.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= procs.world_size
    return values


def all_reduce_min(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """The elementwise minimum of ``values`` over processes."""
    if procs.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def gather_to_main(obj: T, procs: Processes) -> list[T] | None:
    """Every rank's picklable ``obj`` on rank 0 (in rank order); None on the other ranks."""
    if not procs.distributed:
        return [obj]
    require_group(procs)
    out: list[Any] | None = [None] * procs.world_size if procs.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: T, procs: Processes) -> T:
    """Rank 0's picklable ``obj`` on every rank."""
    if not procs.distributed:
        return obj
    require_group(procs)
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn: Callable[[], T], procs: Processes) -> T:
    """Run ``fn`` on rank 0 and hand its result to every rank. An error raised there is raised on
    every rank, so no rank waits in a later collective for one that already failed."""
    if not procs.distributed:
        return fn()
    result: tuple[str, Any] | None = None
    if procs.is_main:
        try:
            result = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            result = ("error", err)
    status, value = broadcast_from_main(result, procs)
    if status == "error":
        raise value
    return value


def own_folder(folder: str | os.PathLike, procs: Processes | None = None,
               log: Callable[[str], Any] | None = None) -> RunLock:
    """Lock output ``folder`` for the whole command, before anything is written, and remove the
    temporary files of writes a kill interrupted (``patchforcing.runs``).

    Rank 0 takes the lock for every rank of its job; an error there (the folder is in use, is a
    file, cannot be written) is raised on every rank. Release the returned lock when done (it is
    a context manager; on the other ranks releasing it does nothing).

    Raises:
        RunFolderError: another live process holds ``folder``; the message names it.
        ConfigError: ``folder`` is a file or cannot be created or written.
    """
    procs = procs or Processes()
    held: list[RunLock] = []

    def take() -> list[str]:
        held.append(runs.lock_run_folder(folder))
        try:
            return [str(p) for p in runs.remove_stale_temporaries(folder)]
        except BaseException:
            held.pop().release()
            raise

    removed = run_on_main(take, procs)
    if removed and procs.is_main:
        (log or _say)(f"removed {len(removed)} temporary file(s) of interrupted writes: "
                      f"{', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''}")
    return held[0] if held else RunLock(Path(folder), None)


def _say(line: str) -> None:
    print(line, flush=True)


def require_group(procs: Processes) -> None:
    """Fail early when ``procs`` says distributed but no process group of its size runs."""
    if not procs.distributed:
        return
    if not dist.is_initialized() or dist.get_world_size() != procs.world_size:
        raise ConfigError(f"world_size={procs.world_size} but no process group of that size is running; "
                          "call patchforcing.runtime.setup() first (torchrun sets RANK and WORLD_SIZE)")
