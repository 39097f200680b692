"""Train the digits classifier that ships with the package (FID / precision-recall features).

Trains on the digits TRAIN split only (1500 images), scores the held-out split (297 images),
and writes ``src/patchforcing/assets/digits_classifier.safetensors`` (about 0.5 MB) with the
held-out accuracy and the architecture in its metadata. Refuses to write below 97% held-out.

    python scripts/train_digits_classifier.py            # about one minute on one CPU core
    python scripts/train_digits_classifier.py --epochs 60 --seed 1 --out /tmp/clf.safetensors
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from classifier_training import command_line, fit, parser, write  # noqa: E402

from patchforcing.data import load_dataset  # noqa: E402
from patchforcing.evaluation.classifier import DigitsClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "patchforcing" / "assets" / "digits_classifier.safetensors"
MIN_HELDOUT_ACCURACY = 0.97


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: float = 1.5,
            max_degrees: float = 10.0, max_scale: float = 0.1) -> torch.Tensor:
    """Random small shift, rotation and zoom; the -1 background stays -1.

    Args:
        x: (B, 1, H, W) images in [-1, 1].
        generator: random generator.
        max_shift: largest shift in pixels.
        max_degrees: largest rotation in degrees.
        max_scale: largest relative zoom.

    Returns:
        (B, 1, H, W) augmented images.
    """
    b, _, h, w = x.shape
    r = torch.rand(b, 4, generator=generator) * 2 - 1  # (B, 4) in [-1, 1]
    angle = r[:, 0] * max_degrees * torch.pi / 180
    scale = 1 + r[:, 1] * max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin, r[:, 2] * max_shift * 2 / w], dim=1),
        torch.stack([sin, cos, r[:, 3] * max_shift * 2 / h], dim=1),
    ], dim=1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0, so sample x + 1 to make the padding the background value -1.
    return F.grid_sample(x + 1, grid, mode="bilinear", align_corners=False) - 1


def train(args) -> tuple[DigitsClassifier, float, float]:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_set, test_set = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    model = DigitsClassifier(width=args.width, feature_dim=args.feature_dim)
    train_acc, test_acc = fit(model, (train_set.images, train_set.labels), (test_set.images, test_set.labels), args,
                              augment, gen, report_every=10)  # (1500, 1, 16, 16) training images, (297, ...) held out
    return model, train_acc, test_acc


def main() -> None:
    args = parser(__doc__, epochs=40, batch_size=64, unit="images", out=DEFAULT_OUT).parse_args()
    torch.set_num_threads(args.threads)
    command = command_line("train_digits_classifier.py")
    t0 = time.time()
    model, train_acc, test_acc = train(args)
    print(f"train accuracy {train_acc:.4f}, held-out accuracy {test_acc:.4f} ({time.time() - t0:.0f} s) from: {command}")
    write(model, args, train_acc=train_acc, test_acc=test_acc, minimum=MIN_HELDOUT_ACCURACY, command=command, metadata={
        "input": "(B, 1, 16, 16) in [-1, 1]",
        "data": 'trained on load_dataset("digits", split="train"), scored on split="test"'})


if __name__ == "__main__":
    main()
