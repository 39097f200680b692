"""Frozen text encoders: captions -> states (B, L, D) for the text-to-image network (docs/method.md §9.1).

Two kinds:
    * ``HFTextEncoder``: any Hugging Face ``transformers`` model from a local folder or the local
      cache. Captions are tokenised as-is with ``padding="max_length"`` and truncation (always
      ``L = max_length`` tokens); the states are the ``last_hidden_state`` of the whole padded
      sequence (padding positions included, as the reference feeds them to the network).
      Encoder-decoder models (T5) run their encoder only; vision-language models (Qwen3-VL) their
      text model only; decoder-only models give their last hidden state.
    * ``ByteToyEncoder``: a fixed, untrained byte-level embedding that ships with the package and
      needs no download. It is a TOY for CPU demos and tests: it knows nothing about language
      beyond which bytes (and byte trigrams) appear where.

Every encoder keeps the states of recently seen captions (``EncodingCache``), so repeated
captions in training, and the empty prompt used for guidance, are encoded once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from patchforcing.errors import CheckpointError, ConfigError


class EncodingCache:
    """Least-recently-used map caption -> states (L, D) on the CPU, bounded in bytes."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, caption: str) -> Tensor | None:
        states = self._items.get(caption)
        if states is None:
            self.misses += 1
            return None
        self._items.move_to_end(caption)
        self.hits += 1
        return states

    def put(self, caption: str, states: Tensor) -> None:
        size = states.numel() * states.element_size()
        if size > self.max_bytes or caption in self._items:
            return
        self._items[caption] = states
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()

    def __len__(self) -> int:
        return len(self._items)


class TextEncoder:
    """Base class: ``encode(captions) -> (B, L, D)`` float32 states, frozen, cached per caption."""

    name: str
    dim: int
    max_length: int

    def __init__(self, cache_bytes: int = 512 * 2**20):
        self.cache = EncodingCache(cache_bytes)

    def _encode_batch(self, captions: list[str]) -> Tensor:  # (B, L, D)
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, captions: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        """States of ``captions`` (B, L, D), float32, on ``device`` (default: the CPU).

        Captions already in the cache are not encoded again; the rest go through the encoder in
        one batch.
        """
        if isinstance(captions, str):
            raise ConfigError("encode takes a list of captions; wrap a single prompt as [prompt]")
        captions = [str(c) for c in captions]
        found = {c: self.cache.get(c) for c in dict.fromkeys(captions)}
        todo = [c for c, states in found.items() if states is None]
        if todo:
            for caption, states in zip(todo, self._encode_batch(todo).float().cpu(), strict=False):
                found[caption] = states
                self.cache.put(caption, states)
        if not captions:
            return torch.zeros(0, self.max_length, self.dim, device=device)
        return torch.stack([found[c] for c in captions]).to(device)

    def null_states(self, device: torch.device | str | None = None) -> Tensor:
        """The empty-prompt states (1, L, D): the null condition of guidance and text dropout."""
        return self.encode([""], device)


# --- the toy encoder ------------------------------------------------------------------------------
class ByteToyEncoder(TextEncoder):
    """A fixed byte-level embedding (a toy; no download, no training, deterministic everywhere).

    Caption bytes (UTF-8, truncated to ``max_length``; 0 pads) are embedded by a seeded random
    table, plus a seeded random vector for the trigram ending at each byte (a cheap hint of word
    pieces). States ``(B, max_length, dim)``; the empty prompt is all padding.
    """

    TRIGRAMS = 4096

    def __init__(self, dim: int = 64, max_length: int = 32, seed: int = 0, cache_bytes: int = 512 * 2**20):
        super().__init__(cache_bytes)
        self.name, self.dim, self.max_length = "byte-toy", dim, max_length
        g = torch.Generator().manual_seed(seed)
        self.bytes_table = torch.randn(257, dim, generator=g, dtype=torch.float64).float()  # row 0: padding
        self.trigram_table = 0.5 * torch.randn(self.TRIGRAMS, dim, generator=g, dtype=torch.float64).float()

    def tokenize(self, captions: list[str]) -> Tensor:
        """(B, max_length) long: byte + 1, 0 for padding."""
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.long)
        for i, caption in enumerate(captions):
            raw = list(caption.encode("utf-8"))[: self.max_length]
            ids[i, : len(raw)] = torch.tensor(raw, dtype=torch.long) + 1
        return ids

    def _encode_batch(self, captions: list[str]) -> Tensor:
        ids = self.tokenize(captions)  # (B, L)
        prev1 = torch.nn.functional.pad(ids, (1, 0))[:, :-1]
        prev2 = torch.nn.functional.pad(ids, (2, 0))[:, :-2]
        trigram = (ids * 65_537 + prev1 * 257 + prev2) % self.TRIGRAMS
        return self.bytes_table[ids] + self.trigram_table[trigram]  # (B, L, D)


# --- Hugging Face encoders ------------------------------------------------------------------------
def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "Hugging Face text encoders need the `transformers` package: pip install 'patchforcing[hf]' "
            "(or use the bundled toy encoder, --text-encoder byte-toy)"
        ) from None
    return transformers


def _text_part(model):
    """The module whose ``last_hidden_state`` we use: the encoder of encoder-decoder models, the
    text (language) model of vision-language models, the model itself otherwise."""
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        return model.get_encoder()
    for path in ("language_model", "model.language_model", "text_model"):
        part = model
        for attr in path.split("."):
            part = getattr(part, attr, None)
        if part is not None:
            return part
    return model


class HFTextEncoder(TextEncoder):
    """A frozen Hugging Face model and its tokenizer, loaded from a folder or the local cache."""

    def __init__(self, source: str, max_length: int, *, name: str | None = None, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, local_only: bool = True, cache_bytes: int = 512 * 2**20):
        super().__init__(cache_bytes)
        transformers = _require_transformers()
        self.name, self.max_length, self.source = name or source, int(max_length), source
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local_only)
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=local_only)
            model_cls = transformers.AutoModel
            if config.model_type in ("t5", "mt5", "umt5"):  # skip the decoder weights entirely
                model_cls = getattr(transformers, {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}[config.model_type])
            model = model_cls.from_pretrained(source, local_files_only=local_only, dtype=dtype)
        except (OSError, ValueError) as err:
            raise CheckpointError(
                f"text encoder {self.name!r} ({source}) could not be loaded from a local folder or the Hugging Face cache "
                f"({type(err).__name__}: {str(err).splitlines()[0][:160]}). Download it once on a machine with internet "
                f"(`hf download {source}`) and copy the cache, or pass the path "
                "of a local folder holding the model and its tokenizer"
            ) from None
        if self.tokenizer.pad_token is None:  # decoder-only tokenizers may lack one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = _text_part(model).to(device).eval().requires_grad_(False)
        cfg = getattr(self.model, "config", config)
        self.dim = int(getattr(cfg, "hidden_size", None) or cfg.d_model)
        self.device = torch.device(device)

    def tokenize(self, captions: list[str]) -> dict[str, Tensor]:
        """``input_ids`` and ``attention_mask`` (B, max_length): padded to max_length, truncated."""
        return self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt")

    def _encode_batch(self, captions: list[str]) -> Tensor:
        batch = self.tokenize(captions)
        out = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device))
        return out.last_hidden_state  # (B, L, D)
