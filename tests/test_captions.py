"""Captioned data: digits-captions (measured attributes) and captioned image folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from patchforcing.data import ImageDataset, load_dataset
from patchforcing.data.captions import DIGIT_WORDS, PHRASINGS, SLANT, THICKNESS, CaptionedDataset, measure_digit_attributes
from patchforcing.errors import DataError


def test_digits_captions_describe_label_and_measured_attributes():
    data = load_dataset("digits-captions")
    plain = load_dataset("digits")
    assert isinstance(data, CaptionedDataset) and torch.equal(data.images, plain.images) and torch.equal(data.labels, plain.labels)
    for i in range(40):
        caption, digit = data.captions[i], int(data.labels[i])
        assert DIGIT_WORDS[digit] in caption or str(digit) in caption
        assert THICKNESS[int(data.attributes["thickness"][i])] in caption
        assert SLANT[int(data.attributes["slant"][i])] in caption
    # several phrasings, and balanced attributes (median / tertile thresholds per digit)
    assert len({c.split(" ")[0] for c in data.captions}) >= 3 and len(PHRASINGS) == 4
    assert abs(float(data.attributes["thickness"].float().mean()) - 0.5) < 0.05
    assert np.bincount(data.attributes["slant"].numpy()).min() > 450


def test_attribute_measurement_responds_to_thickening_and_shearing():
    data = load_dataset("digits-captions", split="test")
    x, digits = data.images[:64], data.labels[:64]
    base = measure_digit_attributes(x, digits)
    thick = F.max_pool2d(x, 3, stride=1, padding=1)  # dilate the strokes
    assert bool((measure_digit_attributes(thick, digits).thickness == 1).all())
    # shear: move row r by (R/2 - r) / 4 pixels to the right, so the top leans right
    grid_y, grid_x = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    grid = torch.stack([grid_x + 0.35 * grid_y, grid_y], dim=-1)[None].expand(64, -1, -1, -1)
    sheared = F.grid_sample(x, grid, align_corners=True, padding_mode="border")
    after = measure_digit_attributes(sheared, digits)
    assert bool((after.shear > base.shear).float().mean() > 0.95)
    assert float(after.slant.float().mean()) > float(base.slant.float().mean()) + 0.5


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_folder_with_txt_captions_skips_and_names_broken_pairs(tmp_path, capsys):
    for i in range(5):
        _png(tmp_path / f"img{i}.png", 40 * i)
        if i != 3:
            (tmp_path / f"img{i}.txt").write_text(f"picture number {i}\n")
    (tmp_path / "img1.png").write_bytes(b"not a png")
    data = load_dataset(str(tmp_path), resolution=8)  # img4 is the held-out file
    out = capsys.readouterr().out
    assert "img3.png: no caption" in out and "img1.png" in out
    assert isinstance(data, CaptionedDataset) and data.captions == ["picture number 0", "picture number 2"]
    assert data.images.shape[1:] == (3, 8, 8)
    assert (data.images[1] - data.images[0]).abs().max() > 0.5  # each caption stays with its own image


def test_folder_with_jsonl_captions(tmp_path, capsys):
    for i in range(3):
        _png(tmp_path / "sub" / f"{i}.png", 100 + i)
    lines = [json.dumps({"file": f"sub/{i}.png", "caption": f"c{i}"}) for i in range(3)]
    lines += [json.dumps({"file": "sub/missing.png", "caption": "x"}), "{broken"]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    data = load_dataset(str(tmp_path), resolution=8)
    out = capsys.readouterr().out
    assert "missing.png" in out and "line 5" in out
    assert sorted(data.captions + load_dataset(str(tmp_path), split="test", resolution=8).captions) == ["c0", "c1", "c2"]


def test_plain_folders_stay_plain_and_empty_captioned_folders_fail_clearly(tmp_path):
    _png(tmp_path / "plain" / "a" / "1.png", 10)
    _png(tmp_path / "plain" / "a" / "2.png", 20)
    assert type(load_dataset(str(tmp_path / "plain"), resolution=8)) is ImageDataset
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "captions.jsonl").write_text("")
    with pytest.raises(DataError, match="no captioned images"):
        load_dataset(str(tmp_path / "empty"))
