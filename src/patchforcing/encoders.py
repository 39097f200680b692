"""Frozen image encoders that give REPA its targets (docs/method.md §7.3; Yu et al. 2024).

An encoder is any callable ``images (B, C, H, W) in [-1, 1] -> features (B, N', z)``: one
feature vector per token of a square grid, row-major, no class token, computed without
gradients. ``training_loss(..., repa_target=...)`` resizes the grid to the network's.

Named encoders (``load_encoder(name)``):

* ``digits-cnn``: ships with the package, no download. The hidden convolution features of the
  bundled digits classifier (``digits_classifier.py``) after its fourth convolution, an 8 x 8
  grid of 64-dimensional vectors for the 16 x 16 digits: the patch grid of ``PF-XS/2``.
* ``dinov2-s``, ``dinov2-b``, ``dinov2-l``, ``dinov2-g``: DINOv2 through ``transformers``
  (``Dinov2Model``), read from the local Hugging Face cache only (``facebook/dinov2-base`` ...).
  ``dinov2:PATH`` reads a local folder (or another cached id). REPA's preprocessing, for images
  of side R (``scale = max(1, R // 256)``): at load, DINOv2's position table (37 x 37 patches plus
  the class token) is resampled once, bicubic with antialiasing, to ``16 * scale`` per side; each
  call maps pixels to [0, 1], applies the ImageNet normalisation, resizes bicubic to
  ``224 * scale`` (224 at 256 px, 448 at 512 px) and returns the final layer-normed patch tokens
  without the class token (16 x 16 tokens of width 768 for ViT-B/14 at 256 px). The model then
  never interpolates its table again (transformers does so, without antialiasing, only when the
  token grid differs from the table's).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchforcing.digits_classifier import load_digits_classifier
from patchforcing.errors import CheckpointError, ConfigError, ShapeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_RESOLUTION = 224  # REPA feeds 224 * (R // 256) pixels for R-px images ...
DINOV2_GRID = 16  # ... and resamples the position table to 16 * (R // 256) patches per side
DINOV2_IDS = {
    "dinov2-s": "facebook/dinov2-small",
    "dinov2-b": "facebook/dinov2-base",
    "dinov2-l": "facebook/dinov2-large",
    "dinov2-g": "facebook/dinov2-giant",
}
ENCODER_NAMES = ("digits-cnn", *DINOV2_IDS, "dinov2:PATH")


class FrozenEncoder(nn.Module):
    """Base class: eval mode, no gradients; ``name`` and ``feature_dim`` (z) describe the output."""

    name: str = ""
    feature_dim: int = 0

    def freeze(self) -> FrozenEncoder:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> FrozenEncoder:  # a frozen encoder stays in eval mode
        return super().train(False)

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) in [-1, 1] -> (B, N', z) float32 features."""
        weight = next(self.parameters())
        return self.encode(images.to(device=weight.device, dtype=weight.dtype)).float()


class DigitsEncoder(FrozenEncoder):
    """The shipped digits classifier's features after its fourth convolution: (B, 64, 64) on 8 x 8."""

    name = "digits-cnn"

    def __init__(self, device: str | torch.device = "cpu", path: str | Path | None = None):
        super().__init__()
        classifier = load_digits_classifier(device, path)
        self.body = classifier.body[:9]  # conv-conv-pool-conv-conv, with their GELUs: (B, 2w, 8, 8)
        self.feature_dim = self.body[7].out_channels
        self._check = classifier._check
        self.freeze()

    def encode(self, images: Tensor) -> Tensor:
        self._check(images)
        maps = self.body(images)  # (B, z, 8, 8)
        return maps.flatten(2).transpose(1, 2)  # (B, 64, z) row-major


class Dinov2Encoder(FrozenEncoder):
    """DINOv2 patch tokens with the REPA paper's preprocessing (see the module docstring).

    Args:
        source: a Hugging Face id in the local cache, or a folder written by ``save_pretrained``.
        device: where the model runs.
        image_size: side R of the images it will encode; DINOv2 sees ``224 * max(1, R // 256)``
            pixels and a position table resampled to ``16 * max(1, R // 256)`` patches per side.
    """

    def __init__(self, source: str, device: str | torch.device = "cpu", image_size: int = 256):
        super().__init__()
        self.model = _load_dinov2(source)
        scale = max(1, int(image_size) // 256)
        self.resolution = DINOV2_RESOLUTION * scale
        embeddings = self.model.embeddings
        embeddings.position_embeddings = nn.Parameter(
            resample_position_table(embeddings.position_embeddings.data, DINOV2_GRID * scale), requires_grad=False)
        self.model.to(device)
        self.name = f"dinov2:{source}"
        self.feature_dim = int(self.model.config.hidden_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(device), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(device), persistent=False)
        self.freeze()

    def preprocess(self, images: Tensor) -> Tensor:
        """[-1, 1] images (B, 1 or 3, H, W) -> normalised (B, 3, S, S), S = ``self.resolution``, as REPA feeds DINOv2."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ShapeError(f"DINOv2 takes (B, 1 or 3, H, W) images in [-1, 1], got {tuple(images.shape)}")
        x = (images + 1) / 2  # [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)

    def encode(self, images: Tensor) -> Tensor:
        out = self.model(pixel_values=self.preprocess(images))
        return out.last_hidden_state[:, 1:]  # (B, N', z): layer-normed patch tokens, class token dropped


def resample_position_table(table: Tensor, grid: int) -> Tensor:
    """A ViT position table (1, 1 + M*M, D) (class token first) resampled to (1, 1 + grid*grid, D).

    The M x M patch part is resized bicubic with antialiasing (``align_corners=False``) in float32,
    as REPA resamples DINOv2's table once at load; the class token's row is kept. An M equal to
    ``grid`` returns the table unchanged.
    """
    cls, patch = table[:, :1], table[:, 1:]
    m, d = round(patch.shape[1] ** 0.5), patch.shape[2]
    if m * m != patch.shape[1]:
        raise ShapeError(f"the position table has {patch.shape[1]} patch rows, not a square grid")
    if m == grid:
        return table
    grid_table = patch.reshape(1, m, m, d).permute(0, 3, 1, 2).float()  # (1, D, M, M)
    grid_table = F.interpolate(grid_table, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([cls, grid_table.permute(0, 2, 3, 1).reshape(1, grid * grid, d).to(table.dtype)], dim=1)


def _load_dinov2(source: str) -> nn.Module:
    try:
        from transformers import Dinov2Model
    except ImportError:
        raise ConfigError(
            "DINOv2 encoders need the `transformers` package: pip install 'patchforcing[hf]' "
            "(or use --repa-encoder digits-cnn, which ships with the package)"
        ) from None
    local = Path(source).expanduser()
    try:
        if local.is_dir():
            return Dinov2Model.from_pretrained(str(local))
        return Dinov2Model.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"DINOv2 model {source!r} is neither a local folder nor in the local Hugging Face cache, and nothing is "
            f"downloaded at run time ({type(err).__name__}). Fetch it once where there is internet, e.g. "
            f"`hf download {source if '/' in source else 'facebook/dinov2-base'}`, and copy the cache "
            "(~/.cache/huggingface) here, or save it to a folder and pass --repa-encoder dinov2:FOLDER"
        ) from None


def load_encoder(name: str, device: str | torch.device = "cpu", image_size: int = 256) -> Callable[[Tensor], Tensor]:
    """A frozen REPA target encoder by name: ``digits-cnn``, ``dinov2-b`` (-s, -l, -g) or ``dinov2:PATH``.

    ``image_size``: side of the images it will encode (DINOv2 sizes its input and position table
    from it, see :class:`Dinov2Encoder`; the digits encoder takes 16 px only).

    Returns:
        A callable ``images (B, C, H, W) in [-1, 1] -> (B, N', z)`` with ``feature_dim`` (z) and ``name``.

    Raises:
        ConfigError: an unknown name, or DINOv2 without ``transformers`` installed.
        CheckpointError: a DINOv2 model that is neither a local folder nor cached.
    """
    if name == "digits-cnn":
        return DigitsEncoder(device)
    if name in DINOV2_IDS:
        encoder = Dinov2Encoder(DINOV2_IDS[name], device, image_size)
        encoder.name = name
        return encoder
    if name.startswith("dinov2:") and len(name) > len("dinov2:"):
        return Dinov2Encoder(name[len("dinov2:"):], device, image_size)
    raise ConfigError(f"unknown REPA encoder {name!r}; choose one of: {', '.join(ENCODER_NAMES)}")


@torch.no_grad()
def encode_in_batches(encoder: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 256) -> Tensor:
    """Encode (M, C, H, W) images in chunks; returns (M, N', z) float32 on the CPU."""
    parts = [encoder(images[i:i + batch_size]).cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)
