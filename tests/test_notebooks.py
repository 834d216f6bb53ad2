"""Every notebook is calls and displays: its logic lives in the package, where it is tested (issue 18)."""

import ast
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))
#: Statement-level control flow a notebook may hold (comprehensions and ``a if c else b`` do not count).
MAX_CONTROL_FLOW = 3
CONTROL_FLOW = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.Try, ast.With, ast.AsyncWith,
                *((ast.TryStar,) if hasattr(ast, "TryStar") else ()))


def control_flow(source: str) -> list[tuple[str, int]]:
    """(statement, line) of every ``for``/``while``/``if``/``try``/``with`` statement, nested ones included."""
    return [(type(node).__name__, node.lineno) for node in ast.walk(ast.parse(source))
            if isinstance(node, CONTROL_FLOW)]


def test_the_counter_counts_statements_not_expressions():
    source = ("if a:\n    for x in y:\n        pass\nelif b:\n    pass\n"
              "try:\n    pass\nexcept E:\n    pass\nwith f:\n    pass\nwhile 0:\n    pass\n"
              "z = [x for x in y if x]\nw = 1 if a else 2\n")
    assert [kind for kind, _ in control_flow(source)] == ["If", "Try", "With", "While", "For", "If"]


def test_notebooks_are_found():
    assert {p.stem for p in NOTEBOOKS} >= {"00_summary", "07_survival", "08_validation", "train_model"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_holds_at_most_three_control_flow_statements(path):
    found = control_flow(path.read_text())
    assert len(found) <= MAX_CONTROL_FLOW, (
        f"{path.name} has {len(found)} control-flow statements {found}: move the logic into prrt_utils")
