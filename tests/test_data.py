"""Data: built-in sets, image folders and latent folders (CPU, tiny autoencoder, seconds)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import make_vae
from patchforcing.autoencoder import encode_latents
from patchforcing.data import ImageDataset, digits_split_indices, load_dataset, prepare_latents, split_image_files
from patchforcing.data.builtin import PHOTOS_TEST_FRACTION, photo_crop_plan, photo_regions
from patchforcing.errors import DataError

# ----------------------------------------------------------------------------- digits


def test_digits_shapes_range_and_labels():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert isinstance(train, ImageDataset)
    assert train.images.shape == (1500, 1, 16, 16) and test.images.shape == (297, 1, 16, 16)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert train.images.min() == -1 and train.images.max() == 1  # the full range is used
    assert train.num_classes == 10 and train.class_names == [str(d) for d in range(10)]
    assert set(train.labels.tolist()) == set(range(10)) and set(test.labels.tolist()) <= set(range(10))
    assert (train.channels, train.resolution, train.name, train.is_latent) == (1, 16, "digits", False)
    image, label = train[3]
    assert image.shape == (1, 16, 16) and label.dtype == torch.int64 and label.ndim == 0


def test_digits_split_is_fixed_disjoint_and_matches_the_documented_rule():
    train_idx, test_idx = digits_split_indices("train"), digits_split_indices("test")
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(test_idx, np.sort(perm[:297]))
    np.testing.assert_array_equal(train_idx, np.sort(perm[297:]))
    assert len(np.intersect1d(train_idx, test_idx)) == 0 and len(np.union1d(train_idx, test_idx)) == 1797
    # The tensors follow the exact preprocessing the evaluation classifier relies on.
    from sklearn.datasets import load_digits

    raw = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16 * 2 - 1
    expected = F.interpolate(raw, size=(16, 16), mode="bilinear", align_corners=False)[torch.from_numpy(test_idx)]
    test = load_dataset("digits", split="test")
    assert torch.equal(test.images, expected)
    assert torch.equal(test.labels, torch.tensor(load_digits().target)[torch.from_numpy(test_idx)])
    assert torch.equal(load_dataset("digits", split="test").images, test.images)  # deterministic


def test_digits_resolution_8_is_the_raw_data():
    d = load_dataset("digits", split="test", resolution=8)
    from sklearn.datasets import load_digits

    raw = torch.tensor(load_digits().images, dtype=torch.float32)[digits_split_indices("test")][:, None] / 16 * 2 - 1
    assert torch.allclose(d.images, raw, atol=1e-6)


def test_image_dataset_checks_its_fields():
    with pytest.raises(DataError, match="labels must lie"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 2]), 2, "x", ["a", "b"])
    with pytest.raises(DataError, match="labels must lie"):
        ImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), 0, "x", [])  # unconditional: all 0
    with pytest.raises(DataError, match=r"\(M, C, H, H\)"):
        ImageDataset(torch.zeros(2, 1, 4, 5), torch.tensor([0, 1]), 2, "x", ["a", "b"])
    loader = torch.utils.data.DataLoader(load_dataset("digits", split="test"), batch_size=8)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 16, 16) and y.shape == (8,) and y.dtype == torch.int64


def test_bad_split_and_unknown_name_raise_data_error():
    with pytest.raises(DataError, match="'train' or 'test'"):
        load_dataset("digits", split="val")
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    assert "digits" in str(err.value) and "photos" in str(err.value) and "folder" in str(err.value)
    assert isinstance(err.value, ValueError)


# ----------------------------------------------------------------------------- photos


@pytest.fixture(scope="module")
def photos_test():
    return load_dataset("photos", split="test")


def test_photos_shapes_range_and_determinism(photos_test):
    train = load_dataset("photos")
    assert train.images.shape == (8192, 3, 32, 32) and photos_test.images.shape == (1024, 3, 32, 32)
    assert train.num_classes == 0 and train.class_names == [] and int(train.labels.abs().sum()) == 0
    assert train.images.min() >= -1 and train.images.max() <= 1 and train.images.std() > 0.2
    assert torch.equal(load_dataset("photos", split="test").images, photos_test.images)
    other = load_dataset("photos", split="test", seed=1)
    assert not torch.equal(other.images, photos_test.images)
    small = load_dataset("photos", split="test", resolution=16)
    assert small.images.shape == (1024, 3, 16, 16)


def test_photos_labeled_balances_the_source_photos():
    d = load_dataset("photos-labeled", split="test")
    assert d.num_classes == len(d.class_names) >= 6 and "astronaut" in d.class_names
    counts = torch.bincount(d.labels, minlength=d.num_classes)
    assert counts.max() - counts.min() <= 1


def test_photos_train_and_test_come_from_disjoint_regions(photos_test):
    import skimage.data

    train_regions, test_regions = photo_regions("train", 32), photo_regions("test", 32)
    # The regions partition each photo at column int(0.85 W): no pixel is in both.
    astronaut = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 127.5 - 1
    cut = int(astronaut.shape[2] * (1 - PHOTOS_TEST_FRACTION))
    (name_a, left, _), (name_b, right, _) = train_regions[0], test_regions[0]
    assert name_a == name_b == "astronaut"
    assert torch.equal(left, astronaut[:, :, :cut]) and torch.equal(right, astronaut[:, :, cut:])
    # Every test crop lies inside its test strip; unresized, unflipped ones match its pixels exactly.
    sizes = [tuple(r.shape[1:]) for _, r, _ in test_regions]
    plan = photo_crop_plan(sizes, [m for _, _, m in test_regions], 1024, 32, seed=[0, 1])
    assert all(x0 + side <= sizes[r][1] and y0 + side <= sizes[r][0] for r, x0, y0, side, _ in plan.tolist())
    exact = [i for i, (_, _, _, side, flip) in enumerate(plan.tolist()) if side == 32 and not flip]
    assert len(exact) >= 3
    for i in exact:
        r, x0, y0, _, _ = plan[i].tolist()
        assert torch.equal(photos_test.images[i], test_regions[r][1][:, y0 : y0 + 32, x0 : x0 + 32])


# ----------------------------------------------------------------------------- folders


def _png(path: Path, size: tuple[int, int], color, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """cats/ (3 images + a corrupt one) and dogs/ (3 images), of different sizes and modes."""
    root = tmp_path / "pets"
    _png(root / "cats" / "a.png", (40, 30), (255, 0, 0))
    _png(root / "cats" / "b.png", (13, 50), 128, mode="L")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(root / "cats" / "c.jpg", quality=95)
    (root / "cats" / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    stripes = np.zeros((40, 20, 3), dtype=np.uint8)  # (H, W): red top, green middle, blue bottom
    stripes[:10, :, 0], stripes[10:30, :, 1], stripes[30:, :, 2] = 255, 255, 255
    (root / "dogs").mkdir()
    Image.fromarray(stripes).save(root / "dogs" / "a.png")
    _png(root / "dogs" / "b.png", (17, 17), (0, 255, 0, 128), mode="RGBA")
    _png(root / "dogs" / "c.png", (100, 33), (255, 255, 255))
    return root


def test_folder_loads_classes_and_names_the_broken_file(image_folder, capsys):
    with pytest.warns(UserWarning, match="broken.png"):
        train = load_dataset(str(image_folder), resolution=16)
    assert str(image_folder / "cats" / "broken.png") in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the test split holds no broken file: no warning
        test = load_dataset(str(image_folder), split="test", resolution=16)
    assert train.class_names == ["cats", "dogs"] and train.num_classes == 2
    # Sorted per class, the last file is held out (cats/c.jpg, dogs/c.png); broken.png is skipped.
    assert train.images.shape == (4, 3, 16, 16) and train.labels.tolist() == [0, 0, 1, 1]
    assert test.images.shape == (2, 3, 16, 16) and test.labels.tolist() == [0, 1]
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, 16, 16)
    assert torch.allclose(test.images[0], blue, atol=0.02)  # JPEG, nearly exact
    assert torch.equal(test.images[1], torch.ones(3, 16, 16))  # white PNG of 100x33
    red, gray = train.images[0], train.images[1]
    assert torch.equal(red, torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 16, 16))
    assert torch.allclose(gray, torch.full((3, 16, 16), 128 / 127.5 - 1), atol=1e-6)
    # 20x40 stripes -> 16x32, center crop keeps rows 8..24 = the green band (bicubic edges aside).
    stripes = train.images[2]
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 10, 16)
    assert torch.allclose(stripes[:, 3:13], green, atol=0.02)
    assert train.images.min() >= -1 and train.images.max() <= 1


def test_folder_without_subfolders_is_unconditional(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", (8 + i, 12), (i * 50, 0, 0))
    d = load_dataset(str(tmp_path), resolution=8)
    assert d.num_classes == 0 and d.class_names == [] and d.labels.tolist() == [0, 0]
    assert d.images.shape == (2, 3, 8, 8)


def test_folder_split_rule():
    files = [(Path(f"x/{i:03d}.png"), 0) for i in range(45)] + [(Path(f"y/{i}.png"), 1) for i in range(5)]
    files += [(Path("z/only.png"), 2)]
    test = split_image_files(files, "test")
    assert [p.name for p, _ in test] == ["019.png", "039.png", "4.png"]
    train = split_image_files(files, "train")
    assert len(train) + len(test) == len(files) and not set(train) & set(test)


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="no images in .*class subfolders"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match="no folder at .*built-in"):
        load_dataset(str(tmp_path / "missing"))
    (tmp_path / "a.png").write_bytes(b"not an image")
    (tmp_path / "b.png").write_bytes(b"not an image either")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="could be read"):
        load_dataset(str(tmp_path))


# ----------------------------------------------------------------------------- latents


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("vae")
    return path, make_vae(path)


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_prepare_latents_matches_the_vae_and_reloads(image_folder, tiny_vae, tmp_path):
    vae_path, vae = tiny_vae
    out = prepare_latents(str(image_folder), str(vae_path), str(tmp_path / "lat"), resolution=16, batch_size=3, shard_size=3)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "patchforcing-latents" and meta["version"] == 1
    assert (meta["channels"], meta["resolution"], meta["image_resolution"]) == (4, 8, 16)
    assert meta["scale_factor"] == pytest.approx(0.18215) and meta["num_images"] == {"train": 4, "test": 2}
    assert meta["class_names"] == ["cats", "dogs"] and meta["num_classes"] == 2
    assert len(meta["shards"]["train"]) == 2  # 4 latents, 3 per shard
    pixels = load_dataset(str(image_folder), resolution=16)
    with torch.no_grad():
        expected = vae.encode(pixels.images).latent_dist.mean * 0.18215
    lat = load_dataset(str(out))
    assert lat.images.shape == (4, 4, 8, 8) and lat.is_latent and (lat.channels, lat.resolution) == (4, 8)
    assert torch.allclose(lat.images, expected, atol=1e-5) and torch.equal(lat.labels, pixels.labels)
    assert lat.scale_factor == pytest.approx(0.18215) and lat.vae == str(vae_path.resolve())
    assert lat.class_names == ["cats", "dogs"] and len(load_dataset(str(out), split="test")) == 2
    with pytest.raises(DataError, match="latents"):
        load_dataset(str(out), resolution=32)


@pytest.mark.filterwarnings("ignore:skipped 1 unreadable")
def test_cli_prepare_latents_with_scale_factor(image_folder, tiny_vae, tmp_path, capsys):
    from patchforcing.cli import main

    vae_path, vae = tiny_vae
    out = tmp_path / "lat"
    argv = ["prepare-latents", "--data", str(image_folder), "--vae", str(vae_path), "--out", str(out), "--resolution", "16"]
    assert main(argv + ["--scale-factor", "0.5"]) == 0
    assert "wrote 4 train, 2 test latents" in capsys.readouterr().out
    pixels = load_dataset(str(image_folder), split="test", resolution=16)
    with torch.no_grad():
        expected = vae.encode(pixels.images).latent_dist.mean * 0.5
    assert torch.allclose(load_dataset(str(out), split="test").images, expected, atol=1e-5)
    # A missing VAE is one error line, exit code 1.
    assert main(["prepare-latents", "--data", "digits", "--vae", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "error: no VAE folder" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_prepare_latents_errors(tiny_vae, tmp_path, monkeypatch):
    vae_path, _ = tiny_vae
    with pytest.raises(DataError, match="no VAE folder"):
        prepare_latents("digits", str(tmp_path / "missing-vae"), str(tmp_path / "o"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="not found offline.*`hf download nobody-here/no-such-vae`"):
        prepare_latents("digits", "nobody-here/no-such-vae", str(tmp_path / "o"))
    with pytest.raises(DataError, match="divisible"):
        prepare_latents("digits", str(vae_path), str(tmp_path / "o"), resolution=15)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a latent folder"):
        prepare_latents("digits", str(vae_path), str(tmp_path / "busy"), resolution=16)


def test_grayscale_data_goes_through_an_rgb_vae(tiny_vae):
    _, vae = tiny_vae
    gray = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.allclose(encode_latents(vae, gray, 0.5), encode_latents(vae, gray.expand(-1, 3, -1, -1), 0.5))
    with pytest.raises(DataError, match="channels"):
        encode_latents(vae, torch.zeros(1, 2, 16, 16), 1.0)
