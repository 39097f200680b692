"""Text conditioning: frozen text encoders, their presets, and prompts -> ``Condition``.

Example:
    >>> import torch, patchforcing as pf
    >>> from patchforcing.text import load_text_encoder, text_condition
    >>> net = pf.load_model("runs/digits-t2i")
    >>> encoder = load_text_encoder(net.config.text_encoder, max_length=net.config.text_length)
    >>> cond = text_condition(encoder, ["a bold seven", "the digit 2, thin"])
    >>> x = pf.sample(net, torch.randn(2, 1, 16, 16), sampler="look-ahead", steps=16, condition=cond, cfg_scale=2.0)

``transformers`` is only imported when a Hugging Face encoder is loaded; the toy encoder and the
rest of the package work without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from patchforcing.conditioning import Condition
from patchforcing.errors import ShapeError
from patchforcing.text.encoders import ByteToyEncoder, EncodingCache, HFTextEncoder, TextEncoder


@dataclass(frozen=True)
class EncoderPreset:
    """A named encoder: where its weights live and its padded length."""

    source: str  # Hugging Face repo id (or "builtin")
    max_length: int
    dtype: torch.dtype = torch.float32
    note: str = ""


TEXT_ENCODERS: dict[str, EncoderPreset] = {
    # The paper's encoder (docs/method.md §9.1): the text model of Qwen3-VL-Embedding-2B, bf16, 256 tokens, D = 2048.
    "qwen3-vl-embedding-2b": EncoderPreset("Qwen/Qwen3-VL-Embedding-2B", 256, torch.bfloat16, "the paper's encoder, D = 2048"),
    "t5-xxl": EncoderPreset("google/t5-v1_1-xxl", 512, torch.bfloat16,
                            "T5 v1.1 XXL encoder (the original pre-training objective), D = 4096"),
    "clip-l": EncoderPreset("openai/clip-vit-large-patch14", 77, torch.float32,
                            "CLIP ViT-L/14 text model in float32, D = 768"),
    # The same families as the authors' code loads them: their T5 is the LM-adapted XXL checkpoint (other
    # weights than T5 v1.1: states from one do not fit a network trained on the other), their CLIP-L runs
    # in bf16. The padded lengths are ours (the authors' lengths are not recorded here).
    "t5-xxl-authors": EncoderPreset("google/t5-xxl-lm-adapt", 512, torch.bfloat16,
                                    "T5 XXL LM-adapted encoder, bf16, as the authors' code loads it, D = 4096"),
    "clip-l-authors": EncoderPreset("openai/clip-vit-large-patch14", 77, torch.bfloat16,
                                    "CLIP ViT-L/14 text model in bf16, as the authors' code runs it, D = 768"),
    # Ships with the package; a toy (fixed byte embeddings), for CPU demos and tests.
    "byte-toy": EncoderPreset("builtin", 32, torch.float32, "bundled toy byte-level encoder, D = 64"),
}


def load_text_encoder(name: str, *, max_length: int | None = None, device: torch.device | str = "cpu",
                      dtype: torch.dtype | None = None) -> TextEncoder:
    """A frozen text encoder by preset name, Hugging Face repo id (from the local cache) or folder path.

    Args:
        name: a key of ``TEXT_ENCODERS`` (``"byte-toy"``, ``"qwen3-vl-embedding-2b"`` ...), a repo
            id such as ``"google/t5-v1_1-small"`` or a local folder with a model and its tokenizer.
        max_length: padded token count ``L`` (defaults to the preset's, else 256).
        device, dtype: where the encoder runs; the states it returns are float32.

    Raises:
        CheckpointError: the model is neither a local folder nor in the cache (names how to get it).
        ConfigError: ``transformers`` is not installed.
    """
    preset = TEXT_ENCODERS.get(name)
    length = int(max_length or (preset.max_length if preset else 256))
    if preset is not None and preset.source == "builtin":
        return ByteToyEncoder(max_length=length)
    source = preset.source if preset else name
    return HFTextEncoder(source, length, name=name, device=device, dtype=dtype or (preset.dtype if preset else torch.float32))


def text_condition(encoder: TextEncoder, prompts: Sequence[str], device: torch.device | str | None = None) -> Condition:
    """Prompts (B) -> ``Condition`` of states (B, L, D) whose null is the empty prompt's encoding."""
    return Condition.from_text(encoder.encode(list(prompts), device), encoder.null_states(device))


def check_encoder_fits(encoder: TextEncoder, model: torch.nn.Module) -> None:
    """The encoder's width must be the network's ``txt_in_dim``."""
    want = model.config.txt_in_dim
    if encoder.dim != want:
        raise ShapeError(
            f"text encoder {encoder.name!r} gives {encoder.dim}-dim states but the network takes txt_in_dim={want}; "
            f"use the encoder the network was trained with ({model.config.text_encoder!r})"
        )


__all__ = [
    "TEXT_ENCODERS",
    "ByteToyEncoder",
    "EncoderPreset",
    "EncodingCache",
    "HFTextEncoder",
    "TextEncoder",
    "check_encoder_fits",
    "load_text_encoder",
    "text_condition",
]
