"""What training adds to ``patchforcing.runtime``: the batch split check and the wrapped network.

``runtime`` resolves the device, joins the process group of ``torchrun`` / ``accelerate launch``
and holds the collectives; here the network is compiled and wrapped for data parallelism.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from patchforcing import runtime
from patchforcing.errors import ConfigError


def check_batch_split(batch_size: int, grad_accum: int = 1) -> None:
    """The global batch must split evenly over the launcher's processes and each process's share
    over ``grad_accum`` micro-batches (checked before joining the process group)."""
    parts = runtime.launcher_world_size() * grad_accum
    if batch_size % parts:
        what = f"{runtime.launcher_world_size()} processes x {grad_accum} micro-batches" if grad_accum > 1 else f"{parts} processes"
        raise ConfigError(
            f"--batch-size {batch_size} (the global batch) does not split over {what}; "
            f"use a multiple of {parts}, e.g. {parts * max(1, round(batch_size / parts))}"
        )


def compile_network(net: nn.Module, **options: Any) -> nn.Module:
    """Compile ``net`` region by region, in place: each transformer block (and the final layer).

    The network's shared-modulation fast path (``PatchForcingTransformer._conditioning``) looks at
    the VALUES of ``t`` (how many distinct times a sample has), which a compiled graph cannot
    branch on; compiled whole, it would break the graph or have to be switched off. Compiling the
    blocks instead keeps the conditioning eager, so the fast path stays on, while the blocks --
    attention, MLP and the modulated norms, nearly all of the compute -- run compiled. The blocks
    are identical, so one compilation serves all of them (a few graphs: the modulation arrives
    broadcast (B, 1, 6D) or per token (B, N, 6D)). Parameter names do not change.
    """
    # torch 2.13 replays cached AOT-autograd graphs of this network with garbage output-view shapes
    # (RuntimeError "shape '[94070143522283, ...]' is invalid", or a segfault) from the second run on.
    import torch._functorch.config as functorch_config

    functorch_config.enable_autograd_cache = False
    regions = list(getattr(net, "blocks", [])) + [m for m in (getattr(net, "final_layer", None),) if m is not None]
    if not regions:
        raise ConfigError(f"--compile compiles the blocks of a transformer; {type(net).__name__} has none")
    for module in regions:
        module.compile(**options)
    return net


def wrap(net: nn.Module, procs: runtime.Processes, compile: bool) -> nn.Module:  # noqa: A002
    """The module the training step calls: the network (its blocks compiled with ``compile``),
    wrapped for data parallelism (``runtime.data_parallel``) when distributed."""
    if compile:
        compile_network(net)
    return runtime.data_parallel(net, procs)
