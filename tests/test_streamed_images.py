"""Image folders decoded per batch give exactly the batches of the folder loaded into memory."""

from __future__ import annotations

import pytest
import torch

from conftest import image_folder_of_noise
from patchforcing.data.datasets import load_folder_dataset
from patchforcing.data.streamed import StreamedImages
from patchforcing.errors import DataError
from patchforcing.timesteps import timestep_distribution
from patchforcing.training.batches import StepBatches, iterate


@pytest.fixture
def folder(tmp_path):
    """2 classes x 6 images of several sizes, and one file that is not an image."""
    return image_folder_of_noise(tmp_path / "img", per_class=6, size=None, broken="a")


@pytest.mark.filterwarnings("ignore:skipped")
def test_streamed_batches_equal_eager_batches(folder, one_thread):
    eager = load_folder_dataset(folder, resolution=8, stream=False)
    streamed = load_folder_dataset(folder, resolution=8, stream=True)
    assert isinstance(streamed.images, StreamedImages) and streamed.images.shape == eager.images.shape
    assert torch.equal(streamed.labels, eager.labels) and streamed.class_names == eager.class_names
    assert torch.equal(streamed.images[:], eager.images)  # the unreadable file skipped in both
    kw = dict(seed=2, batch_size=4, rank=0, world_size=1, timesteps=timestep_distribution("ltg"), num_patches=16,
              null_label=2, drop_prob=0.1, global_time=False)
    a = [b.x1 for b in iterate(StepBatches(streamed.images, streamed.labels, **kw), 1, 5, num_workers=2, pin_memory=False)]
    b = [StepBatches(eager.images, eager.labels, **kw)[step].x1 for step in range(1, 6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.filterwarnings("ignore:skipped")
def test_a_file_that_fails_to_decode_later_is_named(folder):
    streamed = load_folder_dataset(folder, resolution=8, stream=True)
    victim = streamed.images.paths[3]
    victim.write_bytes(victim.read_bytes()[:60])  # the header still parses, the pixels are gone
    with pytest.raises(DataError, match=victim.name):
        streamed.images[torch.tensor([3])]
