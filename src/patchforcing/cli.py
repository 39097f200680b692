"""Kept for ``from patchforcing.cli import main``: the console script lives in ``patchforcing.commands``."""

from patchforcing.commands import build_parser, main

__all__ = ["build_parser", "main"]
