"""The shipped photo classifier: the second feature space of the photo metrics."""

from __future__ import annotations

import pytest
import torch

from patchforcing.data import load_dataset
from patchforcing.errors import CheckpointError, ShapeError
from patchforcing.evaluation.classifier import classification_accuracy
from patchforcing.evaluation.photos import photos_metrics
from patchforcing.photos_classifier import load_photos_classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_shipped_classifier_tells_held_out_crops_apart_as_its_metadata_says():
    clf = load_photos_classifier()
    test = load_dataset("photos-labeled", split="test")
    accuracy = classification_accuracy(clf, test.images, test.labels)
    assert accuracy == pytest.approx(float(clf.metadata["heldout_accuracy"]), abs=1e-6)
    assert accuracy > 0.8  # eight photographs: chance is 0.125
    assert "scripts/train_photos_classifier.py" in clf.metadata["command"]


def test_classifier_features_separate_real_crops_from_noise():
    test = load_dataset("photos", split="test").images[:256]
    real = photos_metrics(test, features="classifier")["fid"]
    noise = photos_metrics(torch.rand_like(test) * 2 - 1, features="classifier")["fid"]
    assert real < noise / 5  # held-out crops sit far closer to the training crops than noise does


def test_wrong_input_and_a_missing_file_say_what_to_do(tmp_path):
    with pytest.raises(ShapeError, match=r"\(B, 3, 32, 32\)"):
        load_photos_classifier().features(torch.zeros(2, 1, 16, 16))
    with pytest.raises(CheckpointError, match="scripts/train_photos_classifier.py"):
        load_photos_classifier(path=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown photo feature space"):
        photos_metrics(torch.zeros(4, 3, 32, 32), features="inception")
