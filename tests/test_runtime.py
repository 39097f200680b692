"""patchforcing.runtime: devices, the process group and its timeout, collectives."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from patchforcing import runtime
from patchforcing.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src" / "patchforcing"


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "", "cuda0"])
def test_unknown_device_is_one_clear_error(name):
    with pytest.raises(ConfigError, match="unknown device"):
        runtime.resolve_device(name)


def test_cpu_and_auto_resolve():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_missing_cuda_names_the_fix():
    with pytest.raises(ConfigError, match="--device cpu"):
        runtime.resolve_device("cuda:0")


def test_single_process_collectives_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    procs = runtime.setup("cpu")
    assert (procs.rank, procs.world_size, procs.is_main, procs.distributed) == (0, 1, True, False)
    x = torch.arange(3.0)
    assert torch.equal(runtime.all_reduce_mean(x, procs), x)
    assert runtime.gather_to_main("a", procs) == ["a"]
    assert runtime.run_on_main(lambda: 7, procs) == 7
    runtime.teardown(procs)


def test_launch_without_rendezvous_and_bad_timeout_are_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        runtime.setup("cpu", command="evaluate")
    with pytest.raises(ConfigError, match="dist-timeout"):
        runtime.setup("cpu", timeout_s=0)


def test_only_runtime_touches_torch_distributed():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "runtime.py"
                 and re.search(r"torch\.distributed|torch\.nn\.parallel|DistributedDataParallel", p.read_text())]
    assert offenders == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    procs = runtime.setup("cpu", timeout_s=1.5)
    gathered = runtime.gather_to_main(rank * 10, procs)
    mean = runtime.all_reduce_mean(torch.tensor([float(rank)]), procs).item()
    if rank == 1:  # a hung worker: never reaches the barrier below
        time.sleep(4.5)
        results.put((rank, gathered, mean, None))
        return
    start = time.perf_counter()
    try:
        runtime.barrier(procs)
        outcome = "returned"
    except Exception as err:  # noqa: BLE001 - the timeout is what this test expects
        outcome = f"{type(err).__name__} after {time.perf_counter() - start:.1f}s"
    results.put((rank, gathered, mean, outcome))


def test_hung_worker_fails_the_others_after_the_timeout():
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    out = {r: rest for r, *rest in (results.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
    assert out[0][0] == [0, 10] and out[1][0] is None  # gathered on rank 0 only
    assert out[0][1] == out[1][1] == 0.5
    outcome = out[0][2]
    assert outcome != "returned"
    assert float(outcome.split(" after ")[1][:-1]) < 4  # the 1.5 s timeout, not torch's 30 minutes


_FAULTS = """
import resource, sys, torch
from patchforcing import runtime
applied = runtime.steady_cpu_allocator() if sys.argv[1] == "steady" else False

def step():  # what a training step does with its activations: allocate and write many, free all
    blocks = [torch.ones(1 << 20) for _ in range(16)]  # 16 x 4 MiB
    del blocks

step()  # the first step faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")
def test_steady_cpu_allocator_stops_the_per_step_page_faults():
    """Under glibc's defaults every round of 4 MiB blocks is mapped (or the heap regrown) anew, a page
    fault per 4 KiB each round; after steady_cpu_allocator later rounds reuse the first round's pages."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {}
    for mode in ("glibc", "steady"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env, check=True)
        applied, faults = out.stdout.split()
        runs[mode] = (applied == "True", int(faults))
    assert runs["steady"][0] and not runs["glibc"][0]
    # glibc's defaults fault whole 4 MiB blocks in again (1,024 pages each) in every later step;
    # the steady allocator reuses the first step's pages
    assert runs["glibc"][1] > 5 * 1024 and runs["steady"][1] < 4 * 1024, runs
    # a user's own glibc settings win: the call then changes nothing
    out = subprocess.run([sys.executable, "-c", _FAULTS, "steady"], capture_output=True, text=True, check=True,
                         env={**env, "MALLOC_TRIM_THRESHOLD_": "262144"})
    assert out.stdout.split()[0] == "False"


def test_console_exit_skips_interpreter_teardown_only_after_a_process_group(monkeypatch, capsys):
    """After a torchrun command the script leaves with os._exit(code) once its output is flushed (PyTorch's
    teardown of a gloo group at exit aborts now and then); a single-process command exits normally."""
    import patchforcing.commands as commands

    exits = []
    monkeypatch.setattr(commands, "main", lambda: 3)
    monkeypatch.setattr(commands.os, "_exit", lambda code: exits.append(code))
    with pytest.raises(SystemExit) as info:  # no process group: Python's own exit
        commands.console_main()
    assert info.value.code == 3 and exits == []
    monkeypatch.setattr(runtime, "_STARTED_GROUPS", [2])
    assert runtime.started_process_group()
    with pytest.raises(SystemExit):  # os._exit is stubbed here, so the sys.exit after it runs too
        commands.console_main()
    assert exits == [3]
