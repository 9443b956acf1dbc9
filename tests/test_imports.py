"""Every module of the package imports on its own, and the converter does not reach up into
the manifest or the parity tools (which import the converter: a cycle waiting to happen)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "senet"
UPWARD = ("senet.manifest", "senet.parity")


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _imported_modules(path) -> list[str]:
    """Every module an import statement in ``path`` names, at any depth (lazy ones too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else _resolve(path, node)
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(path, node: ast.ImportFrom) -> str:
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + [node.module])


def test_the_module_list_is_complete():
    assert "senet.converter.to_timm" in MODULES and "senet.classes" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module):
    """In a fresh interpreter, and without leaving an import hook behind."""
    code = (f"import sys, {module}\n"
            "hooks = [f for f in sys.meta_path if type(f).__module__.split('.')[0] == 'senet']\n"
            "assert not hooks, hooks\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_converter_imports_neither_manifest_nor_parity():
    offending = [f"{path.relative_to(REPO)}: {name}"
                 for path in sorted((PACKAGE / "converter").rglob("*.py"))
                 for name in _imported_modules(path)
                 if any(name == up or name.startswith(up + ".") for up in UPWARD)]
    assert offending == []
