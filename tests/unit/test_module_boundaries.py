"""Which parts of the package may import which: read from the source, so a new import across a line fails here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import modelfleet

PACKAGE = Path(modelfleet.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included), as absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def sources(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def under(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


@pytest.mark.parametrize("subpackage", ["inference", "gateway"])
def test_serving_does_not_import_training(subpackage: str) -> None:
    offending = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in sources(subpackage)
        for module in imported_modules(path)
        if under(module, "modelfleet.training")
    }
    assert not offending, "shared pod helpers belong in modelfleet.pods"


def test_the_runtime_imports_only_itself_and_the_contract() -> None:
    offending = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in sources("runtime")
        for module in imported_modules(path)
        if under(module, "modelfleet") and not under(module, "modelfleet.runtime", "modelfleet.contract")
    }
    assert not offending


def test_the_contract_imports_nothing() -> None:
    assert imported_modules(PACKAGE / "contract.py") == set()


def test_the_runtime_starts_without_the_operators_libraries() -> None:
    """A worker or model server imports the package's __init__ too: it must not pull in the Kubernetes client."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, modelfleet.runtime.train, modelfleet.runtime.serve; print(*sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not [m for m in loaded if under(m, "kubernetes", "kopf", "pydantic", "modelfleet.client")]
