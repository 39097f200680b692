"""What the two shipped-classifier scripts share: their flags, the training loop and the atomic write.

``train_digits_classifier.py`` and ``train_photos_classifier.py`` each give the data, the network
and the augmentation; the loop (AdamW with a one-cycle schedule, label smoothing 0.05, a seeded
permutation per epoch) and the safetensors file with its metadata are written once, here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from patchforcing.evaluation.classifier import classification_accuracy


def parser(doc: str, *, epochs: int, batch_size: int, unit: str, out: Path) -> argparse.ArgumentParser:
    """The flags of a classifier script: ``--epochs`` and ``--batch-size`` with the script's defaults, then
    the optimizer, network, seed, threads and output flags both take."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training {unit}")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"{unit} per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--width", type=int, default=32, help="channels of the first conv stage")
    p.add_argument("--feature-dim", type=int, default=64, help="size of the feature layer")
    p.add_argument("--seed", type=int, default=0, help="seed for init, batches and augmentation")
    p.add_argument("--threads", type=int, default=1, help="CPU threads; one is fastest here")
    p.add_argument("--out", type=Path, default=out, help="where to write the weights")
    return p


def fit(model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
        args: argparse.Namespace, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        generator: torch.Generator, report_every: int = 1) -> tuple[float, float]:
    """Train ``model`` on ``train`` = (images, labels); returns (train accuracy, held-out accuracy on ``test``)."""
    (x_train, y_train), (x_test, y_test) = train, test
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(x_train), args.batch_size):
            idx = perm[start:start + args.batch_size]
            loss = F.cross_entropy(model(augment(x_train[idx], generator)), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % report_every == 0 or epoch + 1 == args.epochs:
            model.eval()
            print(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}  held-out accuracy "
                  f"{classification_accuracy(model, x_test, y_test):.4f}", flush=True)
    model.eval()
    return classification_accuracy(model, x_train, y_train), classification_accuracy(model, x_test, y_test)


def command_line(script: str) -> str:
    """The command that reruns this script with its arguments (recorded in the weights' metadata)."""
    return "python " + shlex.join([f"scripts/{script}", *sys.argv[1:]])


def write(model: torch.nn.Module, args: argparse.Namespace, *, train_acc: float, test_acc: float, minimum: float,
          command: str, metadata: dict[str, str]) -> None:
    """Write the weights to ``args.out`` (atomically, mode 0644) with the accuracies, the architecture and
    ``metadata``; refuse (exit with the reason) below ``minimum`` held-out accuracy."""
    if test_acc < minimum:
        sys.exit(f"held-out accuracy {test_acc:.4f} is below {minimum}; not writing {args.out}. "
                 "Try more --epochs or another --seed.")
    metadata = {"heldout_accuracy": f"{test_acc:.6f}", "train_accuracy": f"{train_acc:.6f}",
                "architecture": json.dumps(model.config), **metadata,
                "features": f"(B, {args.feature_dim}) penultimate layer after GELU", "command": command,
                "torch_version": torch.__version__}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # readable by everyone once installed
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
