"""``--help`` of every command: grouped training flags with ``[default: X]``, wrapped prose, no docstring
markup shown to users."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest

from patchforcing.commands import build_parser
from patchforcing.commands.train import FLAG_GROUPS
from patchforcing.training.config import FIELDS

COMMANDS = list(build_parser()._subparsers._group_actions[0].choices)  # every subcommand, new ones included
WIDTH = 100


def _help(command: str, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    buffer = io.StringIO()
    with redirect_stdout(buffer), pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return buffer.getvalue()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_rest_markup_and_wraps_its_prose(command, monkeypatch):
    text = _help(command, monkeypatch)
    assert "``" not in text
    for line in text.splitlines():  # prose is wrapped; only indented examples and the sampler table may run longer
        assert len(line) <= WIDTH or line.startswith("  "), line


def test_train_flags_are_grouped_with_their_defaults(monkeypatch):
    fields = [name for names in FLAG_GROUPS.values() for name in names]
    assert sorted(fields) == sorted(set(FIELDS) - {"preset"}) and len(fields) == len(set(fields))  # each field once
    text = _help("train", monkeypatch)
    for heading in FLAG_GROUPS:
        assert f"\n{heading}:\n" in text
    assert "(digits:" not in text
    assert "[default: 3000]" in text and "[default: PF-XS/2]" in text and "[default: none]" in text
    assert "digits-t2i" in text


def test_time_estimates_agree_with_the_readme_and_name_the_hardware():
    text = " ".join(build_parser().format_help().split())  # each command's one-line help, unwrapped
    assert "about 5 minutes on a 2-core CPU" in text and "10 minutes" not in text
