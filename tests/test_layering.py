"""The layering of `proofs_numeric`, checked on the source (AST): tools never import a claim catalogue,
tests take fixtures from tools (strategies, conftest) and not from catalogues, and no private name
(`_x`) is imported from another module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CATALOGUES = ("proofs_numeric.catalogue",)
# the tests of the catalogues themselves (what they import is what they check); test_complexity_theta
# checks the counts catalogue's measured router formula (`router_count`), not a fixture
CATALOGUE_TESTS = (
    "test_theorems_",
    "test_checker_guards.py",
    "test_bounds_claims.py",
    "test_complexity_theta.py",
)


def imports(path: Path) -> Iterator[tuple[str, str, int]]:
    """(absolute module, imported name or '', line) of every import in `path`."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((a.name, "", node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (
                node.module or ""
                if node.level == 0
                else ".".join(p for p in (base, node.module) if p)
            )
            for a in node.names:
                yield module, a.name, node.lineno


def in_catalogue(module: str, name: str) -> bool:
    full = f"{module}.{name}" if name else module
    return any(full == c or full.startswith(c + ".") for c in CATALOGUES)


def test_variants_import_no_catalogue() -> None:
    for path in sorted((ROOT / "proofs_numeric" / "variants").glob("*.py")):
        bad = [(m, n, line) for m, n, line in imports(path) if in_catalogue(m, n)]
        assert not bad, f"{path.name} imports a claim catalogue: {bad}"


def test_tests_take_no_fixture_from_a_catalogue() -> None:
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name.startswith(CATALOGUE_TESTS):
            continue
        bad = [(m, n, line) for m, n, line in imports(path) if in_catalogue(m, n)]
        assert not bad, f"tests/{path.name} imports from a claim catalogue: {bad}"


@pytest.mark.parametrize("tree", ["proofs_numeric", "tests"])
def test_no_private_name_crosses_modules(tree: str) -> None:
    skip = ROOT / "proofs_numeric" / "bounds"  # its own package, restructured separately
    for path in sorted((ROOT / tree).rglob("*.py")):
        if path.is_relative_to(skip):
            continue
        for module, name, line in imports(path):
            own = module.startswith(("proofs_numeric", "moelora_core"))
            private = name.startswith("_") and not name.startswith("__")
            assert not (own and private), f"{path.relative_to(ROOT)}:{line} imports {module}.{name}"


def _named_classes(node: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


ASK_THE_ADAPTER = [  # modules that ask the adapter (its class variables, formulas, declarations)
    *sorted((ROOT / "proofs_numeric" / "catalogue").glob("*.py")),
    *sorted((ROOT / "proofs_numeric" / "variants").glob("*.py")),
    ROOT / "proofs_numeric" / "dynamics.py",
    ROOT / "proofs_numeric" / "outcomes.py",
    *(ROOT / "benchmarks" / f for f in ("layers.py", "sparse_crossover.py", "floor_parts.py")),
]


@pytest.mark.parametrize("path", ASK_THE_ADAPTER, ids=lambda p: p.name)
def test_no_branch_on_an_architecture_type(path: Path) -> None:
    from moelora_core.registry import ARCHITECTURES

    names = {cls.__name__ for cls in ARCHITECTURES.values()}
    names |= {cls.config_class.__name__ for cls in ARCHITECTURES.values()}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
            found = _named_classes(node.args[1]) & names if len(node.args) == 2 else set()
            assert not found, f"{path.relative_to(ROOT)}:{node.lineno} isinstance(…, {found})"
