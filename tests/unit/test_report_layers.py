"""ropext/report/: each module imports only the modules before it (docs/report.md, "Code"), and reads result
files only through ropext.results."""

from __future__ import annotations

import ast
from pathlib import Path

import ropext.report

LAYERS = ["loading", "labels", "corpora", "sections", "tables", "plots", "page"]
PACKAGE = Path(ropext.report.__file__).parent


def _imported(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_the_package_has_exactly_the_documented_modules() -> None:
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted([*LAYERS, "__init__"])


def test_each_module_imports_only_the_modules_before_it() -> None:
    for index, module in enumerate(LAYERS):
        used = {name.removeprefix("ropext.report.") for name in _imported(module) if name.startswith("ropext.report")}
        later = used - set(LAYERS[:index])
        assert not later, f"ropext/report/{module}.py imports {sorted(later)}, which come after it"


def test_no_module_parses_json_files_itself() -> None:
    """Result files are read by ropext.results; the report never opens or decodes them."""
    for module in LAYERS:
        source = (PACKAGE / f"{module}.py").read_text()
        for reading in ("read_text(", "read_bytes(", "open(", "json.load("):
            assert reading not in source, f"ropext/report/{module}.py calls {reading}...)"
