"""The package's shape: no import circles (imports inside functions counted), imports of its own
modules at the top, and ``import patchforcing`` without the optional extras."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import patchforcing
from patchforcing.models import ModelConfig, T2IConfig

ROOT = Path(patchforcing.__file__).parent
# The only imports of the package's own modules left inside functions: each pulls in an optional extra.
LAZY = {
    ("patchforcing", "patchforcing.hub.pipeline"),  # diffusers
    ("patchforcing.commands.hub", "patchforcing.hub.export"),  # diffusers
    ("patchforcing.commands.hub", "patchforcing.app"),  # gradio
}


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def _imports(name: str, path: Path, tree: ast.Module):
    """``(target module, inside a function)`` of every import of the package's own modules."""
    is_pkg = path.name == "__init__.py"
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(c) for f in funcs for c in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bases = [a.name for a in node.names]
            targets = bases
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            ancestor = name == base or name.startswith(base + ".")
            targets = ([] if ancestor else [base]) + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("patchforcing"):
                yield target, id(node) in nested


def test_no_import_circles_counting_imports_inside_functions():
    mods = _modules()
    edges = {m: {t for t, _ in _imports(m, *mods[m]) if t in mods and t != m} for m in mods}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in mods}
    circles = sorted({tuple(sorted([m, t])) for m in mods for t in reachable[m] if m in reachable[t] and t != m})
    assert circles == [], f"import circles between {circles}"


def test_own_modules_are_imported_at_the_top_except_optional_extras():
    mods = _modules()
    inside = {(m, t) for m in mods for t, nested in _imports(m, *mods[m]) if nested and t in mods}
    assert inside <= LAZY, f"move these imports to the top of the module: {sorted(inside - LAZY)}"


def test_the_package_imports_without_the_optional_extras():
    code = ("import sys\n"
            "for name in ('diffusers', 'transformers', 'gradio', 'matplotlib'):\n"
            "    sys.modules[name] = None\n"
            "import patchforcing, patchforcing.commands, patchforcing.report\n"
            "patchforcing.commands.build_parser()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_is_text_is_declared_on_both_network_configs_and_is_not_a_field():
    assert ModelConfig.is_text is False and T2IConfig.is_text is True
    assert "is_text" not in {f.name for f in dataclasses.fields(ModelConfig)}
    assert "is_text" not in {f.name for f in dataclasses.fields(T2IConfig)}
    assert "is_text" not in ModelConfig().to_dict()
