"""``patchforcing inpaint`` and ``patchforcing edit`` end to end on tiny runs (pixels, and latents through a
tiny VAE): the written picture is the library's result, kept pixels are the input's, bad input is one
line and writes nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import patchforcing as pf
from patchforcing.cli import main
from patchforcing.images import from_uint8, to_uint8_nhwc
from patchforcing.sampling import SamplingPlan
from test_latent_eval import latent_run  # noqa: F401 - the tiny latent run fixture

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "16", "--device", "cpu", "--val-size", "32",
        "--sample-every", "0", "--steps", "4", "--log-every", "2", "--val-every", "4", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def latent(request):
    """The tiny latent run of ``test_latent_eval`` (a tiny VAE recorded by the run; needs diffusers)."""
    pytest.importorskip("diffusers")
    return request.getfixturevalue("latent_run")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step digits run, a 16x16 grey picture and a mask picture (right half white: generate)."""
    root = tmp_path_factory.mktemp("inpaint-cli")
    torch.set_num_threads(1)
    assert main(["train", "--out", str(root / "run"), *TINY]) == 0
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "in.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 9:] = 255  # pixel column 9 lies in patch column 4: patch columns 4..7 are generated
    Image.fromarray(mask).save(root / "mask.png")
    return root, pixels


def _read(path):
    return np.asarray(Image.open(path))


def test_inpaint_writes_the_librarys_result_with_the_kept_pixels_exact(run, tmp_path, capsys):
    root, pixels = run
    out = tmp_path / "out.png"
    assert main(["inpaint", "--checkpoint", str(root / "run"), "--image", str(root / "in.png"), "--mask", str(root / "mask.png"),
                 "--mode", "ahead", "--nfe", "8", "--seed", "3", "--out", str(out)]) == 0
    assert "mode ahead" in capsys.readouterr().out
    got = _read(out)
    assert got.shape == (16, 16) and np.array_equal(got[:, :8], pixels[:, :8]) and not np.array_equal(got[:, 8:], pixels[:, 8:])
    net = pf.load_model(root / "run")
    image = from_uint8(torch.from_numpy(pixels))[None, None]
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 9:] = 1
    x = pf.inpaint(net, image, mask, SamplingPlan.from_nfe("look-ahead", 8), seeds=[3], mode="ahead")
    assert np.array_equal(got, to_uint8_nhwc(x)[0, ..., 0])


def test_edit_keeps_black_and_regenerates_the_rest(run, tmp_path):
    root, pixels = run
    strength = np.zeros((16, 16), dtype=np.uint8)
    strength[8:] = 153  # 0.6 on the bottom half
    Image.fromarray(strength).save(tmp_path / "map.png")
    out = tmp_path / "edit.png"
    assert main(["edit", "--checkpoint", str(root / "run"), "--image", str(root / "in.png"), "--strength-map",
                 str(tmp_path / "map.png"), "--sampler", "euler-pf", "--steps", "4", "--out", str(out)]) == 0
    got = _read(out)
    assert np.array_equal(got[:8], pixels[:8]) and not np.array_equal(got[8:], pixels[8:])
    grid = tmp_path / "grid.png"
    assert main(["edit", "--checkpoint", str(root / "run"), "--image", str(root / "in.png"), "--strength", "0.5",
                 "--num-samples", "3", "--sampler", "euler-pf", "--steps", "2", "--out", str(grid)]) == 0
    assert _read(grid).shape[1] > 3 * 16  # three results side by side


@pytest.mark.parametrize("change, words", [
    (["--mask", "small.png"], "--mask is 8x8 but --image 16x16"),
    (["--image", "rgb.png"], "convert it"),
    (["--mask", "black.png"], "nothing to generate"),
    (["--mask", "missing.png"], "no such file"),
    (["--mode", "ahead", "--sampler", "euler", "--checkpoint", "sit.safetensors"], "use mode 'same'"),
])
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, change, words):
    root, _ = run
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "black.png")
    torch.manual_seed(0)
    pf.save_model(pf.create_model("SiT-XS/2", depth=1, hidden_size=32, num_heads=2), tmp_path / "sit.safetensors")
    flags = {"--checkpoint": str(root / "run"), "--image": str(root / "in.png"), "--mask": str(root / "mask.png")}
    extra = []
    for flag, value in zip(change[::2], change[1::2], strict=True):
        if flag in flags:
            flags[flag] = str(tmp_path / value)
        else:
            extra += [flag, value]
    out = tmp_path / "out" / "out.png"
    argv = ["inpaint", *[a for kv in flags.items() for a in kv], *extra, "--steps", "2", "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not out.exists()


def test_a_latent_run_inpaints_through_its_vae_and_recomposites(tmp_path, latent):
    root, _ = latent
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    assert main(["inpaint", "--checkpoint", str(root / "run"), "--image", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "mask.png"), "--sampler", "euler-pf", "--steps", "2", "--out", str(out)]) == 0
    got = _read(out)
    keep = mask == 0
    assert got.shape == (16, 16, 3) and np.array_equal(got[keep], rgb[keep]) and not np.array_equal(got[~keep], rgb[~keep])
    # without the run folder the network's file alone records no VAE: one line naming --vae
    ckpt = next((root / "run" / "checkpoints").glob("step-*.pt"))
    shutil.copy(ckpt, tmp_path / "alone.pt")
    assert main(["inpaint", "--checkpoint", str(tmp_path / "alone.pt"), "--image", str(tmp_path / "in.png"), "--mask",
                 str(tmp_path / "mask.png"), "--sampler", "euler-pf", "--steps", "2", "--out", str(tmp_path / "no.png")]) == 1
    assert not (tmp_path / "no.png").exists()
