"""prepare-latents: the posterior std and mirrored images it stores, what training draws from them,
resuming after a kill, never losing a complete folder, and the folder lock."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch

import patchforcing.data.prepare as prepare
from conftest import image_folder_of_noise, make_vae
from patchforcing.data import load_dataset, prepare_latents
from patchforcing.data.latents import (
    LATENT_FORMAT,
    LATENT_VERSION,
    load_latent_dataset,
    read_meta,
)
from patchforcing.errors import ConfigError, DataError
from patchforcing.runs import lock_run_folder
from patchforcing.timesteps import timestep_distribution
from patchforcing.training.batches import StepBatches, latent_views

pytestmark = pytest.mark.usefixtures("one_thread")
SCALE = 0.18215


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An image folder (2 classes x 7 images of 16 px) and a tiny AutoencoderKL saved offline."""
    pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("prep")
    vae = make_vae(root / "vae")
    return image_folder_of_noise(root / "images", per_class=7, size=(16, 16)), root / "vae", vae


def _prepare(setup, out: Path, **kw):
    images, vae_path, _ = setup
    return prepare_latents(str(images), str(vae_path), str(out), resolution=16, **{"batch_size": 2, "shard_size": 3, **kw})


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("run.lock", "meta.json")}


class Interrupted(Exception):
    pass


def _interrupt_after(monkeypatch, shards: int) -> None:
    """Simulate a kill: the (shards + 1)-th shard write raises."""
    real, count = prepare.atomic_save_safetensors, {"n": 0}

    def save(tensors, path, *args, **kwargs):
        if count["n"] == shards:
            raise Interrupted(str(path))
        count["n"] += 1
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(prepare, "atomic_save_safetensors", save)


# --- what is stored ---------------------------------------------------------------------------------
def test_stores_posterior_std_and_the_mirrored_images(setup, tmp_path):
    images, _, vae = setup
    out = _prepare(setup, tmp_path / "lat", hflip=True)
    meta = read_meta(out)
    assert meta["posterior"] is True and meta["hflip"] is True
    ds = load_latent_dataset(out, lazy=True)
    pixels = load_dataset(str(images), resolution=16)
    with torch.no_grad():
        dist = vae.encode(pixels.images).latent_dist
        mirrored = vae.encode(torch.flip(pixels.images, dims=[-1])).latent_dist
    views = ds.latent_views
    torch.testing.assert_close(ds.images[:], dist.mean * SCALE, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(views.std[:], dist.std * SCALE, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(views.flip[:], mirrored.mean * SCALE, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(views.flip_std[:], mirrored.std * SCALE, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(views.flip[:], ds.images[:], atol=1e-3)


def _batches(ds, rank=0, world_size=1, sampling="auto", seed=3):
    return StepBatches(ds.images, ds.labels, seed=seed, batch_size=4, rank=rank, world_size=world_size,
                       timesteps=timestep_distribution("ltg"), num_patches=16, null_label=2, drop_prob=0.1,
                       global_time=False, **latent_views(ds, sampling))


def test_training_draws_a_view_per_sample_and_step_from_the_step_stream(setup, tmp_path):
    ds = load_latent_dataset(_prepare(setup, tmp_path / "lat", hflip=True))
    views = ds.latent_views
    mean_only = _batches(ds, sampling="mean")
    picked = set()
    for step in range(1, 6):
        batch = mean_only[step]
        rows = mean_only.indices(step)
        for i, row in enumerate(rows.tolist()):  # each sample is the mean of the image or of its mirror
            plain, mirror = torch.equal(batch.x1[i], ds.images[row]), torch.equal(batch.x1[i], views.flip[row])
            assert plain != mirror
            picked.add(mirror)
    assert picked == {True, False}
    posterior = _batches(ds)  # auto: the folder stores the std
    assert posterior.posterior
    one = posterior[2]
    halves = [_batches(ds, rank, 2)[2] for rank in (0, 1)]  # two processes: the same global batch
    for key in ("x1", "x0", "t", "condition"):
        assert torch.equal(torch.cat([getattr(h, key) for h in halves]), getattr(one, key)), key
    assert torch.equal(_batches(ds)[2].x1, one.x1)  # a function of (seed, step): resume-exact
    assert not any(torch.equal(one.x1, v) for v in (mean_only[2].x1, _batches(ds, seed=4)[2].x1))
    rows = posterior.indices(2)
    eps_free = torch.stack([ds.images[r] if torch.equal(mean_only[2].x1[i], ds.images[r]) else views.flip[r]
                            for i, r in enumerate(rows.tolist())])
    assert torch.equal(one.x0, mean_only[2].x0) and torch.equal(one.t, mean_only[2].t)
    assert (one.x1 - eps_free).abs().max() < 6 * views.std[:].max()  # mean + std * eps around the same view


def _old_folder(root: Path) -> Path:
    """A latent folder as older versions wrote it: means only, shards in train/ at the top."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    (root / "train").mkdir(parents=True)
    save_file({"latents": torch.randn(10, 4, 8, 8, generator=g), "labels": torch.arange(10) % 2},
              str(root / "train" / "shard-00000.safetensors"))
    meta = {"format": LATENT_FORMAT, "version": LATENT_VERSION, "vae": "tiny", "source": "synthetic",
            "scale_factor": SCALE, "shift_factor": 0.0, "channels": 4, "resolution": 8, "image_resolution": 64,
            "num_classes": 2, "class_names": ["0", "1"], "num_images": {"train": 10},
            "shards": {"train": ["train/shard-00000.safetensors"]}}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_older_folders_train_on_the_same_batches(tmp_path):
    ds = load_latent_dataset(_old_folder(tmp_path / "old"))
    assert ds.latent_views is None
    plain = StepBatches(ds.images, ds.labels, seed=3, batch_size=4, rank=0, world_size=1,
                        timesteps=timestep_distribution("ltg"), num_patches=16, null_label=2, drop_prob=0.1,
                        global_time=False)
    auto, mean = _batches(ds), _batches(ds, sampling="mean")
    for step in (1, 2, 7):
        want = plain[step]
        for got in (auto[step], mean[step]):
            assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("x1", "x0", "t", "condition"))
    with pytest.raises(ConfigError, match="--latent-sampling mean"):
        _batches(ds, sampling="posterior")


# --- resume, replace, lock ----------------------------------------------------------------------------
def test_an_interrupted_preparation_resumes_to_the_uninterrupted_result(setup, tmp_path, monkeypatch):
    whole = _prepare(setup, tmp_path / "whole", hflip=True)
    _interrupt_after(monkeypatch, shards=3)  # train has 4 shards of 3 rows
    with pytest.raises(Interrupted):
        _prepare(setup, tmp_path / "cut", hflip=True)
    assert not (tmp_path / "cut" / "meta.json").exists()
    monkeypatch.undo()
    encoded = []
    real = prepare._encode_rows
    monkeypatch.setattr(prepare, "_encode_rows", lambda *a: encoded.append(len(a[1])) or real(*a))
    resumed = _prepare(setup, tmp_path / "cut", hflip=True)  # the same command again
    assert read_meta(resumed) == {**read_meta(whole), "vae": read_meta(resumed)["vae"]}
    assert _files(resumed) == _files(whole)  # every shard, caption and settings file byte for byte
    assert sum(encoded) < 14  # the three finished shards (9 rows) were kept, not encoded again


def test_a_complete_folder_survives_an_interrupted_rewrite(setup, tmp_path, monkeypatch):
    out = _prepare(setup, tmp_path / "lat")
    before = load_latent_dataset(out, lazy=False).images.clone()
    gc.collect()
    _interrupt_after(monkeypatch, shards=1)
    with pytest.raises(Interrupted):
        _prepare(setup, out, shard_size=2)
    monkeypatch.undo()
    assert torch.equal(load_latent_dataset(out, lazy=False).images, before)  # the old data, whole
    gc.collect()
    _prepare(setup, out, shard_size=2)
    meta = read_meta(out)
    assert len(meta["shards"]["train"]) == -(-meta["num_images"]["train"] // 2) > 3  # the new shard size
    assert sorted(p.name for p in out.iterdir()) == ["gen-2", "meta.json", "run.lock"]  # the old generation is gone
    torch.testing.assert_close(load_latent_dataset(out, lazy=False).images, before, atol=1e-6, rtol=0)


def test_a_folder_being_read_is_not_rewritten_and_one_being_written_is_not_read(setup, tmp_path):
    out = _prepare(setup, tmp_path / "lat")
    held = load_dataset(str(out))  # as a training holds its data
    with pytest.raises(DataError, match="in use: a training is reading it"):
        _prepare(setup, out)
    del held
    gc.collect()
    with lock_run_folder(out):  # as prepare-latents holds it
        with pytest.raises(DataError, match="being written by prepare-latents"):
            load_dataset(str(out))
    _prepare(setup, out)


@pytest.mark.parametrize("damage", ["missing", "wrong-type", "bad-shards"])
def test_a_damaged_meta_json_is_one_clear_error(tmp_path, damage):
    root = _old_folder(tmp_path / "old")
    meta = json.loads((root / "meta.json").read_text())
    if damage == "missing":
        del meta["scale_factor"]
    elif damage == "wrong-type":
        meta["resolution"] = "8"
    else:
        meta["shards"] = {"train": [3]}
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"meta.json .*(scale_factor|resolution|shards).*prepare-latents"):
        load_dataset(str(root))


def test_rewriting_a_folder_of_an_older_version_replaces_its_shards(setup, tmp_path):
    root = _old_folder(tmp_path / "old")
    (root / "train" / "notes.txt").write_text("a user's file")  # not ours: kept
    _prepare(setup, root)
    assert read_meta(root)["shards"]["train"][0].startswith("gen-1/train/")
    assert [p.name for p in (root / "train").iterdir()] == ["notes.txt"]
    assert load_latent_dataset(root).latent_views.std is not None
