"""Training: ``train(config)`` and its configuration (frozen dataclass + named presets).

    patchforcing train --out runs/digits                         # default `digits` preset, 2-core CPU
    patchforcing train --out runs/digits --steps 8000             # rerun with more steps: trains on
    patchforcing train --preset imagenet-b2 --data latents/in256 --out runs/b2 --dry-run
    torchrun --nproc_per_node 8 -m patchforcing train --preset imagenet-xl2 --data latents/in256

From Python::

    from patchforcing.training import resolve_config, train
    summary = train(resolve_config("digits", out="runs/digits", steps=2000))

Only this package touches distributed code, mixed precision and optimizers.
"""

from patchforcing.errors import ConfigError
from patchforcing.training.config import PRESETS, TrainConfig, load_config_file, resolve_config
from patchforcing.training.loop import train as _train


def train(config: TrainConfig) -> dict:
    """Train or resume ``config.out``; see :func:`patchforcing.training.loop.train`."""
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() takes a TrainConfig, got {type(config).__name__}; build one with resolve_config('digits', out=..., steps=...)")
    return _train(config)


__all__ = ["PRESETS", "TrainConfig", "load_config_file", "resolve_config", "train"]
