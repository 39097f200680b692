"""The bottom of the data package: :class:`ImageDataset`, the split names and the built-in names.

Every data set is an :class:`ImageDataset` of float32 images in ``[-1, 1]`` with shape
(M, C, H, W), H == W, and int64 labels (M,). ``num_classes == 0`` means unconditional
(all labels 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import Dataset

from patchforcing.errors import DataError

SPLITS = ("train", "test")
BUILTIN_NAMES = ("digits", "digits-captions", "photos", "photos-labeled")


@dataclass(eq=False)
class ImageDataset(Dataset):
    """Images (or latents) and labels held in memory.

    Attributes:
        images: (M, C, H, W) float32; pixels in [-1, 1], or latents already multiplied by the
            VAE scale factor (after subtracting ``shift_factor``).
        labels: (M,) int64 in ``[0, num_classes)``; all 0 when unconditional.
        num_classes: number of classes, 0 for an unconditional data set.
        name: the data set name or path it was loaded from.
        class_names: one name per class (empty when unconditional).
        vae: for latents, the VAE folder or hub id that encoded them; None for pixels.
        scale_factor: for latents, the factor the VAE posterior mean was multiplied by.
        shift_factor: for latents, the shift subtracted before scaling (0 for SD-VAE).
        image_resolution: for latents, the pixel size of the encoded images.
        repa_encoder: for latents, the REPA encoder whose features are stored beside them.
        repa_features: for latents, (M, N', z) those features of the encoded images, row by row.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str
    class_names: list[str]
    vae: str | None = None
    scale_factor: float | None = None
    shift_factor: float | None = None
    image_resolution: int | None = None
    repa_encoder: str | None = None
    repa_features: Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[2] != self.images.shape[3]:
            raise DataError(f"{self.name}: images must be (M, C, H, H), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.name}: {self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.class_names) != self.num_classes:
            raise DataError(f"{self.name}: {self.num_classes} classes but {len(self.class_names)} class names")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < max(self.num_classes, 1):
            raise DataError(f"{self.name}: labels must lie in [0, {max(self.num_classes, 1)}) for {self.num_classes} classes")
        self.images = self.images.float()
        self.labels = self.labels.long()

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[2])

    @property
    def is_latent(self) -> bool:
        """True when ``images`` are VAE latents that need decoding to be viewed."""
        return self.vae is not None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(image (C, H, W), label ())``."""
        return self.images[index], self.labels[index]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test' (the held-out split)")
    return split
