"""Latent folders read on demand (shard by shard, row by row) give exactly the batches of eagerly loaded ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from patchforcing.data import load_dataset
from patchforcing.data.latents import LATENT_FORMAT, LATENT_VERSION, load_latent_dataset
from patchforcing.data.mapped import MappedLatents
from patchforcing.errors import DataError
from patchforcing.timesteps import timestep_distribution
from patchforcing.training.batches import StepBatches, iterate


def write_folder(root: Path, sizes: dict[str, list[int]], shape=(4, 8, 8), num_classes: int = 3, seed: int = 0,
                 **meta_overrides) -> Path:
    """A version-1 latent folder with shards of the given sizes (random latents, no VAE needed)."""
    g = torch.Generator().manual_seed(seed)
    meta_shards, counts = {}, {}
    for split, shard_sizes in sizes.items():
        (root / split).mkdir(parents=True)
        meta_shards[split] = []
        for k, n in enumerate(shard_sizes):
            name = f"{split}/shard-{k:05d}.safetensors"
            save_file({"latents": torch.randn((n, *shape), generator=g),
                       "labels": torch.randint(0, num_classes, (n,), generator=g)}, str(root / name))
            meta_shards[split].append(name)
        counts[split] = sum(shard_sizes)
    meta = {"format": LATENT_FORMAT, "version": LATENT_VERSION, "vae": "tiny", "source": "synthetic",
            "scale_factor": 0.5, "shift_factor": 0.0, "channels": shape[0], "resolution": shape[1],
            "image_resolution": shape[1] * 8, "num_classes": num_classes,
            "class_names": [str(c) for c in range(num_classes)], "num_images": counts, "shards": meta_shards,
            **meta_overrides}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "lat", {"train": [7, 5, 1, 6], "test": [3]})


def test_indexing_equals_the_eager_tensor(folder):
    eager = load_latent_dataset(folder, lazy=False).images
    mapped = load_latent_dataset(folder).images
    assert isinstance(mapped, MappedLatents) and mapped.shape == eager.shape == (19, 4, 8, 8)
    index = torch.tensor([18, 0, 6, 7, 8, 12, 13, 5, 5, -1])  # across shard borders, repeats, negative
    assert torch.equal(mapped[index], eager[index])
    assert torch.equal(mapped[3:15], eager[3:15]) and torch.equal(mapped[12], eager[12])
    assert torch.equal(mapped[torch.tensor([], dtype=torch.long)], eager[:0])
    assert torch.allclose(mapped, eager)  # any other torch operation reads the rows
    with pytest.raises(IndexError):
        mapped[torch.tensor([19])]


@pytest.mark.parametrize("world_size", [1, 2])
def test_step_batches_equal_eager_batch_for_batch(folder, world_size):
    """Per-(seed, step) batches, several epochs (19 rows, batch 8), any rank: bit-identical."""
    sets = {lazy: load_dataset(str(folder)) if lazy else load_latent_dataset(folder, lazy=False) for lazy in (True, False)}
    kw = dict(seed=3, batch_size=8, world_size=world_size, timesteps=timestep_distribution("ltg"), num_patches=16,
              null_label=3, drop_prob=0.1, global_time=False)
    for rank in range(world_size):
        mapped, eager = (StepBatches(sets[m].images, sets[m].labels, rank=rank, **kw) for m in (True, False))
        for step in (1, 2, 3, 7, 11):  # step 11 alone equals step 11 of a run: resume draws the same
            a, b = mapped[step], eager[step]
            assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("x1", "x0", "t", "condition")), step


def test_dataloader_workers_read_the_same_batches(folder):
    data = load_dataset(str(folder))
    kw = dict(seed=0, batch_size=4, rank=0, world_size=1, timesteps=timestep_distribution("uniform"), num_patches=16,
              null_label=None, drop_prob=0.0, global_time=False)
    batches = StepBatches(data.images, data.labels, **kw)
    inline = [b.x1 for b in iterate(batches, 1, 6, num_workers=0, pin_memory=False)]
    workers = [b.x1 for b in iterate(batches, 1, 6, num_workers=2, pin_memory=False)]
    assert all(torch.equal(a, b) for a, b in zip(inline, workers, strict=True))


def test_a_damaged_shard_is_one_clear_error(folder):
    (folder / "train" / "shard-00001.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="re-run prepare-latents"):
        load_dataset(str(folder))
