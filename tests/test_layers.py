"""The house's layers: no module imports from a layer above it.

Commands (``lk_segment/commands``, the study and compare in ``lk_segment/comparison``, the bench in
``lk_segment/bench``) sit on the library; the library never imports them, and the model's parts (``ops``,
``blocks``, ``data``) import nothing from the bench. Read from the source (``ast``), imports inside
functions included, so a lazy import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lk_segment"
COMMANDS = ("lk_segment.commands", "lk_segment.comparison", "lk_segment.bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every lk_segment module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("lk_segment")}


def under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


MODULES = sorted(PACKAGE.rglob("*.py"))
LIBRARY = [p for p in MODULES if not under(module_name(p), COMMANDS) and module_name(p) != "lk_segment.__main__"]


def test_the_layers_are_where_the_test_looks():
    names = {module_name(p) for p in MODULES}
    assert {"lk_segment.commands.cli", "lk_segment.commands.train", "lk_segment.inference",
            "lk_segment.training.checkpointing", "lk_segment.timing"} <= names
    assert len(LIBRARY) > 30  # the test would pass vacuously on an empty list


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: module_name(p))
def test_the_library_imports_no_command(path):
    above = sorted(name for name in imported(path) if under(name, COMMANDS))
    assert not above, f"{module_name(path)} (library) imports from a command: {above}"


@pytest.mark.parametrize("path", [p for p in MODULES if under(module_name(p), ("lk_segment.ops", "lk_segment.blocks",
                                                                             "lk_segment.data"))],
                         ids=lambda p: module_name(p))
def test_the_model_parts_import_nothing_from_the_bench(path):
    assert not {name for name in imported(path) if under(name, ("lk_segment.bench",))}


def test_the_check_sees_a_lazy_import(tmp_path):
    """The rule would catch an import inside a function (where the old ``ops -> bench.timing`` was)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from lk_segment.bench.timing import time_in_turns\n")
    assert imported(module) == {"lk_segment.bench.timing", "lk_segment.bench.timing.time_in_turns"}
