"""What training adds to ``patchforcing.runtime``: the batch split check and the wrapped network.

``runtime`` resolves the device, joins the process group of ``torchrun`` / ``accelerate launch``
and holds the collectives; here the network is wrapped for data parallelism and compilation.
"""

from __future__ import annotations

from torch import nn

from patchforcing import runtime
from patchforcing.errors import ConfigError


def check_batch_split(batch_size: int) -> None:
    """The global batch must split evenly over the launcher's processes (checked before joining)."""
    world_size = runtime.launcher_world_size()
    if batch_size % world_size:
        raise ConfigError(
            f"--batch-size {batch_size} (the global batch) does not split over {world_size} processes; "
            f"use a multiple of {world_size}, e.g. {world_size * max(1, round(batch_size / world_size))}"
        )


def wrap(net: nn.Module, procs: runtime.Processes, compile: bool) -> nn.Module:  # noqa: A002
    """The module the training step calls: DDP around the network when distributed, then compiled."""
    model = runtime.data_parallel(net, procs)
    if compile:
        # The network's modulation-sharing shortcut branches on the values of t (a graph break); training
        # times are per patch and mostly distinct, so its per-token path is the one taken anyway.
        net.share_modulation = False
        # torch 2.13 replays cached AOT-autograd graphs of this network with garbage output-view shapes
        # (RuntimeError "shape '[94070143522283, ...]' is invalid", or a segfault) from the second run on.
        import torch._functorch.config as functorch_config

        functorch_config.enable_autograd_cache = False
        import torch

        model = torch.compile(model)
    return model
