"""``patchforcing export``: a run -> a pipeline folder with a model card; loading it gives the run's images."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import patchforcing as pf
from patchforcing.autoencoder import decode_latents
from patchforcing.cli import main

pytest.importorskip("diffusers")
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from test_latent_eval import SCALE, latent_run  # noqa: E402,F401 - the tiny latent run fixture

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--batch-size", "16", "--device", "cpu", "--val-size", "32",
        "--sample-every", "0", "--steps", "4", "--log-every", "2", "--val-every", "4", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 4-step digits run, an evaluation of it, and its export."""
    root = tmp_path_factory.mktemp("export")
    torch.set_num_threads(1)
    assert main(["train", "--out", str(root / "run"), *TINY]) == 0
    assert main(["evaluate", "--checkpoint", str(root / "run"), "--sampler", "euler-pf", "--nfe", "4", "--num-samples", "20",
                 "--device", "cpu", "--out", str(root / "eval")]) == 0
    assert main(["export", "--checkpoint", str(root / "run"), "--out", str(root / "out"), "--eval", str(root / "eval"),
                 "--nfe", "8"]) == 0
    return root


def test_export_writes_the_pipeline_folder_and_loads_with_the_runs_images(exported):
    out = exported / "out"
    assert {p.name for p in out.iterdir()} == {"model_index.json", "transformer", "README.md"}  # pixels: no vae/
    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == ["patchforcing.hub.transformer", "PatchForcingTransformerModel"] and index["nfe"] == 8
    assert index["schedule"] == "uniform"  # no --schedule: the paper's grid
    net = pf.load_model(exported / "run")
    assert all(torch.equal(a, b) for a, b in zip(pf.load_model(out).state_dict().values(), net.state_dict().values(), strict=False))
    pipe = pf.PatchForcingPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    got = pipe(class_labels=[3, 7], generator=torch.Generator().manual_seed(0), output_type="latent").images
    g = torch.Generator().manual_seed(0)
    noise = randn_tensor((2, 1, 16, 16), generator=g)
    want = pf.sample(net, noise, sampler="look-ahead", steps=pf.steps_for_nfe("look-ahead", 8), labels=torch.tensor([3, 7]), generator=g)
    assert torch.equal(got, want)


def test_model_card_shows_the_runs_numbers_and_its_snippet_runs(exported, tmp_path, monkeypatch):
    card = (exported / "out" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: patchforcing\n# license:") and "- patch-forcing" in card
    lines = [json.loads(line) for line in (exported / "run" / "metrics.jsonl").read_text().splitlines()]
    loss = [m for m in lines if "loss" in m][-1]
    val = [m for m in lines if "val_loss" in m][-1]
    metrics = json.loads((exported / "eval" / "metrics.json").read_text())
    assert f"| training loss (step 4) | {loss['loss']:.4g} |" in card
    assert f"| validation loss, EMA network (step 4) | {val['val_loss']:.4g} |" in card
    assert f"| euler-pf | 4 | 4 | 1 | 20 | {metrics['fid']:.4g} | {metrics['precision']:.4g} |" in card
    assert "| steps | 4 |" in card and "| data: name | digits |" in card and "| batch_size | 16 |" in card
    assert "| depth | 2 |" in card and "hf upload OWNER/NAME" in card and "huggingface-cli" not in card
    header = card.split("---\n")[1]  # a class-conditional network: no Hub task claims it, the tags say what it does
    assert "\npipeline_tag:" not in header and "- class-conditional-image-generation" in header
    assert "unconditional" not in header
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    pipe = pf.PatchForcingPipeline.from_pretrained(exported / "out")
    first = pipe(class_labels=[0, 1, 2, 3], sampler="look-ahead", nfe=8, generator=torch.Generator().manual_seed(0)).images[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "sample.png")), np.asarray(first))


def test_latent_run_exports_its_vae(latent_run, tmp_path):  # noqa: F811
    root, vae = latent_run
    assert main(["export", "--checkpoint", str(root / "run"), "--out", str(tmp_path / "out"), "--nfe", "4"]) == 0
    assert (tmp_path / "out" / "vae" / "config.json").is_file()
    assert f"| VAE | {root / 'vae'} |" in (tmp_path / "out" / "README.md").read_text()
    pipe = pf.PatchForcingPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.latent_scale == SCALE
    got = pipe(class_labels=[1], generator=torch.Generator().manual_seed(1), output_type="pt").images
    g = torch.Generator().manual_seed(1)
    x = pf.sample(pf.load_model(root / "run"), randn_tensor((1, 4, 8, 8), generator=g), sampler="look-ahead",
                  steps=pf.steps_for_nfe("look-ahead", 4), labels=torch.tensor([1]), generator=g)
    assert torch.equal(got, (decode_latents(vae, x, SCALE, 0.0) + 1) / 2)
    # `patchforcing sample` decodes an exported folder through its vae/ with the saved scale
    assert main(["sample", "--checkpoint", str(tmp_path / "out"), "--labels", "1", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "grid.png")]) == 0
    from patchforcing.autoencoder import latent_decoder

    decoder = latent_decoder(tmp_path / "out")
    assert decoder.scale_factor == SCALE and decoder.vae_name == str(tmp_path / "out" / "vae")


def test_bad_export_flags_are_one_line_errors(exported, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(exported / "run"), "--out", str(tmp_path / "busy")]) == 1
    assert "other files" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(exported / "run"), "--out", str(tmp_path / "o"), "--eval", str(tmp_path)]) == 1
    assert "no readable metrics.json" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert "no checkpoint at" in capsys.readouterr().err


def test_text_network_file_exports_with_its_encoder_and_a_prompt_snippet(tmp_path, monkeypatch):
    from patchforcing.models import T2IConfig, create_model
    from patchforcing.text import load_text_encoder, text_condition

    torch.manual_seed(0)
    net = create_model(T2IConfig(input_size=8, in_channels=1, depth=2, hidden_dim=32, head_dim=16, mapping_dim=16, mapping_depth=1,
                                 txt_in_dim=64, txt_refiner_dim=32, txt_refiner_head_dim=16, txt_refiner_depth=1,
                                 text_encoder="byte-toy", text_length=16)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    file = pf.save_model(net, tmp_path / "t2i.safetensors")
    assert main(["export", "--checkpoint", str(file), "--out", str(tmp_path / "out"), "--nfe", "6"]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| text encoder | byte-toy |" in card and "No run folder was found" in card and "- text-to-image" in card
    assert "\npipeline_tag: text-to-image\n" in card.split("---\n")[1]
    assert json.loads((tmp_path / "out" / "model_index.json").read_text())["text_encoder"] == "byte-toy"
    monkeypatch.chdir(tmp_path)
    exec(compile(re.search(r"```python\n(.*?)```", card, re.S).group(1), "README.md", "exec"), {})
    assert (tmp_path / "sample.png").is_file()
    pipe = pf.PatchForcingPipeline.from_pretrained(tmp_path / "out")
    pipe.set_progress_bar_config(disable=True)
    got = pipe(prompt=["a bold seven"], guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="latent").images
    g = torch.Generator().manual_seed(0)
    cond = text_condition(load_text_encoder("byte-toy", max_length=16), ["a bold seven"])
    want = pf.sample(net, randn_tensor((1, 1, 8, 8), generator=g), sampler="look-ahead", steps=pf.steps_for_nfe("look-ahead", 6),
                     condition=cond, cfg_scale=2.0, generator=g)
    assert torch.equal(got, want)


def test_global_time_network_exports_with_euler(tmp_path):
    from conftest import make_model

    file = pf.save_model(make_model("sit", dtype=torch.float32), tmp_path / "sit.safetensors")
    assert main(["export", "--checkpoint", str(file), "--out", str(tmp_path / "out"), "--nfe", "4"]) == 0
    assert json.loads((tmp_path / "out" / "model_index.json").read_text())["sampler"] == "euler"
    assert 'sampler="euler", nfe=4' in (tmp_path / "out" / "README.md").read_text()
    pipe = pf.PatchForcingPipeline.from_pretrained(tmp_path / "out")
    assert pipe(class_labels=[0], output_type="latent").steps == 4


def test_export_with_a_schedule_records_it_in_the_pipeline_and_the_card(tmp_path, monkeypatch, capsys):
    from conftest import make_model

    net = make_model(dtype=torch.float32)
    file = pf.save_model(net, tmp_path / "pf.safetensors")
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(file), "--out", str(out), "--nfe", "8", "--schedule", "shift:3.0"]) == 0
    assert json.loads((out / "model_index.json").read_text())["schedule"] == "shift:3"  # canonical spelling
    card = (out / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert 'sampler="look-ahead", nfe=8, schedule="shift:3"' in snippet and "time grid `shift:3`" in card
    pipe = pf.PatchForcingPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    got = pipe(class_labels=[1, 4], generator=torch.Generator().manual_seed(0), output_type="latent")
    plan = pf.SamplingPlan.from_nfe("look-ahead", 8, schedule="shift:3")
    want = pf.sample(net, randn_tensor((2, 3, 8, 8), generator=torch.Generator().manual_seed(0)), plan, labels=torch.tensor([1, 4]))
    assert got.steps == plan.steps and torch.equal(got.images, want)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})  # the card's snippet runs with the schedule it names
    assert (tmp_path / "sample.png").is_file()
    # re-exporting the folder keeps its grid unless --schedule says otherwise
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "again"), "--nfe", "8"]) == 0
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["schedule"] == "shift:3"
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "flat"), "--nfe", "8", "--schedule", "uniform"]) == 0
    assert json.loads((tmp_path / "flat" / "model_index.json").read_text())["schedule"] == "uniform"
    assert "schedule=" not in re.search(r"```python\n(.*?)```", (tmp_path / "flat" / "README.md").read_text(), re.S).group(1)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(file), "--out", str(tmp_path / "bad"), "--schedule", "cosine"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown schedule 'cosine'; choose uniform, shift:ALPHA") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("is_text, num_classes, task, tag", [
    (True, 0, "text-to-image", "text-to-image"),
    (False, 10, None, "class-conditional-image-generation"),
    (False, 0, "unconditional-image-generation", "unconditional-image-generation"),
])
def test_the_cards_hub_task_says_what_the_network_does(is_text, num_classes, task, tag):
    from types import SimpleNamespace

    from patchforcing.hub.model_card import hub_task

    got, tags = hub_task(SimpleNamespace(is_text=is_text, num_classes=num_classes))
    assert got == task and tag in tags
