"""The house rules of ``ser_lightning/`` (``../shared/STYLE.md``), checked on the source: short modules, imports
pointing one way, models that hold LightningModules only and never read ``trainer.datamodule``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ser_lightning"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400
# package -> the packages of ours it must not import (outside `if TYPE_CHECKING:`)
FORBIDDEN = {
    "types": {"*"},
    "labels": {"*"},
    "metrics": {"nn", "models", "data", "corpora", "alm", "annotate", "runs", "callbacks", "inference", "cli"},
    "losses": {"nn", "models", "data", "corpora", "alm", "annotate", "runs", "callbacks", "inference", "cli"},
    "optim": {"nn", "models", "data", "corpora", "alm", "annotate", "runs", "callbacks", "inference", "cli"},
    "nn": {"models", "data", "corpora", "alm", "annotate", "runs", "callbacks", "inference", "cli"},
    "corpora": {"nn", "models", "data", "alm", "annotate", "runs", "callbacks", "inference", "cli"},
    "data": {"models", "alm", "annotate", "runs", "callbacks", "inference", "cli"},
    "models": {"data", "corpora", "annotate", "callbacks", "inference", "cli"},
    "runs": {"models", "data", "corpora", "annotate", "callbacks", "inference", "cli"},
    "callbacks": {"models", "data", "corpora", "annotate", "inference", "cli"},
    "alm": {"models", "data", "annotate", "callbacks", "inference", "cli"},
    "annotate": {"models", "callbacks", "inference", "cli"},
    "inference": {"models", "callbacks", "cli"},
}


def _package(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _runtime_imports(tree: ast.Module) -> set[str]:
    """The ``ser_lightning.<package>`` names imported outside ``if TYPE_CHECKING:`` blocks."""
    hidden = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for child in node.body
        for n in ast.walk(child)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("ser_lightning.")}
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_short(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES, "split it along a real seam"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_one_way(path: Path) -> None:
    package = _package(path)
    forbidden = FORBIDDEN.get(package, set())
    imported = _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))) - {package}
    wrong = imported if "*" in forbidden else imported & forbidden
    assert not wrong, f"{package} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_hold_lightning_modules_and_never_read_the_datamodule(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    reads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "datamodule"]
    reads += [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value == "datamodule"]
    assert not reads, f"{path.name} reads the DataModule (line {reads[0].lineno}): take it from connect_data"
    if path.name == "__init__.py" or path.name.startswith("_"):
        return  # the package's exports, or a private helper of one model
    bases = {getattr(b, "id", getattr(b, "attr", None)) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
             for b in n.bases}  # fmt: skip
    assert bases & {"DistributionModule", "LightningModule"}, f"{path.name} defines no LightningModule"


def test_cli_is_imported_by_nobody_but_itself() -> None:
    for path in MODULES:
        if _package(path) != "cli":
            assert "cli" not in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))), path
