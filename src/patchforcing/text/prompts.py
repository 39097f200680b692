"""Prompts from the command line (``--prompt``, ``--prompts-file``) -> a text ``Condition``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from patchforcing.conditioning import Condition
from patchforcing.errors import ConfigError
from patchforcing.text import check_encoder_fits, load_text_encoder, text_condition


def read_prompts(prompts: Sequence[str] | None, prompts_file: str | None) -> list[str]:
    """``--prompt`` values followed by the non-empty lines of ``--prompts-file`` (UTF-8)."""
    found = list(prompts or [])
    for prompt in found:
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes of another encoding reach Python as lone surrogates
            raise ConfigError(f"--prompt {prompt.encode('utf-8', 'backslashreplace')!r} is not UTF-8 text; "
                              "type the prompt in a UTF-8 terminal, or put it in a UTF-8 --prompts-file") from None
    if prompts_file is not None:
        path = Path(prompts_file)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read --prompts-file {str(path)!r} ({err.strerror}); pass a text file with one prompt per line") from None
        except UnicodeDecodeError as err:
            line = path.read_bytes()[:err.start].count(b"\n") + 1
            raise ConfigError(f"--prompts-file {str(path)!r} is not UTF-8 text (line {line}); save it as UTF-8") from None
        found += [line.strip() for line in text.splitlines() if line.strip()]
    return found


def prompt_condition(model: nn.Module, prompts: list[str], num_samples: int | None, device: torch.device,
                     encoder_name: str | None = None) -> tuple[Condition | None, int]:
    """The condition and sample count of a sampling command.

    For a text network: one sample per prompt (``num_samples`` repeats the prompts cyclically), the
    prompts encoded with the network's recorded encoder (or ``encoder_name``). For a class network
    prompts are an error; returns ``(None, num_samples)`` so the command handles labels as for any class network.
    """
    cfg = model.config
    if not cfg.is_text:
        if prompts:
            raise ConfigError("--prompt/--prompts-file need a text-to-image network; this one is class-conditional: use --labels")
        return None, num_samples
    if not prompts:
        raise ConfigError("this is a text-to-image network: give --prompt \"...\" (repeatable) or --prompts-file FILE")

    n = num_samples if num_samples is not None else len(prompts)
    encoder = load_text_encoder(encoder_name or cfg.text_encoder, max_length=cfg.text_length, device=device)
    check_encoder_fits(encoder, model)
    chosen = [prompts[i % len(prompts)] for i in range(n)]
    return text_condition(encoder, chosen, device), n
