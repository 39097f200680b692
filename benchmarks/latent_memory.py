"""Peak memory of training batches from a latent folder: rows read on demand vs read whole.

Writes synthetic version-1 latent folders (4x32x32 float32 latents, the ImageNet-256 SD-VAE
shape, 16 KiB each) of two sizes into a temporary folder, then, in a fresh Python process per
case, opens the folder with ``load_dataset`` and draws training batches with ``StepBatches``
exactly as ``train`` does, and prints the process's peak resident memory (``ru_maxrss``). The
folders are deleted at the end.

    OMP_NUM_THREADS=1 python benchmarks/latent_memory.py                    # 64 MiB vs 1 GiB
    OMP_NUM_THREADS=1 python benchmarks/latent_memory.py --sizes-mib 64 256 --tmp /tmp
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPE = (4, 32, 32)  # SD-VAE latents of 256 px images
BYTES_PER_LATENT = 4 * SHAPE[0] * SHAPE[1] * SHAPE[2]
SHARD = 4096  # latents per shard, the prepare-latents default

CHILD = r"""
import json, resource, sys, time
import torch
from patchforcing.data import load_dataset
from patchforcing.data.latents import load_latent_dataset
from patchforcing.timesteps import timestep_distribution
from patchforcing.training.batches import StepBatches

folder, lazy, steps, batch = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = load_dataset(folder) if lazy else load_latent_dataset(folder, lazy=False)
batches = StepBatches(data.images, data.labels, seed=0, batch_size=batch, rank=0, world_size=1,
                      timesteps=timestep_distribution("ltg"), num_patches=256, null_label=1000, drop_prob=0.1,
                      global_time=False)
start, total = time.perf_counter(), 0.0
for step in range(1, steps + 1):
    total += float(batches[step].x1.sum())
seconds = time.perf_counter() - start
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "after_import_mib": base / 1024, "ms_per_batch": 1000 * seconds / steps}))
"""


def write_folder(root: Path, num_latents: int) -> None:
    """A latent folder of ``num_latents`` random latents, written shard by shard."""
    import torch
    from safetensors.torch import save_file

    from patchforcing.data.latents import LATENT_FORMAT, LATENT_VERSION

    (root / "train").mkdir(parents=True)
    g, shards = torch.Generator().manual_seed(0), []
    for k, lo in enumerate(range(0, num_latents, SHARD)):
        n = min(SHARD, num_latents - lo)
        name = f"train/shard-{k:05d}.safetensors"
        save_file({"latents": torch.randn((n, *SHAPE), generator=g),
                   "labels": torch.randint(0, 1000, (n,), generator=g)}, str(root / name))
        shards.append(name)
    meta = {"format": LATENT_FORMAT, "version": LATENT_VERSION, "vae": "synthetic", "source": "synthetic",
            "scale_factor": 0.18215, "shift_factor": 0.0, "channels": SHAPE[0], "resolution": SHAPE[1],
            "image_resolution": 8 * SHAPE[1], "num_classes": 1000, "class_names": [str(c) for c in range(1000)],
            "num_images": {"train": num_latents}, "shards": {"train": shards}}
    (root / "meta.json").write_text(json.dumps(meta))


def measure(folder: Path, lazy: bool, steps: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), "1" if lazy else "0", str(steps), str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 1024], help="folder sizes to compare")
    p.add_argument("--steps", type=int, default=50, help="training batches drawn per case")
    p.add_argument("--batch-size", type=int, default=256, help="global batch of each step")
    p.add_argument("--tmp", default=None, help="where the synthetic folders go (deleted afterwards)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="latent-memory-", dir=args.tmp))
    try:
        print(f"{'folder':>10} {'latents':>8} {'loading':>8} {'peak RSS':>10} {'after import':>13} {'ms/batch':>9}")
        for mib in args.sizes_mib:
            num = mib * 2**20 // BYTES_PER_LATENT
            folder = work / f"{mib}mib"
            write_folder(folder, num)
            for lazy in (True, False):
                r = measure(folder, lazy, args.steps, args.batch_size)
                print(f"{mib:>7} MiB {num:>8} {'lazy' if lazy else 'eager':>8} {r['peak_mib']:>6.0f} MiB "
                      f"{r['after_import_mib']:>9.0f} MiB {r['ms_per_batch']:>9.2f}", flush=True)
            shutil.rmtree(folder)
        print(f"({args.steps} batches of {args.batch_size} latents of {'x'.join(map(str, SHAPE))} float32 per case)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
