"""``benchmarks/gpu_check.py --device cpu``: the tiny version of every GPU-path check still runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about two minutes on 2 CPU cores
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "table" / "gpu_check.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    table = done.stdout[done.stdout.index("| check | status |"):]
    for check in ("train bf16 PF-B/2", "train bf16 T2I-B/2", "DDP nccl", "samplers x", "prepare-latents --device cpu",
                  "evaluate --save-npz", "SDPA kernel", "train step PF-B/2 vs reference-style step (eager",
                  "train step PF-B/2 vs reference-style step (both compiled", "train PF-B/2 images/s", "sample PF-B/2 look-ahead"):
        assert check in table, check
    assert "| FAIL |" not in table and "0 failed of" in done.stdout
    saved = out.read_text()  # the file holds the final table, the one printed last
    assert "(still running)" not in saved and done.stdout.endswith(saved) and "| train bf16 PF-B/2" in saved


def test_gpu_check_skips_the_vae_rows_without_diffusers(tmp_path):
    """On a machine whose PyTorch came without diffusers the two VAE rows say why they did not run."""
    script = ("import runpy, sys; sys.modules['diffusers'] = None; "  # what find_spec reports for a missing package
              f"sys.argv = ['gpu_check.py', '--device', 'cpu', '--out', {str(tmp_path / 't.md')!r}, '--skip', "
              "'train', 'ddp', 'samplers', 'sdpa', 'step-cost', 'throughput']; "
              f"runpy.run_path({str(ROOT / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "t.md").read_text()
    for key in ("prepare", "evaluate"):
        assert f"| {key} | SKIP |  | diffusers is not installed" in table
    assert "| FAIL |" not in table
