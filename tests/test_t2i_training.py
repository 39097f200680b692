"""Training text-to-image networks: config, text dropout, exact resume, and the CLI end to end
(a tiny T5 encoder built offline trains a few steps, then samples from prompts)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import patchforcing as pf
from patchforcing.cli import main
from patchforcing.errors import ConfigError
from patchforcing.models import PatchForcingT2I
from patchforcing.training import resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "digits-t2i", "--depth", "1", "--hidden-size", "32", "--num-heads", "1", "--batch-size", "8",
        "--val-size", "16", "--device", "cpu", "--val-every", "0", "--sample-every", "0", "--warmup-steps", "2"]


def _checkpoint(run, step):
    return torch.load(run / "checkpoints" / f"step-{step:08d}.pt", map_location="cpu", weights_only=True)


def test_text_config_defaults_ltg_loc_half_and_checks_dropout():
    cfg = resolve_config("digits-t2i")
    assert cfg.is_text and cfg.data == "digits-captions" and cfg.text_dropout == 0.1
    assert cfg.timestep_name == "ltg" and cfg.timestep_params() == {"loc": 0.5}
    assert resolve_config("digits-t2i", timestep_options="loc=0.7").timestep_params() == {"loc": 0.7}
    assert resolve_config("digits").timestep_params() == {"loc": 0.0}  # the digits preset: docs/where_it_pays.md
    assert resolve_config("imagenet-b2").timestep_params() == {}  # ImageNet keeps the docs/method.md §2.7 default (0.7)
    with pytest.raises(ConfigError, match="text_dropout"):
        resolve_config("digits-t2i", text_dropout=1.5)


def test_resume_is_exact_and_captions_drop_to_the_empty_prompt(tmp_path, capsys):
    args = (*TINY, "--log-every", "2", "--ckpt-every", "2", "--text-dropout", "0.5")
    assert main(["train", "--out", str(tmp_path / "whole"), *args, "--steps", "4"]) == 0
    assert main(["train", "--out", str(tmp_path / "split"), *args, "--steps", "2"]) == 0
    assert main(["train", "--out", str(tmp_path / "split"), *args, "--steps", "4"]) == 0
    assert "resuming" in capsys.readouterr().out
    whole, split = _checkpoint(tmp_path / "whole", 4), _checkpoint(tmp_path / "split", 4)
    assert all(torch.equal(whole["ema"][k], split["ema"][k]) for k in whole["ema"])
    assert whole["model_config"]["architecture"] == "t2i" and whole["model_config"]["text_encoder"] == "byte-toy"
    # the dropout draw is a function of (seed, step): the same captions every time, about half dropped
    from patchforcing.data import load_dataset
    from patchforcing.timesteps import timestep_distribution
    from patchforcing.training.batches import StepBatches
    from patchforcing.training.text import TextConditioner

    cfg = resolve_config("digits-t2i", text_dropout=0.5, batch_size=64)
    cond = TextConditioner.for_run(cfg, load_dataset("digits-captions"))
    def batches(rank: int = 0, world_size: int = 1) -> StepBatches:
        return StepBatches(torch.zeros(1500, 1, 1, 1), torch.zeros(1500, dtype=torch.long), seed=0, batch_size=64,
                           rank=rank, world_size=world_size, timesteps=timestep_distribution("uniform"), num_patches=1,
                           null_label=None, drop_prob=0.0, global_time=False, **cond.batch_fields())

    first = batches()[7].condition  # the 64 captions of step 7
    assert first == batches()[7].condition and 16 < first.count("") < 48
    assert batches(0, 2)[7].condition + batches(1, 2)[7].condition == first  # two processes: the same drops, split
    kept = [c for c in first if c]
    assert kept and all(c in cond.captions for c in kept)


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(config).save_pretrained(folder)
    transformers.ByT5Tokenizer().save_pretrained(folder)
    return folder


def test_cli_trains_with_a_t5_encoder_and_samples_from_prompts(tmp_path, tiny_t5, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--steps", "2", "--log-every", "1",
                 "--text-encoder", str(tiny_t5), "--text-length", "24"]) == 0
    config = json.loads((run / "config.json").read_text())["model_config"]
    assert (config["txt_in_dim"], config["text_encoder"], config["text_length"]) == (16, str(tiny_t5), 24)
    net = pf.load_model(run)
    assert isinstance(net, PatchForcingT2I)
    (tmp_path / "prompts.txt").write_text("the digit 3, thin and upright\n\n")
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run), "--prompt", "a bold seven, slanted right", "--prompts-file",
                 str(tmp_path / "prompts.txt"), "--sampler", "look-ahead", "--steps", "3", "--cfg-scale", "2",
                 "--show-difficulty", "--out", str(out)]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.width > 2 * 16  # image plus difficulty and time panels
    assert main(["sample", "--checkpoint", str(run), "--out", str(tmp_path / "x.png")]) != 0  # no prompt: one clear error
    assert "--prompt" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_dry_run_of_the_text_preset_resolves_its_network(tmp_path, capsys):
    """``train --preset digits-t2i --dry-run``: the T2I network is resolved against the data and its text encoder."""
    out = tmp_path / "run"
    assert main(["train", "--preset", "digits-t2i", "--out", str(out), "--dry-run"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "T2I-XS/2" and doc["model_config"]["text_encoder"] == "byte-toy"
    assert doc["model_config"]["depth"] == 2 and doc["data_info"]["name"] == "digits-captions"
    assert not out.exists()  # a dry run creates nothing
