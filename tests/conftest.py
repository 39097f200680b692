"""Shared fixtures: tiny networks (depth 2, width 32, 8x8 inputs) with randomised weights.

The adaLN and output layers of a fresh network are zero (SPEC 3), so a fresh network outputs
exactly zero and every comparison against it is trivial. ``make_model`` therefore perturbs every
learned parameter with seeded noise unless asked for the fresh initialisation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import reference_impl` from any layout

import patchforcing as pf  # noqa: E402
from patchforcing.models import ModelConfig  # noqa: E402

TINY = dict(input_size=8, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=5)


def tiny_config(kind: str = "patch-forcing", patch_size: int = 2, **overrides) -> ModelConfig:
    return ModelConfig(kind=kind, patch_size=patch_size, **{**TINY, **overrides})


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.15) -> torch.nn.Module:
    """Add seeded noise to every learned parameter (pos_embed stays the fixed sin-cos table).

    The time MLP's first layer gets a larger kick so that different times give clearly
    different outputs (its N(0, 0.02) initialisation makes time almost invisible otherwise).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            s = 1.0 if name.startswith("t_embedder.mlp.0") else scale
            p.add_(s * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return model


def make_model(
    kind: str = "patch-forcing",
    patch_size: int = 2,
    *,
    seed: int = 0,
    randomize: bool = True,
    dtype: torch.dtype = torch.float64,
    **overrides,
) -> pf.PatchForcingTransformer:
    torch.manual_seed(seed)
    model = pf.create_model(tiny_config(kind, patch_size, **overrides))
    model = model.to(dtype)
    if randomize:
        randomize_(model, seed)
    return model.eval()


@pytest.fixture
def model_factory():
    """``model_factory(kind, patch_size, seed=..., randomize=..., dtype=..., **config_overrides)``."""
    return make_model


@pytest.fixture
def pf_model():
    return make_model("patch-forcing", 2)


@pytest.fixture
def sit_model():
    return make_model("sit", 2)


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread and restore the setting afterwards.

    The tiny networks of these tests gain nothing from threads, and on a busy 2-core machine
    OpenMP's thread hand-offs made every op ~100x slower (8 ms instead of 0.1 ms).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
