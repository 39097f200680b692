"""Train the photo classifier that ships with the package (the second photo feature space).

Learns which of the bundled photographs a 32x32 crop comes from, on the TRAIN crops only (the left
85 % of every photograph, the crops the generators train on), scores the held-out crops (the
right 15 %), and writes ``src/patchforcing/assets/photos_classifier.safetensors`` with the held-out
accuracy and the architecture in its metadata. Refuses to write below 80 % held-out accuracy.

    python scripts/train_photos_classifier.py            # a few minutes on one CPU core
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
from patchforcing.evaluation.classifier import classification_accuracy
from patchforcing.photos_classifier import photos_classifier

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "patchforcing" / "assets" / "photos_classifier.safetensors"
MIN_HELDOUT_ACCURACY = 0.80


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8, help="passes over the 8,192 training crops")
    p.add_argument("--batch-size", type=int, default=128, help="crops per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv stage")
    p.add_argument("--feature-dim", type=int, default=64, help="size of the feature layer")
    p.add_argument("--seed", type=int, default=0, help="seed for init, batches and augmentation")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the weights")
    return p.parse_args()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and a small brightness change, so the network cannot key on either."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=generator) * 2 - 1) * 0.1
    return (x * gain).clamp(-1, 1)


def train(args: argparse.Namespace):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_set = load_dataset("photos-labeled", split="train")
    test_set = load_dataset("photos-labeled", split="test")
    x_train, y_train = train_set.images, train_set.labels  # (8192, 3, 32, 32), (8192,)
    x_test, y_test = test_set.images, test_set.labels  # (1024, 3, 32, 32), (1024,)
    model = photos_classifier(train_set.num_classes, width=args.width, feature_dim=args.feature_dim)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for start in range(0, len(x_train), args.batch_size):
            idx = perm[start:start + args.batch_size]
            loss = F.cross_entropy(model(augment(x_train[idx], gen)), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        model.eval()
        print(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}  held-out accuracy "
              f"{classification_accuracy(model, x_test, y_test):.4f}", flush=True)
    model.eval()
    return model, classification_accuracy(model, x_train, y_train), classification_accuracy(model, x_test, y_test), train_set.class_names


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join(["scripts/train_photos_classifier.py", *sys.argv[1:]])
    t0 = time.time()
    model, train_acc, test_acc, names = train(args)
    print(f"train accuracy {train_acc:.4f}, held-out accuracy {test_acc:.4f} ({time.time() - t0:.0f} s) from: {command}")
    if test_acc < MIN_HELDOUT_ACCURACY:
        sys.exit(f"held-out accuracy {test_acc:.4f} is below {MIN_HELDOUT_ACCURACY}; not writing {args.out}. "
                 "Try more --epochs or another --seed.")
    metadata = {
        "heldout_accuracy": f"{test_acc:.6f}",
        "train_accuracy": f"{train_acc:.6f}",
        "architecture": json.dumps(model.config),
        "classes": json.dumps(list(names)),
        "input": "(B, 3, 32, 32) in [-1, 1]",
        "data": 'trained on load_dataset("photos-labeled", split="train"), scored on split="test"',
        "features": f"(B, {args.feature_dim}) penultimate layer after GELU",
        "command": command,
        "torch_version": torch.__version__,
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
