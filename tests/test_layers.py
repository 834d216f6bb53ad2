"""The package shows the pipeline: a stage never imports a later one, analysis never trains, no private name crosses a module.

DESIGN.md draws the stages in the order data flows; the sub-packages of ``prrt_utils`` are those
stages. The checks read the import statements of every module (``ast``), including imports inside
functions, so an import hidden in a function cannot reach backwards either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prrt_utils"
LAYERS = ("io", "data", "synthetic", "models", "analysis", "report")
"""Sub-packages in the order data flows; ``cli`` sits on top and may import any of them."""
TRAINERS = ("prrt_utils.models.training", "prrt_utils.models.crossval", "prrt_utils.models.pretrain",
            "prrt_utils.models.final", "prrt_utils.models.survival")
"""Modules that train; analysis reads what they stored and never imports them."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """``(module, imported names, line)`` of every ``prrt_utils`` import of a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "prrt_utils":
            names = tuple(a.name for a in node.names)
            if node.module in ("prrt_utils",) or node.module in {m.rsplit(".", 1)[0] for m in MODULES}:
                # ``from prrt_utils.data import cohort``: each name is a module
                for n in names:
                    full = f"{node.module}.{n}"
                    found.append((full if full in MODULES else node.module, (), node.lineno))
            else:
                found.append((node.module, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, (), node.lineno) for a in node.names if a.name.split(".")[0] == "prrt_utils"]
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if module == "prrt_utils.cli":
        return len(LAYERS)
    return None  # prrt_utils itself (its version)


def test_every_module_lives_in_a_stage_sub_package():
    loose = [m for m, path in MODULES.items()
             if m.count(".") == 1 and path.name != "__init__.py" and m != "prrt_utils.cli"]
    assert loose == [], f"modules outside the stage sub-packages: {loose}"
    assert {m.split(".")[1] for m in MODULES if m.count(".") >= 1} == {*LAYERS, "cli"}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_a_stage_never_imports_a_later_one(module):
    mine = _layer(module)
    later = [f"line {line}: {target}" for target, _, line in _imports(MODULES[module])
             if (_layer(target) or 0) > mine]
    assert later == [], f"{module} reaches forward: {later}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("prrt_utils.analysis")))
def test_analysis_never_imports_the_trainers(module):
    trains = [f"line {line}: {target}" for target, _, line in _imports(MODULES[module]) if target in TRAINERS]
    assert trains == [], f"{module} imports a module that trains: {trains}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_a_module(module):
    private = [f"line {line}: {target}.{n}" for target, names, line in _imports(MODULES[module])
               for n in names if n.startswith("_") and target != module]
    assert private == [], f"{module} imports private names: {private}"


def test_the_checks_see_a_backward_import(tmp_path):
    """The checker itself: a synthetic module that imports a later stage is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from prrt_utils.report.book import make_book\n    from prrt_utils.models.training import _x\n")
    found = _imports(bad)
    assert ("prrt_utils.report.book", ("make_book",), 2) in found
    assert _layer("prrt_utils.report.book") > _layer("prrt_utils.data.cohort")
    assert any(n.startswith("_") for _, names, _ in found for n in names)


LAZY_ALLOWED = {"prrt_utils.cli"}
"""Modules that may import the package inside functions: the command line loads a stage (and torch)
only for the subcommand that needs it, so that ``prrt --help`` stays quick."""


def _imports_inside_functions(path: Path) -> list[int]:
    lines = []
    for fn in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                mods = [mod] if mod else [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if any(m and m.split(".")[0] == "prrt_utils" for m in mods):
                    lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("module", sorted(set(MODULES) - LAZY_ALLOWED))
def test_the_package_imports_itself_at_module_top_so_the_graph_is_visible(module: str) -> None:
    lines = _imports_inside_functions(MODULES[module])
    assert not lines, f"{module}: prrt_utils imported inside a function at lines {lines}; import it at the top"


def test_the_inside_function_check_finds_an_import_hidden_in_a_function(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from prrt_utils.io import store\n    return store\n")
    assert _imports_inside_functions(src) == [4]
