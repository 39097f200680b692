"""Data: built-in data sets (digits, photos), folders of images, and VAE latent folders.

    from patchforcing.data import load_dataset
    train = load_dataset("digits")                    # (1500, 1, 16, 16) in [-1, 1], 10 classes
    test = load_dataset("digits", split="test")       # the fixed 297 held-out digits
    crops = load_dataset("photos", resolution=32)     # 8,192 RGB crops, unconditional
    mine = load_dataset("path/to/folder")             # class subfolders, 32x32 center crops
    latents = load_dataset("latents/photos-256")      # written by prepare_latents
"""

from patchforcing.autoencoder import encode_latents, load_vae
from patchforcing.data.base import BUILTIN_NAMES, ImageDataset
from patchforcing.data.builtin import DIGITS_NUM_TEST, PHOTO_NAMES, digits_split_indices
from patchforcing.data.datasets import load_dataset
from patchforcing.data.folders import split_image_files
from patchforcing.data.latents import is_latent_folder, read_meta
from patchforcing.data.prepare import prepare_latents

__all__ = [
    "BUILTIN_NAMES",
    "DIGITS_NUM_TEST",
    "PHOTO_NAMES",
    "ImageDataset",
    "digits_split_indices",
    "encode_latents",
    "is_latent_folder",
    "load_dataset",
    "load_vae",
    "prepare_latents",
    "read_meta",
    "split_image_files",
]
