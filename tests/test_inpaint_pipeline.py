"""The pipeline's ``image=``, ``mask_image=``, ``strength=``: its output is ``pf.inpaint`` / ``pf.edit`` on the
call's noise; a latent pipeline encodes with its VAE and puts the kept pixels back after the decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patchforcing as pf
from conftest import make_model, make_vae
from patchforcing.errors import ConfigError, ShapeError

pytest.importorskip("diffusers")
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from PIL import Image  # noqa: E402

from patchforcing.hub.transformer import PatchForcingTransformerModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _pipe(net, **kwargs):
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), nfe=8, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def grey():
    return make_model(dtype=torch.float32, in_channels=1, input_size=8)


def _noise(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return randn_tensor(shape, generator=g), g


@pytest.mark.parametrize("mode", ["same", "clean"])
def test_inpainting_output_equals_the_function(grey, mode):
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 5:] = 1
    pipe = _pipe(grey)
    out = pipe(class_labels=[1, 2], image=image, mask_image=mask, inpaint_mode=mode, sampler="random-look-ahead",
               generator=torch.Generator().manual_seed(4), output_type="pt")
    noise, g = _noise((2, 1, 8, 8), 4)
    x, info = pf.inpaint(grey, image * 2 - 1, mask, pipe.plan("random-look-ahead"), noise=noise, labels=torch.tensor([1, 2]),
                         mode=mode, generator=g, return_info=True)
    assert torch.equal(out.images, (x.clamp(-1, 1) + 1) / 2) and out.nfe == info["nfe"]
    assert torch.equal(out.images[..., :4], image[..., :4].expand(2, 1, 8, 4))  # patch columns 0, 1 are kept


def test_editing_with_a_number_and_a_map_equals_the_function(grey):
    image = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    pipe = _pipe(grey)
    strength = np.zeros((8, 8, 1), dtype=np.float32)
    strength[4:] = 0.7  # an (H, W, 1) array, as diffusers takes masks
    for given, expected in ((0.5, 0.5), (strength, torch.from_numpy(strength).permute(2, 0, 1)[None])):
        out = pipe(class_labels=[3], image=image, strength=given, sampler="euler-pf", generator=torch.Generator().manual_seed(2),
                   output_type="pt")
        noise, g = _noise((1, 1, 8, 8), 2)
        x = pf.edit(grey, image * 2 - 1, expected, pipe.plan("euler-pf"), noise=noise, labels=torch.tensor([3]), generator=g)
        assert torch.equal(out.images, (x.clamp(-1, 1) + 1) / 2)
    assert torch.equal(out.images[..., :4, :], image[..., :4, :])


def test_pil_in_pil_out_keeps_the_pixels(grey):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 2:6] = 255
    out = _pipe(grey)(class_labels=[0], image=Image.fromarray(pixels), mask_image=Image.fromarray(mask),
                      generator=torch.Generator().manual_seed(0)).images[0]
    got = np.asarray(out)
    assert got.shape == (8, 8) and np.array_equal(got[mask == 0], pixels[mask == 0])


def test_a_latent_pipeline_encodes_decodes_and_recomposites():
    net = make_model(dtype=torch.float32, in_channels=4)
    pipe = _pipe(net, vae=make_vae(), latent_scale=0.5)
    rgb = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[3:11, 5:13] = 255
    out = pipe(class_labels=[1], image=Image.fromarray(rgb), mask_image=Image.fromarray(mask), sampler="euler-pf",
               generator=torch.Generator().manual_seed(0)).images[0]
    got, keep = np.asarray(out), mask == 0
    assert got.shape == (16, 16, 3) and np.array_equal(got[keep], rgb[keep]) and not np.array_equal(got[~keep], rgb[~keep])


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(mask_image=torch.ones(1, 1, 8, 8)), ConfigError, "pass image= too"),
    (dict(image=torch.rand(1, 1, 8, 8)), ConfigError, "mask_image= (inpainting"),
    (dict(image=torch.rand(1, 1, 8, 8) * 2 - 1, strength=0.5), ShapeError, "in [0, 1]"),
    (dict(image=torch.rand(1, 1, 8, 8), mask_image=torch.ones(1, 1, 4, 4)), ShapeError, "of the image's size"),
    (dict(image=torch.rand(1, 3, 8, 8), strength=0.5), ShapeError, "3 channel(s) but this pipeline takes 1"),
    (dict(image=torch.rand(1, 1, 8, 8), mask_image=torch.zeros(1, 1, 8, 8)), ConfigError, "nothing to generate"),
    (dict(image=torch.rand(1, 1, 8, 8), strength=0.5, inpaint_mode="ahead"), ConfigError, "pass mask_image= too"),
])
def test_bad_image_inputs_get_one_message(grey, kwargs, error, words):
    with pytest.raises(error) as err:
        _pipe(grey)(class_labels=[0], **kwargs)
    assert words in str(err.value)
