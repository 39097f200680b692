"""The documentation's table of contents: every page under docs/ is in the site's navigation and in the
"how to navigate" table of its home page, and every link of the README and the home page points at a file
that exists. (``make docs`` builds the site itself, with --strict.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
yaml = pytest.importorskip("yaml")


def _nav_pages(entries) -> list[str]:
    out = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def _links(text: str) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not m.startswith(("http://", "https://", "#"))]


def test_every_page_is_in_the_navigation_and_the_home_table():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages and len(nav) == len(set(nav))
    table = (DOCS / "index.md").read_text().split("## How to navigate the documentation", 1)[1].split("\n## ", 1)[0]
    linked = {link.split("#")[0] for link in _links(table)}
    top_level = {p for p in pages if "/" not in p and p != "index.md"}
    assert linked == top_level  # every chapter is in the table (the generated result pages hang below their chapters)


@pytest.mark.parametrize("page", ["README.md", "docs/index.md", "CONTRIBUTING.md"])
def test_links_point_at_files_that_exist(page):
    path = ROOT / page
    for link in _links(path.read_text()):
        target = (path.parent / link.split("#")[0]).resolve()
        assert target.exists(), f"{page}: {link}"


def test_license_and_citation_agree_with_the_package():
    import patchforcing as pf

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert project["license"] == citation["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert citation["version"] == project["version"] == pf.__version__
    paper = citation["preferred-citation"]
    assert paper["year"] == 2026 and "arxiv.org/abs/2604.19141" in paper["url"]
    assert paper["title"] == "Denoising, Fast and Slow: Difficulty-Aware Adaptive Sampling for Image Generation"


def test_readme_is_a_front_page_whose_snippet_runs(tmp_path, monkeypatch):
    """At most about 150 lines, the two make commands, and the five lines sample and save a picture."""
    import torch

    import patchforcing as pf

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    commands = [line.split("#")[0].strip() for line in text.splitlines()]
    assert "make demo" in commands and "make test" in commands
    assert "this machine" not in text and "https://arxiv.org/abs/2604.19141" in text
    snippet = text.split("## Five lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) == 5
    torch.manual_seed(0)
    tiny = pf.create_model("PF-XS/2", depth=1, hidden_size=32, num_heads=2, input_size=16, in_channels=1, num_classes=10).eval()
    monkeypatch.setattr(pf, "load_model", lambda source: tiny)  # stands in for demo/run
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    from PIL import Image

    assert Image.open(tmp_path / "samples.png").size[0] > 10 * 16  # the ten samples in one picture
