"""The diffusers pipeline: its images are ``pf.sample`` on diffusers' noise (then the VAE decode),
exactly, for class-conditional, latent and text networks; save/load round trips offline."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import patchforcing as pf
from conftest import make_model, make_vae
from patchforcing.autoencoder import decode_latents
from patchforcing.errors import CheckpointError, ConfigError, ShapeError
from patchforcing.models import T2IConfig, create_model
from patchforcing.sampling import time_grid
from patchforcing.text import load_text_encoder, text_condition

diffusers = pytest.importorskip("diffusers")
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

from patchforcing.hub.transformer import PatchForcingTransformerModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def pipeline(net, **kwargs) -> pf.PatchForcingPipeline:
    pipe = pf.PatchForcingPipeline(PatchForcingTransformerModel.from_network(net), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(net, batch: int, seed: int, sampler: str, steps: int, **kwargs) -> torch.Tensor:
    """What the pipeline must return: ``pf.sample`` on one ``randn_tensor`` of the batch."""
    cfg = net.config
    g = torch.Generator().manual_seed(seed)
    noise = randn_tensor((batch, cfg.in_channels, cfg.input_size, cfg.input_size), generator=g, dtype=next(net.parameters()).dtype)
    return pf.sample(net, noise, sampler=sampler, steps=steps, generator=g, **kwargs)


@pytest.mark.parametrize("sampler", ["euler-pf", "dual-loop", "look-ahead", "random-look-ahead"])
def test_class_conditional_images_equal_sample_on_the_same_noise(sampler):
    net = make_model(dtype=torch.float32)
    pipe = pipeline(net)
    out = pipe(class_labels=[0, 3, 4], nfe=8, sampler=sampler, guidance_scale=2.0, guidance_interval=(0.2, 0.8),
               generator=torch.Generator().manual_seed(5), output_type="latent")
    steps = pf.steps_for_nfe(sampler, 8)
    want = reference(net, 3, 5, sampler, steps, labels=torch.tensor([0, 3, 4]), cfg_scale=2.0, guidance_interval=(0.2, 0.8))
    assert torch.equal(out.images, want) and out.steps == steps and out.nfe == pf.expected_nfe(sampler, steps)
    pt = pipe(class_labels=[0, 3, 4], nfe=8, sampler=sampler, guidance_scale=2.0, guidance_interval=(0.2, 0.8),
              generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert torch.equal(pt, (want.clamp(-1, 1) + 1) / 2)


def test_output_types_and_steps_or_budget():
    net = make_model(dtype=torch.float32)
    pipe = pipeline(net, sampler="dual-loop", nfe=8, sampler_options={"n_inner": 2, "context_ratio": 1.5})
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    latent = pipe(class_labels=[1, 2], generator=g(), output_type="latent")
    assert latent.steps == 4 and latent.nfe == 8  # the saved budget, with the saved n_inner (context_ratio is look-ahead's)
    images = pipe(class_labels=[1, 2], generator=g()).images
    expected = ((latent.images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert [im.mode for im in images] == ["RGB", "RGB"] and (np.asarray(images[1]) == expected[1]).all()
    arr = pipe(class_labels=[1, 2], generator=g(), output_type="np").images
    assert arr.shape == (2, 8, 8, 3) and 0 <= arr.min() and arr.max() <= 1
    two = pipe(class_labels=[1, 2], num_inference_steps=2, generator=g(), output_type="latent", return_dict=False)
    assert isinstance(two, tuple) and not torch.equal(two[0], latent.images)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]  # one generator per image: an image does not depend on its batch
    pair = pipe(class_labels=[1, 2], generator=gens, output_type="latent", sampler="look-ahead").images
    alone = pipe(class_labels=[2], generator=[torch.Generator().manual_seed(8)], output_type="latent", sampler="look-ahead").images
    assert torch.allclose(pair[1:], alone, atol=1e-5)


def test_progress_bar_counts_network_evaluations():
    pipe = pipeline(make_model(dtype=torch.float32))
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, disable=False)
    pipe(class_labels=[0], nfe=10, sampler="look-ahead", output_type="latent")
    assert "9/9" in stream.getvalue()  # look-ahead: 9 network calls fit a budget of 10


def test_a_progress_bar_that_reports_a_refresh_never_replaces_the_output(monkeypatch):
    """tqdm's ``update`` returns True when it redraws: the tick must not become the network's output."""
    import contextlib

    class Redrawing:
        def update(self, n: int = 1) -> bool:
            return True

    pipe = pipeline(make_model(dtype=torch.float32))
    monkeypatch.setattr(pipe, "progress_bar", lambda total=None: contextlib.nullcontext(Redrawing()))
    noise = pipe.prepare_noise(2, torch.Generator().manual_seed(3))
    out = pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(3), output_type="latent", nfe=8).images
    assert torch.equal(out, pf.sample(pipe.network, noise, pipe.plan(nfe=8), labels=torch.tensor([1, 2])))


@pytest.mark.parametrize("call, message", [
    (dict(class_labels=[0], nfe=8, num_inference_steps=4), "not both"),
    (dict(class_labels=[0], sampler="rk4"), "unknown sampler"),
    (dict(class_labels=[9]), r"\[0, 5\)"),
    (dict(), "class_labels"),
    (dict(prompt="a cat"), "text-to-image"),
    (dict(class_labels=[0], output_type="jpeg"), "output_type"),
    (dict(class_labels=[0], nfe=1, sampler="dual-loop"), "budget"),
    (dict(class_labels=[0], schedule="cosine"), "unknown schedule 'cosine'; choose uniform, shift:ALPHA"),
    (dict(class_labels=[0], schedule="edm:0"), "edm needs a finite number > 0"),
])
def test_bad_calls_name_the_fix(call, message):
    pipe = pipeline(make_model(dtype=torch.float32))
    with pytest.raises((ConfigError, ShapeError), match=message):
        pipe(**call)


# --- diffusers' call contract ---------------------------------------------------------------------------------
def test_dit_positional_order_equals_the_keywords():
    """``DiTPipeline.__call__(class_labels, guidance_scale, generator, num_inference_steps, output_type, return_dict)``."""
    pipe = pipeline(make_model(dtype=torch.float32))
    by_position = pipe([1, 2], 2.0, torch.Generator().manual_seed(3), 4, "latent", False)
    by_name = pipe(class_labels=[1, 2], guidance_scale=2.0, generator=torch.Generator().manual_seed(3), num_inference_steps=4,
                   output_type="latent", return_dict=False)
    assert isinstance(by_position, tuple) and torch.equal(by_position[0], by_name[0])
    assert pipe.num_timesteps == 4


@pytest.mark.parametrize("sampler, steps, nfe", [("look-ahead", 50, 97), ("dual-loop", 4, 16), ("euler-pf", 6, 6)])
def test_num_inference_steps_counts_outer_steps(sampler, steps, nfe):
    pipe = pipeline(make_model(dtype=torch.float32))
    out = pipe(class_labels=[0], num_inference_steps=steps, sampler=sampler, output_type="latent")
    assert (out.steps, out.nfe) == (steps, nfe)
    budget = pipe(class_labels=[0], nfe=nfe, sampler=sampler, output_type="latent")  # the budget form: the same plan
    assert (budget.steps, budget.nfe) == (steps, nfe)


@pytest.mark.parametrize("sampler", ["euler-pf", "dual-loop", "look-ahead", "look-ahead-heun"])
def test_callback_on_step_end_sees_each_outer_step_and_may_replace_the_latents(sampler):
    net = make_model(dtype=torch.float32)
    pipe = pipeline(net)
    kw = dict(class_labels=[1, 2], sampler=sampler, num_inference_steps=4, output_type="latent", schedule="edm:3")
    seen = []

    def watch(p, step_index, timestep, callback_kwargs):
        assert p is pipe and set(callback_kwargs) == {"latents"}
        seen.append((step_index, float(timestep), callback_kwargs["latents"].clone()))
        return callback_kwargs

    out = pipe(**kw, generator=torch.Generator().manual_seed(6), callback_on_step_end=watch,
               callback_on_step_end_tensor_inputs=["latents"])
    plain = pipe(**kw, generator=torch.Generator().manual_seed(6))
    assert torch.equal(out.images, plain.images)  # handing the latents back unchanged changes nothing
    assert [k for k, _, _ in seen] == list(range(pipe.num_timesteps)) == [0, 1, 2, 3]
    assert [t for _, t, _ in seen] == time_grid(4, "edm:3")[:-1].tolist()  # t_k: the grid time each step started from
    assert torch.equal(seen[-1][2], plain.images)

    def zero_last(p, step_index, timestep, callback_kwargs):  # diffusers' test_callback_inputs does this
        if step_index == p.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    assert pipe(**kw, generator=torch.Generator().manual_seed(6), callback_on_step_end=zero_last).images.abs().sum() == 0

    def shift_first(p, step_index, timestep, callback_kwargs):
        return {"latents": callback_kwargs["latents"] + 1.0} if step_index == 0 else {}

    shifted = pipe(**kw, generator=torch.Generator().manual_seed(6), callback_on_step_end=shift_first).images
    assert (shifted - plain.images).abs().max() > 0.1  # the rest of the run continued from the replaced latents


def test_diffusers_pipeline_callback_objects_work():
    from diffusers.callbacks import PipelineCallback

    class Record(PipelineCallback):
        tensor_inputs = ["latents"]

        def __init__(self):
            super().__init__(cutoff_step_ratio=None, cutoff_step_index=1)
            self.steps = []

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.steps.append(step_index)
            return callback_kwargs

    pipe, record = pipeline(make_model(dtype=torch.float32)), Record()
    pipe(class_labels=[0], num_inference_steps=3, output_type="latent", callback_on_step_end=record)
    assert record.steps == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"can read \['latents'\] only"):
        pipe(class_labels=[0], num_inference_steps=3, callback_on_step_end=lambda *a: {},
             callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_latents_start_the_run():
    net = make_model(dtype=torch.float32)
    pipe = pipeline(net)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    out = pipe(class_labels=[1, 2], latents=noise, generator=torch.Generator().manual_seed(123), num_inference_steps=4,
               sampler="euler-pf", output_type="latent").images  # the generator draws no noise when latents are given
    assert torch.equal(out, pf.sample(net, noise, sampler="euler-pf", steps=4, labels=torch.tensor([1, 2])))
    drawn = pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(123), num_inference_steps=4, sampler="euler-pf",
                 output_type="latent").images
    assert (drawn - out).abs().max() > 1e-3
    with pytest.raises(ShapeError, match=r"latents has shape \(1, 3, 8, 8\); this call makes 2 images"):
        pipe(class_labels=[1, 2], latents=noise[:1])


def test_an_unknown_keyword_is_named_as_a_pipeline_argument():
    pipe = pipeline(make_model(dtype=torch.float32))
    with pytest.raises(ConfigError, match=r"unknown pipeline argument\(s\) 'num_steps'; PatchForcingPipeline takes class_labels, "
                                          r"guidance_scale, generator, num_inference_steps"):
        pipe(class_labels=[0], num_steps=4)
    with pytest.raises(ConfigError, match="sampler 'euler-pf' has no option"):  # a real option, of another sampler
        pipe(class_labels=[0], sampler="euler-pf", n_inner=2)


def test_save_and_load_round_trip_offline(tmp_path):
    net = make_model(dtype=torch.float32)
    pipe = pipeline(net, sampler="euler-pf", nfe=6, guidance_scale=1.5, guidance_interval=(0.1, 0.9))
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = pf.PatchForcingPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.guidance_interval == [0.1, 0.9] and loaded.config.sampler == "euler-pf"
    kw = dict(class_labels=[0, 1], generator=torch.Generator().manual_seed(2), output_type="latent")
    assert torch.equal(loaded(**kw).images, pipe(**{**kw, "generator": torch.Generator().manual_seed(2)}).images)
    assert torch.equal(pf.load_model(tmp_path / "pipe").pos_embed, net.pos_embed)  # load_model reads the folder too
    assert all(torch.equal(a, b) for a, b in zip(pf.load_model(tmp_path / "pipe").state_dict().values(), net.state_dict().values(), strict=False))


@pytest.mark.parametrize("sampler, budget", [("look-ahead", dict(nfe=8)), ("dual-loop", dict(num_inference_steps=3))])
def test_schedule_gives_the_images_of_sample_on_that_grid(sampler, budget):
    net = make_model(dtype=torch.float32)
    pipe = pipeline(net)
    kw = dict(class_labels=[0, 3], sampler=sampler, generator=torch.Generator().manual_seed(5), output_type="latent", **budget)
    out = pipe(**kw, schedule="shift:3")
    plan = (pf.SamplingPlan.from_nfe(sampler, 8, schedule="shift:3") if "nfe" in budget
            else pf.SamplingPlan(sampler, 3, schedule="shift:3"))
    noise = pipe.prepare_noise(2, torch.Generator().manual_seed(5))
    want = pf.sample(net, noise, plan, labels=torch.tensor([0, 3]))
    assert plan.schedule == "shift:3" and torch.equal(out.images, want)
    assert out.steps == plan.steps and out.nfe == plan.nfe
    uniform = pipe(**{**kw, "generator": torch.Generator().manual_seed(5)})
    assert (uniform.images - out.images).abs().max() > 1e-4  # the grid changes the images
    assert torch.equal(uniform.images, pipe(**{**kw, "generator": torch.Generator().manual_seed(5)}, schedule="uniform").images)


def test_saved_schedule_is_the_default_and_round_trips(tmp_path):
    net = make_model(dtype=torch.float32)
    pipe = pipeline(net, nfe=8, schedule="edm:7.0")
    assert pipe.config.schedule == "edm:7" and pipe.plan().schedule == "edm:7"  # canonical spelling, used by default
    kw = dict(class_labels=[1, 2], output_type="latent")
    saved_default = pipe(**kw, generator=torch.Generator().manual_seed(2)).images
    noise = pipe.prepare_noise(2, torch.Generator().manual_seed(2))
    assert torch.equal(saved_default, pf.sample(net, noise, pf.SamplingPlan.from_nfe("look-ahead", 8, schedule="edm:7"),
                                                labels=torch.tensor([1, 2])))
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["schedule"] == "edm:7"
    loaded = pf.PatchForcingPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.schedule == "edm:7"
    assert torch.equal(loaded(**kw, generator=torch.Generator().manual_seed(2)).images, saved_default)
    uniform = loaded(**kw, generator=torch.Generator().manual_seed(2), schedule="uniform").images  # a call overrides it
    assert not torch.equal(uniform, saved_default)
    # a folder saved before the schedule was a setting: no key in model_index.json -> the uniform grid
    del index["schedule"]
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    old = pf.PatchForcingPipeline.from_pretrained(tmp_path / "pipe")
    old.set_progress_bar_config(disable=True)
    assert old.config.schedule == "uniform" and old.plan().schedule == "uniform"
    assert torch.equal(old(**kw, generator=torch.Generator().manual_seed(2)).images, uniform)


def test_bad_saved_schedule_names_the_valid_forms(tmp_path):
    net = make_model(dtype=torch.float32)
    with pytest.raises(ConfigError, match="choose uniform, shift:ALPHA .* or edm:RHO"):
        pipeline(net, schedule="shift")
    pipeline(net).save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({**index, "schedule": "cosine"}))
    with pytest.raises(ConfigError, match="unknown schedule 'cosine'"):
        pf.PatchForcingPipeline.from_pretrained(tmp_path / "pipe")


def test_float64_network_keeps_its_weights_exact():
    net = make_model()  # float64
    component = PatchForcingTransformerModel.from_network(net)
    assert component.dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(component.network.state_dict().values(), net.state_dict().values(), strict=False))


def test_latent_network_decodes_through_its_vae_and_saves_it(tmp_path):
    net = make_model(dtype=torch.float32, in_channels=4)
    vae = make_vae()
    pipe = pipeline(net, vae=vae, latent_scale=0.5, latent_shift=0.1)
    out = pipe(class_labels=[0, 1], nfe=6, sampler="look-ahead", generator=torch.Generator().manual_seed(3), output_type="pt")
    x = reference(net, 2, 3, "look-ahead", pf.steps_for_nfe("look-ahead", 6), labels=torch.tensor([0, 1]))
    want = (decode_latents(vae, x, 0.5, 0.1) + 1) / 2
    assert out.images.shape == (2, 3, 16, 16) and torch.equal(out.images, want)
    pipe.save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "vae" / "config.json").is_file()
    loaded = pf.PatchForcingPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    again = loaded(class_labels=[0, 1], nfe=6, sampler="look-ahead", generator=torch.Generator().manual_seed(3), output_type="pt")
    assert torch.equal(again.images, want)
    with pytest.raises(ConfigError, match="output_type='latent'"):
        pipeline(net)(class_labels=[0], nfe=2)  # 4-channel latents without a VAE cannot be shown


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "t5"
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    t5.save_pretrained(folder)
    transformers.ByT5Tokenizer().save_pretrained(folder)
    return folder


def make_t2i(encoder: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_model(T2IConfig(input_size=8, in_channels=1, depth=2, hidden_dim=32, head_dim=16, mapping_dim=16, mapping_depth=1,
                                 txt_in_dim=32, txt_refiner_dim=32, txt_refiner_head_dim=16, txt_refiner_depth=1,
                                 text_encoder=encoder, text_length=16))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_text_network_takes_prompts_through_its_recorded_t5(tiny_t5, tmp_path):
    net = make_t2i(str(tiny_t5))
    pipe = pipeline(net)
    prompts = ["a bold seven", "a thin two"]
    out = pipe(prompt=prompts, nfe=8, sampler="look-ahead", guidance_scale=2.0, generator=torch.Generator().manual_seed(4),
               output_type="latent")
    cond = text_condition(load_text_encoder(str(tiny_t5), max_length=16), prompts)
    want = reference(net, 2, 4, "look-ahead", pf.steps_for_nfe("look-ahead", 8), condition=cond, cfg_scale=2.0)
    assert torch.equal(out.images, want)
    negative = pipe(prompt=prompts, negative_prompt="blurry", nfe=8, sampler="look-ahead", guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(4), output_type="latent").images
    assert (negative - want).abs().max() > 1e-4  # the negative prompt replaces the empty prompt as the null
    pipe.save_pretrained(tmp_path / "t2i")
    loaded = pf.PatchForcingPipeline.from_pretrained(tmp_path / "t2i")
    loaded.set_progress_bar_config(disable=True)
    again = loaded(prompt=prompts, nfe=8, sampler="look-ahead", guidance_scale=2.0, generator=torch.Generator().manual_seed(4),
                   output_type="latent")
    assert torch.equal(again.images, want)
    with pytest.raises(ConfigError, match="prompt="):
        pipe(class_labels=[1])
    first = pipe(prompts, 2.0, torch.Generator().manual_seed(4), pf.steps_for_nfe("look-ahead", 8), "latent", False)[0]
    assert torch.equal(first, want)  # a text pipeline takes its prompt first, as diffusers' text pipelines do


def test_hub_id_from_the_local_cache_or_one_error(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))  # an empty cache of our own
    with pytest.raises(CheckpointError, match="hf download someone/pf-digits"):
        pf.PatchForcingPipeline.from_pretrained("someone/pf-digits")
    with pytest.raises(CheckpointError, match="hf download someone/pf-digits"):
        pf.load_model("someone/pf-digits")
    net = make_model(dtype=torch.float32)
    snapshot = tmp_path / "cache" / "models--someone--pf-digits" / "snapshots" / ("0" * 40)
    pipeline(net).save_pretrained(snapshot)  # what `hf download` leaves in the cache
    (tmp_path / "cache" / "models--someone--pf-digits" / "refs").mkdir()
    (tmp_path / "cache" / "models--someone--pf-digits" / "refs" / "main").write_text("0" * 40)
    loaded = pf.PatchForcingPipeline.from_pretrained("someone/pf-digits")
    assert all(torch.equal(a, b) for a, b in zip(loaded.network.state_dict().values(), net.state_dict().values(), strict=False))
    assert all(torch.equal(a, b) for a, b in zip(pf.load_model("someone/pf-digits").state_dict().values(), net.state_dict().values(), strict=False))


def test_only_owner_slash_name_is_taken_for_a_hub_id(tmp_path, monkeypatch):
    from patchforcing.hub.folder import looks_like_hub_id

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    assert looks_like_hub_id("someone/pf-digits") and not looks_like_hub_id("runs/digits")  # an existing folder is a path
    assert not looks_like_hub_id("runs/model.pt") and not looks_like_hub_id("a/b/c") and not looks_like_hub_id("model")
    with pytest.raises(CheckpointError, match="no checkpoint at 'runs/model.pt'") as err:
        pf.load_model("runs/model.pt")
    assert "huggingface-cli" not in str(err.value)


def test_unconditional_network_takes_a_count():
    net = make_model(dtype=torch.float32, num_classes=0)
    out = pipeline(net)(num_images_per_prompt=2, nfe=6, generator=torch.Generator().manual_seed(1), output_type="latent")
    assert torch.equal(out.images, reference(net, 2, 1, "look-ahead", pf.steps_for_nfe("look-ahead", 6)))
