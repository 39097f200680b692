"""Text encoders (docs/method.md §9.1): the bundled toy, Hugging Face models built offline, caching, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from patchforcing.errors import CheckpointError, ConfigError, ShapeError
from patchforcing.text import ByteToyEncoder, check_encoder_fits, load_text_encoder, text_condition

pytestmark = pytest.mark.usefixtures("one_thread")


def test_toy_encoder_is_deterministic_padded_truncated_and_cached():
    enc = load_text_encoder("byte-toy")
    assert isinstance(enc, ByteToyEncoder) and (enc.dim, enc.max_length) == (64, 32)
    states = enc.encode(["a bold seven", "a thin seven", "x" * 100])
    assert states.shape == (3, 32, 64) and states.dtype == torch.float32
    assert torch.equal(states, ByteToyEncoder().encode(["a bold seven", "a thin seven", "x" * 100]))  # same everywhere
    assert (states[0] - states[1]).abs().max() > 0.1
    assert torch.equal(enc.tokenize(["x" * 100]), enc.tokenize(["x" * 32]))  # truncated to max_length
    empty = enc.encode([""])[0]
    assert torch.equal(empty, empty[:1].expand_as(empty))  # all padding
    before = enc.cache.hits
    again = enc.encode(["a thin seven", "a bold seven", "a bold seven"])
    assert enc.cache.hits - before == 2 and torch.equal(again[2], states[0])  # repeated captions are not re-encoded


def test_text_condition_uses_the_empty_prompt_as_null():
    enc = load_text_encoder("byte-toy", max_length=8)
    cond = text_condition(enc, ["one", "two"])
    assert cond.value.shape == (2, 8, 64) and cond.null.shape == (2, 8, 64)
    assert torch.equal(cond.null[1], enc.encode([""])[0])
    with pytest.raises(ConfigError, match="list of captions"):
        enc.encode("one")


def test_encoder_width_must_fit_the_network():
    from test_t2i_model import make_t2i

    with pytest.raises(ShapeError, match="txt_in_dim=24"):
        check_encoder_fits(load_text_encoder("byte-toy"), make_t2i())


@pytest.fixture(scope="module")
def tiny_hf_models(tmp_path_factory):
    """A 2-layer T5 encoder and a 2-layer decoder-only Qwen2 with the file-less ByT5 tokenizer, saved offline."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tok = transformers.ByT5Tokenizer()
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4))
    t5.save_pretrained(root / "t5")
    tok.save_pretrained(root / "t5")
    qwen = transformers.Qwen2Model(transformers.Qwen2Config(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                            num_attention_heads=4, num_key_value_heads=2))
    qwen.save_pretrained(root / "qwen")
    tok.save_pretrained(root / "qwen")
    return root, t5.eval(), qwen.eval(), tok


def test_t5_folder_runs_its_encoder_with_max_length_padding(tiny_hf_models):
    root, t5, _, tok = tiny_hf_models
    enc = load_text_encoder(str(root / "t5"), max_length=16)
    assert enc.dim == 32 and not any(p.requires_grad for p in enc.model.parameters())
    captions = ["a bold seven", "the digit 7, thin and slanted to the right"]
    states = enc.encode(captions)
    assert states.shape == (2, 16, 32)
    batch = tok(captions, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = t5(**batch).last_hidden_state
    torch.testing.assert_close(states, want, atol=1e-5, rtol=1e-5)
    assert (states[0, 13:] - states[0, 12]).abs().max() > 0  # padding positions are kept, not zeroed


def test_decoder_only_folder_gives_its_last_hidden_state(tiny_hf_models):
    root, _, qwen, _ = tiny_hf_models
    enc = load_text_encoder(str(root / "qwen"), max_length=12)
    states = enc.encode(["seven"])
    batch = enc.tokenize(["seven"])  # transformers picks the model type's own tokenizer class here
    assert batch["input_ids"].shape == (1, 12)
    with torch.no_grad():
        want = qwen(**batch).last_hidden_state
    assert states.shape == (1, 12, 32)
    torch.testing.assert_close(states, want, atol=1e-5, rtol=1e-5)


def test_missing_model_offline_names_the_model_and_how_to_get_it(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"Qwen/Qwen3-VL-Embedding-2B.*hf download"):
        load_text_encoder("qwen3-vl-embedding-2b")


def test_core_and_toy_encoder_work_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import patchforcing, patchforcing.text as t\n"
        "assert t.load_text_encoder('byte-toy').encode(['hi']).shape == (1, 32, 64)\n"
        "try:\n    t.load_text_encoder('some/model')\nexcept patchforcing.ConfigError as e:\n    print('OK', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "patchforcing[hf]" in out.stdout


def test_presets_name_the_exact_models_and_dtypes(monkeypatch):
    """Ours and the authors' T5/CLIP choices, each by its exact id and dtype, passed through to the loader."""
    import patchforcing.text as text

    table = {name: (p.source, p.max_length, p.dtype) for name, p in text.TEXT_ENCODERS.items()}
    assert table["t5-xxl"] == ("google/t5-v1_1-xxl", 512, torch.bfloat16)
    assert table["t5-xxl-authors"] == ("google/t5-xxl-lm-adapt", 512, torch.bfloat16)
    assert table["clip-l"] == ("openai/clip-vit-large-patch14", 77, torch.float32)
    assert table["clip-l-authors"] == ("openai/clip-vit-large-patch14", 77, torch.bfloat16)
    assert table["qwen3-vl-embedding-2b"] == ("Qwen/Qwen3-VL-Embedding-2B", 256, torch.bfloat16)
    assert all(p.note for p in text.TEXT_ENCODERS.values())
    seen = {}
    monkeypatch.setattr(text, "HFTextEncoder", lambda source, length, **kw: seen.update(source=source, length=length, **kw))
    text.load_text_encoder("clip-l-authors")
    assert (seen["source"], seen["length"], seen["dtype"]) == ("openai/clip-vit-large-patch14", 77, torch.bfloat16)
    text.load_text_encoder("t5-xxl-authors", max_length=128, dtype=torch.float32)
    assert (seen["source"], seen["length"], seen["dtype"]) == ("google/t5-xxl-lm-adapt", 128, torch.float32)
