"""Train the digits classifier that ships with the package (FID / precision-recall features).

Trains on the digits TRAIN split only (1500 images), scores the held-out split (297 images),
and writes ``src/patchforcing/assets/digits_classifier.safetensors`` (about 0.5 MB) with the
held-out accuracy and the architecture in its metadata. Refuses to write below 97% held-out.

    python scripts/train_digits_classifier.py            # about one minute on one CPU core
    python scripts/train_digits_classifier.py --epochs 60 --seed 1 --out /tmp/clf.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from patchforcing.data import load_dataset
from patchforcing.evaluation.classifier import DigitsClassifier, classification_accuracy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "patchforcing" / "assets" / "digits_classifier.safetensors"
MIN_HELDOUT_ACCURACY = 0.97


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=40, help="passes over the 1500 training images")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv stage")
    p.add_argument("--feature-dim", type=int, default=64, help="size of the feature layer")
    p.add_argument("--seed", type=int, default=0, help="seed for init, batches and augmentation")
    p.add_argument("--threads", type=int, default=1, help="CPU threads; one is fastest here")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the weights")
    return p.parse_args()


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


def train(args: argparse.Namespace) -> tuple[DigitsClassifier, float, float]:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_set, test_set = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    x_train, y_train = train_set.images, train_set.labels  # (1500, 1, 16, 16), (1500,)
    x_test, y_test = test_set.images, test_set.labels  # (297, 1, 16, 16), (297,)

    model = DigitsClassifier(width=args.width, feature_dim=args.feature_dim)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for start in range(0, len(x_train), args.batch_size):
            idx = perm[start:start + args.batch_size]
            loss = F.cross_entropy(model(augment(x_train[idx], gen)), y_train[idx],
                                   label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            model.eval()
            print(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}  held-out accuracy "
                  f"{classification_accuracy(model, x_test, y_test):.4f}", flush=True)
    model.eval()
    return (model, classification_accuracy(model, x_train, y_train),
            classification_accuracy(model, x_test, y_test))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/train_digits_classifier.py", *sys.argv[1:]])
    t0 = time.time()
    model, train_acc, test_acc = train(args)
    print(f"train accuracy {train_acc:.4f}, held-out accuracy {test_acc:.4f} "
          f"({time.time() - t0:.0f} s) from: {command}")
    if test_acc < MIN_HELDOUT_ACCURACY:
        sys.exit(f"held-out accuracy {test_acc:.4f} is below {MIN_HELDOUT_ACCURACY}; not writing "
                 f"{args.out}. Try more --epochs or another --seed.")

    metadata = {
        "heldout_accuracy": f"{test_acc:.6f}",
        "train_accuracy": f"{train_acc:.6f}",
        "architecture": json.dumps(model.config),
        "input": "(B, 1, 16, 16) in [-1, 1]",
        "data": 'trained on load_dataset("digits", split="train"), scored on split="test"',
        "features": f"(B, {args.feature_dim}) penultimate layer after GELU",
        "command": command,
        "torch_version": torch.__version__,
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # readable by everyone once installed
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
