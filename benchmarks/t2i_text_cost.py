"""Does text encoding dominate a text-to-image training step? Encoding a batch of captions
(cold cache: every caption new; warm: every caption seen before) against one training step of
the ``digits-t2i`` network (the trainer's ``train_step``: forward, backward, clipping, AdamW, the
warm-up schedule and the EMA update, built as ``train`` builds them), CPU float32.

    OMP_NUM_THREADS=1 python benchmarks/t2i_text_cost.py                      # the bundled toy encoder
    OMP_NUM_THREADS=1 python benchmarks/t2i_text_cost.py --t5-width 512 --t5-layers 6   # a T5-small-sized encoder built offline

The T5 encoder here has random weights (built from a config, nothing downloaded): its cost is
that of a real encoder of the same size, its states are meaningless. ``digits-captions`` has
1,500 captions, so after the first epoch every caption is a cache hit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import command_line, describe_machine  # noqa: E402
from patchforcing.data import load_dataset  # noqa: E402
from patchforcing.loss import Example  # noqa: E402
from patchforcing.models import create_model  # noqa: E402
from patchforcing.text import load_text_encoder  # noqa: E402
from patchforcing.timesteps import timestep_distribution  # noqa: E402
from patchforcing.training import resolve_config  # noqa: E402
from patchforcing.training.config import text_network_config  # noqa: E402
from patchforcing.training.step import make_ema_and_optimizer, step_options, train_step  # noqa: E402


def _encoder(args):
    if args.t5_width is None:
        return load_text_encoder("byte-toy")
    import transformers

    folder = tempfile.mkdtemp()
    config = transformers.T5Config(vocab_size=384, d_model=args.t5_width, d_kv=64, d_ff=4 * args.t5_width,
                                   num_layers=args.t5_layers, num_heads=args.t5_width // 64)
    transformers.T5EncoderModel(config).save_pretrained(folder)
    transformers.ByT5Tokenizer().save_pretrained(folder)
    return load_text_encoder(folder, max_length=args.text_length)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--t5-width", type=int, default=None)
    ap.add_argument("--t5-layers", type=int, default=6)
    ap.add_argument("--text-length", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_dataset("digits-captions")
    encoder = _encoder(args)
    cfg = resolve_config("digits-t2i")
    net = create_model(text_network_config(cfg, data, {"txt_in_dim": encoder.dim, "text_encoder": encoder.name,
                                                       "text_length": encoder.max_length})).train()
    ema, optimizer, scheduler = make_ema_and_optimizer(net, cfg)
    options = step_options(cfg, torch.device("cpu"))
    ltg = timestep_distribution("ltg")
    b = args.batch

    cold, warm, step = [], [], []
    for r in range(args.repeats):
        captions = data.captions[r * b : (r + 1) * b]
        t0 = time.perf_counter()
        y = encoder.encode(captions)  # all new
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        y = encoder.encode(captions)  # all cached
        warm.append(time.perf_counter() - t0)
        x1 = data.images[r * b : (r + 1) * b]
        example = Example(x1, torch.randn_like(x1), ltg(x1.shape[0], net.config.num_patches), y)  # captions already dropped
        t0 = time.perf_counter()
        train_step(net, ema, optimizer, example, scheduler=scheduler, **options)
        step.append(time.perf_counter() - t0)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print(f"# {command_line()}")
    print(f"# {describe_machine()}; encoder {encoder.name} (width {encoder.dim}, {encoder.max_length} tokens), batch {b}")
    print(f"training step (train_step, as `train`):      {med(step) * 1e3:8.1f} ms")
    print(f"encode, cold cache:                          {med(cold) * 1e3:8.1f} ms  ({med(cold) / med(step):.2f} of a step)")
    print(f"encode, warm cache:                          {med(warm) * 1e3:8.1f} ms  ({med(warm) / med(step):.3f} of a step)")


if __name__ == "__main__":
    main()
