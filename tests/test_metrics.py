"""Evaluation metrics: Fréchet distance, precision/recall, the shipped digits classifier and the
Inception error path. CPU, a few seconds."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from scipy import linalg

from patchforcing.data import load_dataset
from patchforcing.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PatchForcingError,
    ShapeError,
)
from patchforcing.evaluation import (
    classification_accuracy,
    extract_features,
    feature_statistics,
    frechet_distance,
    inception_features,
    load_digits_classifier,
    load_statistics,
    precision_recall,
    save_statistics,
)
from patchforcing.evaluation import frechet as frechet_module
from patchforcing.evaluation.classifier import default_weights_path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small ops run faster on one thread, and do not stall when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- Fréchet distance
def test_frechet_isotropic_closed_form():
    rng = np.random.default_rng(0)
    n, a, b = 16, 0.7, 2.5
    mu1, mu2 = rng.normal(size=n), rng.normal(size=n)
    expected = np.sum((mu1 - mu2) ** 2) + n * (a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, a * np.eye(n), mu2, b * np.eye(n))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    n = 12
    mu1, mu2 = rng.normal(size=n), rng.normal(size=n)
    s1, s2 = rng.uniform(0.1, 3.0, size=n), rng.uniform(0.1, 3.0, size=n)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_direct_scipy_on_random_features():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 10)) @ rng.normal(size=(10, 10))
    y = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10)) + 0.5
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    # Independent route: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD matrix.
    r1 = linalg.sqrtm(s1).real
    tr_covmean = np.sum(np.sqrt(np.clip(linalg.eigvalsh(r1 @ s2 @ r1), 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    got = frechet_distance(*feature_statistics(x), *feature_statistics(torch.tensor(y)))
    assert got == pytest.approx(expected, rel=1e-8)
    assert got > 1.0


def test_frechet_identical_statistics_is_zero_and_symmetric():
    rng = np.random.default_rng(3)
    mu, sigma = feature_statistics(rng.normal(size=(200, 32)))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    mu2, sigma2 = feature_statistics(rng.normal(size=(200, 32)) * 1.5)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(
        frechet_distance(mu2, sigma2, mu, sigma), rel=1e-6)


def test_frechet_offset_fallback_when_sqrtm_is_not_finite(monkeypatch):
    calls = []
    real_sqrtm = frechet_module.linalg.sqrtm

    def flaky_sqrtm(a):
        calls.append(a.copy())
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(frechet_module.linalg, "sqrtm", flaky_sqrtm)
    n, a, b, eps = 4, 1.0, 4.0, 1e-6
    got = frechet_distance(np.zeros(n), a * np.eye(n), np.zeros(n), b * np.eye(n), eps=eps)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (a + eps) * (b + eps) * np.eye(n))
    assert got == pytest.approx(n * (a + b - 2 * np.sqrt((a + eps) * (b + eps))), rel=1e-9)


def test_frechet_shape_errors():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(ShapeError, match=r"sigma \(D, D\)"):
        frechet_distance(mu, np.eye(3), mu, sigma)
    with pytest.raises(ShapeError, match=r"\(N, D\)"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(DataError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_feature_statistics_unbiased_float64():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    assert mu.shape == (6,) and sigma.shape == (6, 6)
    xd = x.double().numpy()
    np.testing.assert_allclose(mu, xd.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, (xd - xd.mean(0)).T @ (xd - xd.mean(0)) / 49, rtol=1e-10)


# ----------------------------------------------------------------------------- statistics files
def test_statistics_npz_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = feature_statistics(rng.normal(size=(30, 5)))
    path = tmp_path / "sub" / "ref_stats"  # no suffix: written exactly as named
    save_statistics(path, mu, sigma)
    assert path.is_file() and not (tmp_path / "sub" / "ref_stats.npz").exists()
    assert [p.name for p in path.parent.iterdir()] == ["ref_stats"]  # no temp file left
    mu2, sigma2 = load_statistics(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)


def test_statistics_load_adm_reference_batch(tmp_path):
    path = tmp_path / "VIRTUAL_ref.npz"
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    np.savez(path, arr_0=images, mu=np.ones(3), sigma=np.eye(3), mu_s=np.ones(2),
             sigma_s=np.eye(2))
    mu, sigma = load_statistics(path)
    np.testing.assert_array_equal(mu, np.ones(3))
    np.testing.assert_array_equal(sigma, np.eye(3))


def test_statistics_load_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist.*save_statistics"):
        load_statistics(tmp_path / "missing.npz")

    images_only = tmp_path / "images.npz"
    np.savez(images_only, arr_0=np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="compute features first"):
        load_statistics(images_only)

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mean=np.zeros(3))
    with pytest.raises(DataError, match=r"\['mean'\].*'mu' and 'sigma'"):
        load_statistics(wrong)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive at all")
    with pytest.raises(PatchForcingError, match="not a readable .npz"):
        load_statistics(garbage)

    bad_shapes = tmp_path / "bad.npz"
    np.savez(bad_shapes, mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ShapeError):
        load_statistics(bad_shapes)


# ----------------------------------------------------------------------------- precision / recall
def _brute_force_precision_recall(real, fake, k):
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # (M, N)
    r_real = np.sort(d_rr, axis=1)[:, k]
    r_fake = np.sort(d_ff, axis=1)[:, k]
    precision = np.mean((d_fr <= r_real[None, :]).any(axis=1))
    recall = np.mean((d_fr.T <= r_fake[None, :]).any(axis=1))
    return precision, recall


def test_precision_recall_identical_sets():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone()) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_far_away_fake_set():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(150, 8, generator=gen)
    fake = torch.randn(120, 8, generator=gen) + 50.0
    result = precision_recall(real, fake)
    assert result["precision"] == 0.0
    assert result["recall"] == 0.0


def test_precision_recall_fake_covers_one_of_two_clusters():
    rng = np.random.default_rng(2)
    cluster_a = rng.normal(size=(200, 4))
    cluster_b = rng.normal(size=(200, 4)) + 40.0
    real = np.concatenate([cluster_a, cluster_b])
    fake = rng.normal(size=(200, 4))  # same distribution as cluster A only
    result = precision_recall(real, fake, k=3, batch_size=64)
    assert result["precision"] > 0.9  # only cluster-A tail points fall outside
    assert 0.4 < result["recall"] <= 0.5  # cluster B (half of the real set) is never covered


def test_precision_recall_matches_brute_force_and_is_batch_invariant():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(120, 5)).astype(np.float32)
    fake = (rng.normal(size=(90, 5)) * 0.8 + 0.8).astype(np.float32)
    for k in (1, 3, 5):
        p_ref, r_ref = _brute_force_precision_recall(real.astype(np.float64),
                                                     fake.astype(np.float64), k)
        for batch_size in (7, 1024):
            res = precision_recall(real, fake, k=k, batch_size=batch_size)
            assert res["precision"] == pytest.approx(p_ref, abs=1 / 90 + 1e-12)
            assert res["recall"] == pytest.approx(r_ref, abs=1 / 120 + 1e-12)
    assert 0.0 < p_ref < 1.0 and 0.0 < r_ref < 1.0  # a non-trivial case


def test_precision_recall_exact_far_from_the_origin():
    """Features offset by 100 (float32 input): exactly the float64 brute force, and the same as unshifted."""
    rng = np.random.default_rng(4)
    real = rng.normal(size=(400, 64)).astype(np.float32)
    fake = (rng.normal(size=(300, 64)) * 0.9 + 0.1).astype(np.float32)
    far_real, far_fake = real + np.float32(100), fake + np.float32(100)
    p_ref, r_ref = _brute_force_precision_recall(far_real.astype(np.float64), far_fake.astype(np.float64), 3)
    for batch_size in (64, 512):
        res = precision_recall(far_real, far_fake, k=3, batch_size=batch_size)
        assert (res["precision"], res["recall"]) == (p_ref, r_ref)
    assert precision_recall(real, fake, k=3) == {"precision": p_ref, "recall": r_ref}
    assert 0.0 < p_ref < 1.0 and 0.0 < r_ref < 1.0


def test_precision_recall_errors():
    with pytest.raises(ShapeError, match="same feature extractor"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ShapeError, match="more than 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(ConfigError):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), k=0)


# ----------------------------------------------------------------------------- digits classifier
@pytest.fixture(scope="module")
def classifier():
    return load_digits_classifier()


@pytest.fixture(scope="module")
def digits_test():
    test = load_dataset("digits", split="test")  # the 297 held-out digits, never trained on
    return test.images, test.labels


def test_shipped_classifier_file_and_metadata(classifier):
    path = default_weights_path()
    assert path.is_file() and path.stat().st_size < 1_000_000
    assert not classifier.training
    assert all(not p.requires_grad for p in classifier.parameters())
    assert float(classifier.metadata["heldout_accuracy"]) > 0.97
    assert "train_digits_classifier.py" in classifier.metadata["command"]


def test_shipped_classifier_heldout_accuracy(classifier, digits_test):
    x, y = digits_test
    accuracy = classification_accuracy(classifier, x, y)
    assert accuracy > 0.97
    assert accuracy == pytest.approx(float(classifier.metadata["heldout_accuracy"]), abs=1e-4)
    # Requesting one class for every image scores the share of that class, not the accuracy.
    share_of_zeros = float((y == 0).float().mean())
    assert classification_accuracy(classifier, x, 0) == pytest.approx(share_of_zeros, abs=0.02)
    # Noise is not a digit the classifier recognises as the requested labels.
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert classification_accuracy(classifier, noise, y) < 0.5


def test_classifier_features_shape_and_batching(classifier, digits_test):
    x, _ = digits_test
    feats = classifier.features(x[:5])
    assert feats.shape == (5, classifier.config["feature_dim"])
    a = extract_features(classifier.features, x, batch_size=1000)
    b = extract_features(classifier.features, x, batch_size=13)
    assert a.shape == (297, classifier.config["feature_dim"]) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ShapeError, match=r"\(B, 1, 16, 16\)"):
        classifier(torch.zeros(2, 1, 8, 8))


def test_digits_fid_separates_real_from_corrupted(classifier, digits_test):
    x_test, _ = digits_test
    x_train = load_dataset("digits", split="train").images
    stats_train = feature_statistics(extract_features(classifier.features, x_train))
    stats_test = feature_statistics(extract_features(classifier.features, x_test))
    blurred = torch.nn.functional.avg_pool2d(x_test, 3, stride=1, padding=1,
                                             count_include_pad=False)
    stats_blur = feature_statistics(extract_features(classifier.features, blurred))
    fid_real = frechet_distance(*stats_test, *stats_train)
    fid_blur = frechet_distance(*stats_blur, *stats_train)
    assert 0.0 < fid_real < 0.5 * fid_blur


def test_missing_classifier_weights_names_the_script(tmp_path):
    with pytest.raises(CheckpointError, match="scripts/train_digits_classifier.py"):
        load_digits_classifier(path=tmp_path / "nope.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="scripts/train_digits_classifier.py"):
        load_digits_classifier(path=broken)


# ----------------------------------------------------------------------------- Inception
@pytest.fixture
def no_inception_backends(monkeypatch):
    for name in ("pytorch_fid", "pytorch_fid.inception", "torch_fidelity",
                 "torch_fidelity.feature_extractor_inceptionv3"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError


def test_inception_without_backend_says_what_to_install(no_inception_backends):
    with pytest.raises(ConfigError, match="pip install pytorch-fid") as info:
        inception_features(torch.zeros(2, 3, 16, 16))
    assert "offline" in str(info.value)
    with pytest.raises(ShapeError):
        inception_features(torch.zeros(2, 2, 16, 16))


def _fake_pytorch_fid(monkeypatch):
    """A stand-in pytorch_fid.inception whose InceptionV3 'downloads' in its constructor."""
    module = types.ModuleType("pytorch_fid.inception")
    seen = {}

    def load_state_dict_from_url(url, **kwargs):
        raise AssertionError(f"tried to download {url}")

    class InceptionV3(torch.nn.Module):
        BLOCK_INDEX_BY_DIM = {2048: 3}

        def __init__(self, output_blocks, resize_input=True, normalize_input=True):
            super().__init__()
            seen["state"] = module.load_state_dict_from_url("https://example.invalid/w.pth")
            seen["blocks"] = output_blocks

        def forward(self, x):
            seen["input_range"] = (float(x.min()), float(x.max()), x.shape[1])
            return [x.mean(dim=(1, 2, 3))[:, None, None, None].expand(-1, 2048, 1, 1)]

    module.InceptionV3 = InceptionV3
    module.load_state_dict_from_url = load_state_dict_from_url
    monkeypatch.setitem(sys.modules, "pytorch_fid", types.ModuleType("pytorch_fid"))
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", module)
    return seen


def test_inception_needs_offline_weights(monkeypatch, tmp_path):
    _fake_pytorch_fid(monkeypatch)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # an empty hub cache
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        inception_features(torch.zeros(2, 3, 16, 16))
    with pytest.raises(CheckpointError, match="not found"):
        inception_features(torch.zeros(2, 3, 16, 16), weights_path=tmp_path / "missing.pth")


def test_inception_loads_local_weights_without_download(monkeypatch, tmp_path):
    seen = _fake_pytorch_fid(monkeypatch)
    weights = tmp_path / "pt_inception.pth"
    torch.save({"w": torch.arange(3.0)}, weights)
    images = torch.linspace(-1, 1, 4 * 16 * 16).reshape(4, 1, 16, 16)
    feats = inception_features(images, weights_path=weights, batch_size=3)
    assert feats.shape == (4, 2048) and feats.dtype == np.float32
    torch.testing.assert_close(seen["state"]["w"], torch.arange(3.0))
    assert seen["blocks"] == [3]
    lo, hi, channels = seen["input_range"]
    assert channels == 3 and 0.0 <= lo and hi <= 1.0  # [-1, 1] grey mapped to [0, 1] RGB
    expected = ((images + 1) / 2).mean(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(feats[:, 0], expected, rtol=1e-6)
