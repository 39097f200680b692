"""Shared fixtures: tiny networks (depth 2, width 32, 8x8 inputs) with randomised weights, a tiny
VAE, folders of random images, and the helpers of the sampler tests (seeded noise, per-image
generators, ``StraightLine``: a stub network whose velocity is exact for one straight path).

The adaLN and output layers of a fresh network are zero (docs/method.md §3.5), so a fresh network outputs
exactly zero and every comparison against it is trivial. ``make_model`` therefore perturbs every
learned parameter with seeded noise unless asked for the fresh initialisation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import reference_impl` from any layout

import patchforcing as pf  # noqa: E402
from patchforcing.models import ModelConfig, ModelOutput  # noqa: E402

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


def seeded_noise(seed: int = 0, b: int = 3) -> torch.Tensor:
    """(b, 3, 8, 8) float64 noise ``x0 ~ N(0, I)`` for the RGB tiny networks, from a generator seeded with ``seed``."""
    return torch.randn(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def per_image_generators(seeds) -> list[torch.Generator]:
    """One CPU generator per image (``sample(..., generator=[...])``): image i's random masks come from ``seeds[i]``."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class StraightLine(torch.nn.Module):
    """A stub Patch Forcing network of the tiny config that returns the true straight-line velocity
    ``x1 - x0`` of one pair (whatever x and t), and a fixed logvar seeded by ``seed`` that varies
    within patches (so the difficulty masks split the patches). On it every sampler must land
    exactly on ``x1`` from ``x0``. Under guidance (a batch of 2B) the velocity is repeated, so the
    conditional and unconditional velocities agree."""

    def __init__(self, x0: torch.Tensor, x1: torch.Tensor, seed: int = 0):
        super().__init__()
        self.config = tiny_config()
        self.v = x1 - x0
        self.logvar = torch.randn(x0.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def forward(self, x, t, y=None):
        reps = x.shape[0] // self.v.shape[0]  # 2 under guidance
        return ModelOutput(self.v.repeat(reps, 1, 1, 1), self.logvar.repeat(reps, 1, 1, 1))


def make_vae(folder: Path | None = None, blocks: int = 2):
    """A seeded ``AutoencoderKL`` of 16 px RGB images and 4-channel latents (8x8 with 2 blocks, 16x16
    with 1), saved to ``folder`` when given. Needs diffusers (``pytest.importorskip`` it first)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(8, 16)[:blocks],
    ).eval()
    if folder is not None:
        vae.save_pretrained(folder)
    return vae


def image_folder_of_noise(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6,
                          size: tuple[int, int] | None = (20, 20), broken: str | None = None) -> Path:
    """``root/<class>/<i>.png``: seeded random RGB images of ``size`` (H, W), or of random sizes in
    [12, 30) when None; with ``broken``, also ``root/<broken>/broken.png``, a file that is not an image."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            h, w = size or (int(rng.integers(12, 30)), int(rng.integers(12, 30)))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    if broken is not None:
        (root / broken / "broken.png").write_bytes(b"not an image")
    return root


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


@pytest.fixture(scope="module")
def pf_net():
    """One Patch Forcing network (seed 4) per test module, for tests that only read it (hooks are removed after use)."""
    return make_model("patch-forcing", 2, seed=4)


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


def free_port() -> int:
    """A local TCP port nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_tiny_app():
    """A generator for module fixtures: the app of a tiny 1x8x8 network (NFE 8) on a free local port.
    Yields ``(network, url)`` and closes the page afterwards (needs gradio and diffusers)."""
    from patchforcing.app import build_app, serve
    from patchforcing.hub.transformer import PatchForcingTransformerModel

    torch.set_num_threads(1)
    net = make_model(dtype=torch.float32, in_channels=1, input_size=8)
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=8)
    pipe.set_progress_bar_config(disable=True)
    page = build_app(pipe)
    url = serve(page, port=free_port(), block=False)
    yield net, f"{url}/"
    page.close()
