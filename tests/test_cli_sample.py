"""`patchforcing sample` end to end on a tiny checkpoint, with and without a tiny VAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import patchforcing as pf
from conftest import make_vae
from patchforcing.cli import main


def _tiny(tmp_path, **overrides):
    torch.manual_seed(0)
    net = pf.create_model("PF-XS/2", depth=2, hidden_size=32, num_heads=2, input_size=8, **overrides)
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "tiny.safetensors"
    pf.save_model(net, path)
    return net, path


def test_sample_writes_grid_matching_library(tmp_path, capsys):
    net, ckpt = _tiny(tmp_path)
    out = tmp_path / "grid.png"
    rc = main(["sample", "--checkpoint", str(ckpt), "--sampler", "look-ahead", "--steps", "6",
               "--labels", "1,2,3", "--seed", "5", "--out", str(out)])
    assert rc == 0 and out.exists()
    assert "11 NFE" in capsys.readouterr().out  # look-ahead, 6 steps: 1 warm-up step + 5 * 2
    img = np.asarray(Image.open(out))
    # The first tile equals the library sample for seed 5 and label 1.
    noise = pf.sampling.noise_for_seeds([5], (1, 8, 8))
    x = pf.sample(net.eval(), noise, sampler="look-ahead", steps=6, labels=torch.tensor([1]))
    expected = ((x[0, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    tile = img[16 + 4:16 + 64:8, 16 + 4:16 + 64:8, 0]  # pad 2 px and 8 px pixels, both upscaled 8x
    assert np.abs(tile.astype(int) - expected.astype(int)).max() <= 1


def test_sample_show_difficulty_adds_maps(tmp_path):
    _, ckpt = _tiny(tmp_path)
    plain, maps = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["sample", "--checkpoint", str(ckpt), "--sampler", "dual-loop", "--steps", "2", "--labels", "0",
                 "--num-samples", "1", "--out", str(plain)]) == 0
    assert main(["sample", "--checkpoint", str(ckpt), "--sampler", "dual-loop", "--steps", "2", "--labels", "0",
                 "--num-samples", "1", "--show-difficulty", "--out", str(maps)]) == 0
    w_plain, w_maps = Image.open(plain).width, Image.open(maps).width
    assert w_maps > 2 * w_plain  # image | difficulty | time map


def test_show_difficulty_names_its_panels_and_draws_a_legend(tmp_path):
    from patchforcing.viz import colormap, difficulty_panels, grid, labelled_panel_grid

    _, ckpt = _tiny(tmp_path)
    out = tmp_path / "maps.png"
    assert main(["sample", "--checkpoint", str(ckpt), "--sampler", "look-ahead", "--steps", "4", "--labels", "0,1",
                 "--show-difficulty", "--out", str(out)]) == 0
    page = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # the same layout on known tiles: the grid sits below a header row, the legend below the grid
    tiles = difficulty_panels(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8), torch.full((2, 16), 0.5))
    body = np.asarray(grid(tiles, ncols=2, scale=8).convert("RGB")).astype(int)
    drawn = np.asarray(labelled_panel_grid(tiles, ["image", "difficulty", "patch time"], 2, 8, note="n")).astype(int)
    assert drawn.shape == page.shape
    top = next(y for y in range(drawn.shape[0]) if np.array_equal(drawn[y:y + body.shape[0], :body.shape[1]], body))
    assert top > 8  # a header row of names above the grid
    for panel in range(3):  # each panel of the first tile has its name (dark text) above it
        x0, x1 = 16 + panel * 64, 16 + (panel + 1) * 64
        assert (page[:top, x0:x1] < 100).all(axis=2).any(), panel
    legend = page[top + body.shape[0]:]
    ends = colormap(torch.tensor([[[0.0, 1.0]]]))[0, 0]  # the ramp's two end colours appear in the legend
    for colour in ends:
        assert (np.abs(legend - colour.astype(int)).sum(axis=2) <= 3).any()


def test_sample_decodes_with_tiny_vae(tmp_path):
    pytest.importorskip("diffusers")
    make_vae(tmp_path / "vae")
    _, ckpt = _tiny(tmp_path, in_channels=4)
    out = tmp_path / "decoded.png"
    assert main(["sample", "--checkpoint", str(ckpt), "--sampler", "euler-pf", "--steps", "2", "--labels", "3,4",
                 "--vae", str(tmp_path / "vae"), "--out", str(out)]) == 0
    img = Image.open(out)
    # 8x8 latents decode to 16x16 RGB images: 2 tiles + 2 px padding, upscaled 4x in the grid.
    assert img.mode == "RGB" and img.size == ((2 * 18 + 2) * 4, (18 + 2) * 4)


def test_sample_errors_are_one_line(tmp_path, capsys):
    _, ckpt = _tiny(tmp_path)
    assert main(["sample", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.png")]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(ckpt), "--sampler", "fast", "--out", str(tmp_path / "x.png")]) == 1
    assert "unknown sampler 'fast'" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(ckpt), "--labels", "a,b", "--out", str(tmp_path / "x.png")]) == 1
    assert "--labels" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(ckpt), "--vae", str(tmp_path / "novae"), "--steps", "1",
                 "--labels", "1", "--out", str(tmp_path / "x.png")]) == 1
    assert "VAE" in capsys.readouterr().err
