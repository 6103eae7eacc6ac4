"""The layer rules of DESIGN §1, read from the source: imports point down, no cycles, small modules.

Layers, lowest first (a module imports only from its own layer or lower ones)::

    cli                         the `dspex` command
    observability, _local       generated files; local broker, LM server and `dspex up`
    streams                     the Kafka side
    optimizers, topologies      (neither imports the other)
    programs                    the DSPy-like core, usable without a broker
    errors, _validation         shared by all

Every import counts, including those deferred into a function body; only
imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dspex"

RANK = {
    "errors": 0,
    "_validation": 0,
    "programs": 1,
    "optimizers": 2,
    "topologies": 2,
    "streams": 3,
    "observability": 4,
    "_local": 4,
    "cli": 5,
    "__main__": 6,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for other in node.orelse:
                yield from _import_nodes(other)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _import_nodes(node)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The dspex modules ``name`` imports (a package's submodule where one is named)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            submodules = [f"{origin}.{alias.name}" for alias in node.names]
            targets = [sub for sub in submodules if sub in modules] or [origin]
        found.update(target for target in targets if target.split(".")[0] == "dspex")
    return found & set(modules)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = sorted({_layer(m) for m in _graph()} - set(RANK) - {"__init__"})
    assert unknown == [], f"add these to RANK (and to DESIGN §1): {unknown}"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, targets in _graph().items():
        layer = _layer(module)
        if layer == "__init__":
            # The root exports the program core and the optimizers, nothing Kafka.
            allowed = {"programs", "optimizers", "errors", "__init__"}
            wrong += [f"{module} -> {t}" for t in targets if _layer(t) not in allowed]
            continue
        for target in targets:
            other = _layer(target)
            if other == layer or (other == "__init__" and target == "dspex"):
                continue
            if other == "__init__" or RANK[other] >= RANK[layer]:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports against the layer rules:\n" + "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("dspex", ("faust", "aiokafka", "mode", "optuna", "matplotlib")),
        ("dspex.programs", ("faust", "aiokafka", "mode")),
        ("dspex.streams.records", ("faust", "aiokafka", "mode")),
    ],
)
def test_importing_a_layer_loads_no_heavier_library(
    package: str, forbidden: tuple[str, ...]
) -> None:
    import subprocess
    import sys

    code = (
        f"import sys, {package}; "
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


#: The house style's bound on a module (STYLE.md: split by responsibility).
MAX_MODULE_LINES = 500


def test_no_module_is_over_the_size_bound() -> None:
    sizes = {
        str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    too_long = {path: lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert too_long == {}, f"split these by responsibility: {too_long}"
