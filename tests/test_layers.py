"""The package's layers and what each may import, checked over every import of every module.

``LAYERS`` is the table of docs/architecture.md: lowest first, each layer with the module prefixes it holds and the
layers it may import (its own modules always). Every import counts: module level, inside functions, under
``TYPE_CHECKING``, and ``importlib.import_module("adapterhub....")`` with a literal name. A new import that runs
from a lower layer up to a higher one fails ``test_no_import_runs_up_a_layer``, naming the module, the line and
the layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "adapterhub"

# name, the module prefixes it holds, the layers it may import (lowest first)
LAYERS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("base", ("adapterhub.errors", "adapterhub.version"), ()),
    ("spec", ("adapterhub.spec",), ("base",)),
    ("methods", ("adapterhub.methods",), ("base", "spec")),
    ("runtime", ("adapterhub.runtime",), ("base", "spec", "methods")),
    ("heads", ("adapterhub.heads",), ("base", "spec", "methods", "runtime")),
    ("io", ("adapterhub.io",), ("base", "spec", "methods", "runtime", "heads")),
    # the torch-free hub: registry server, website and what they share with the client
    (
        "hub-server",
        (
            "adapterhub.hub.server",
            "adapterhub.hub.web",
            "adapterhub.hub.errors",
            "adapterhub.hub.identifiers",
            "adapterhub.hub.archive",
            "adapterhub.hub.threaded_server",
            "adapterhub.hub.hf_card",
        ),
        ("base", "spec"),
    ),
    ("hub", ("adapterhub.hub",), ("base", "spec", "methods", "runtime", "heads", "io", "hub-server")),
    ("api", ("adapterhub.api",), ("base", "spec", "methods", "runtime", "heads", "io", "hub-server", "hub")),
    ("data", ("adapterhub.data",), ("base", "spec")),
    (
        "training",
        ("adapterhub.training",),
        ("base", "spec", "methods", "runtime", "heads", "io", "hub-server", "hub", "api", "data"),
    ),
    (
        "serving",
        ("adapterhub.serving",),
        ("base", "spec", "methods", "runtime", "heads", "io", "hub-server", "hub", "api", "data"),
    ),
    ("export", ("adapterhub.export",), ("base", "spec", "methods", "runtime", "heads", "io", "api")),
    (
        "cli",
        ("adapterhub.cli",),
        (
            "base",
            "spec",
            "methods",
            "runtime",
            "heads",
            "io",
            "hub-server",
            "hub",
            "api",
            "data",
            "training",
            "serving",
            "export",
            "facade",
        ),
    ),
    # the package itself: the lazy public API (``from adapterhub import init``)
    (
        "facade",
        ("adapterhub",),
        ("base", "spec", "methods", "runtime", "heads", "io", "hub-server", "hub", "api", "data", "export"),
    ),
]
_ALLOWED = {name: set(allowed) | {name} for name, _, allowed in LAYERS}


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    """The layer holding ``module``: the one with the longest matching prefix (the package itself holds only its
    ``__init__``)."""
    best, length = None, -1
    for name, prefixes, _ in LAYERS:
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and "." in prefix
            if (module == prefix or inside) and len(prefix) > length:
                best, length = name, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its folder to LAYERS in tests/test_layers.py")
    return best


def _resolve(name: str, package: Path) -> str:
    """``adapterhub.a.b`` if that is a module or package under ``package``'s parent, else its longest such prefix
    (``from adapterhub.a import Name`` imports module ``adapterhub.a``)."""
    parts = name.split(".")
    while parts:
        base = package.parent.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


def imports_of(path: Path, package: Path) -> Iterator[tuple[int, str]]:
    """(line, imported adapterhub module) for every import in ``path``, wherever it is written."""
    this = module_name(path, package)
    here = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == package.name:
                    yield node.lineno, _resolve(alias.name, package)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.split(".")[0] != package.name:
                continue
            for alias in node.names:  # ``from pkg import module`` imports that module
                yield node.lineno, _resolve(f"{source}.{alias.name}", package)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.split(".")[0] == package.name
        ):
            yield node.lineno, _resolve(node.args[0].value, package)


def upward_imports(package: Path) -> list[str]:
    """Every import in ``package`` from a module to one in a layer it may not import, one line each."""
    found = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        layer = layer_of(module)
        for line, target in imports_of(path, package):
            if target == module:
                continue
            target_layer = layer_of(target)
            if target_layer not in _ALLOWED[layer]:
                found.append(
                    f"{path.relative_to(package.parent)}:{line}: {module} ({layer}) imports {target} "
                    f"({target_layer}); {layer} may import only {', '.join(sorted(_ALLOWED[layer]))}"
                )
    return found


def test_every_module_is_in_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path, PACKAGE))


def test_no_import_runs_up_a_layer() -> None:
    found = upward_imports(PACKAGE)
    assert not found, "imports that run up a layer:\n" + "\n".join(found)


def test_the_root_holds_at_most_six_modules() -> None:
    assert len(list(PACKAGE.glob("*.py"))) <= 6, sorted(p.name for p in PACKAGE.glob("*.py"))


@pytest.mark.parametrize(
    "source",
    [
        "from adapterhub.api.model import init\n",  # module level
        "def f():\n    import adapterhub.api.model\n",  # inside a function
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from adapterhub.api import model\n",
        "import importlib\nimportlib.import_module('adapterhub.api.model')\n",
        "from ..api import model\n",  # relative
    ],
)
def test_a_planted_upward_import_is_found(tmp_path: Path, source: str) -> None:
    package = tmp_path / "adapterhub"
    for folder in ("spec", "api"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "api" / "model.py").write_text("from adapterhub.spec import blocks\n")  # downward: allowed
    (package / "spec" / "blocks.py").write_text(source)
    found = upward_imports(package)
    assert len(found) == 1, found
    assert "adapterhub.spec.blocks (spec) imports adapterhub.api.model (api)" in found[0]
    assert found[0].startswith("adapterhub/spec/blocks.py:")
