"""Train the photo classifier that ships with the package (the second photo feature space).

Learns which of the bundled photographs a 32x32 crop comes from, on the TRAIN crops only (the left
85 % of every photograph, the crops the generators train on), scores the held-out crops (the
right 15 %), and writes ``src/patchforcing/assets/photos_classifier.safetensors`` with the held-out
accuracy and the architecture in its metadata. Refuses to write below 80 % held-out accuracy.

    python scripts/train_photos_classifier.py            # a few minutes on one CPU core
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
from classifier_training import command_line, fit, parser, write  # noqa: E402

from patchforcing.data import load_dataset  # noqa: E402
from patchforcing.photos_classifier import photos_classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "patchforcing" / "assets" / "photos_classifier.safetensors"
MIN_HELDOUT_ACCURACY = 0.80


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and a small brightness change, so the network cannot key on either."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    return (x * gain).clamp(-1, 1)


def train(args):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_set = load_dataset("photos-labeled", split="train")
    test_set = load_dataset("photos-labeled", split="test")
    model = photos_classifier(train_set.num_classes, width=args.width, feature_dim=args.feature_dim)
    train_acc, test_acc = fit(model, (train_set.images, train_set.labels), (test_set.images, test_set.labels), args,
                              augment, gen)  # (8192, 3, 32, 32) training crops, (1024, 3, 32, 32) held out
    return model, train_acc, test_acc, train_set.class_names


def main() -> None:
    args = parser(__doc__, epochs=8, batch_size=128, unit="crops", out=DEFAULT_OUT).parse_args()
    torch.set_num_threads(args.threads)
    command = command_line("train_photos_classifier.py")
    t0 = time.time()
    model, train_acc, test_acc, names = train(args)
    print(f"train accuracy {train_acc:.4f}, held-out accuracy {test_acc:.4f} ({time.time() - t0:.0f} s) from: {command}")
    write(model, args, train_acc=train_acc, test_acc=test_acc, minimum=MIN_HELDOUT_ACCURACY, command=command, metadata={
        "classes": json.dumps(list(names)), "input": "(B, 3, 32, 32) in [-1, 1]",
        "data": 'trained on load_dataset("photos-labeled", split="train"), scored on split="test"'})


if __name__ == "__main__":
    main()
