"""The package's import graph: every module imports on its own, and dependencies point one way.

The graph is read from the source with ``ast`` and counts every import, including
the ones inside functions (a lazy import is still a dependency: it only hides a
cycle until the function runs). A package's ``__init__`` only gathers its
submodules, so an import of a package counts as an import of its ``__init__``.
"""
import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import corrmm

SRC = Path(corrmm.__file__).resolve().parent


def _module_files():
    files = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _imports(name: str, path: Path):
    """Modules of the package that ``name`` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from pkg import sub`` imports the submodule when there is one, else pkg itself
            targets = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # ``import corrmm.x.y`` names a module; trim attributes
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return components


def test_the_graph_sees_known_edges():
    """The parser's control: edges written eagerly, lazily and as ``from .. import x`` are all found."""
    assert "corrmm.geometry" in GRAPH["corrmm.ops"]
    assert "corrmm.kernels" in GRAPH["corrmm.algorithms.implicit"]  # lazy, inside a function
    assert "corrmm.config" in GRAPH["corrmm.algorithms.im2col"]      # from .. import config
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    assert _cycles(GRAPH) == []


# lower layers never import higher ones: each module may import only modules of its own or an earlier layer
LAYERS = [
    ["corrmm.geometry", "corrmm.config", "corrmm.memory_format", "corrmm.digits"],
    ["corrmm.kernels.common"],
    ["corrmm.kernels.transpose", "corrmm.kernels.implicit_forward", "corrmm.kernels.implicit_grad_input",
     "corrmm.kernels.implicit_grad_weight"],
    ["corrmm.layout"],
    ["corrmm.algorithms.base"],
    ["corrmm.tuning"],
    ["corrmm.selection"],
    ["corrmm.ops"],
    ["corrmm.functional", "corrmm.nn", "corrmm.compile.rewrite"],
    ["corrmm.convert", "corrmm.compile.backend"],
    ["corrmm.bench.suite", "corrmm.bench.timing"],
    ["corrmm.bench.runner"],
    ["corrmm.bench.report"],
    [name for name in MODULES if name.startswith("corrmm.pytensor")],
    ["corrmm.cli.usage"],
    ["corrmm.cli.check", "corrmm.cli.bench", "corrmm.cli.demo"],
]


@pytest.mark.parametrize("lower, higher", [(low, high) for i, layer in enumerate(LAYERS)
                                           for low in layer for later in LAYERS[i + 1:] for high in later])
def test_dependencies_point_one_way(lower, higher):
    assert higher not in GRAPH[lower], f"{lower} imports {higher}, a module above it"


#: subpackages that need an optional dependency (an extra of pyproject.toml), which a GPU image may lack
OPTIONAL = {"corrmm.pytensor": "pytensor", "corrmm.kernels.depthwise_numba": "numba"}


def _missing(name: str) -> list:
    """The optional dependencies module ``name`` needs that are not installed here."""
    return [dep for package, dep in OPTIONAL.items()
            if (name == package or name.startswith(package + ".")) and importlib.util.find_spec(dep) is None]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_imports(name):
    if _missing(name):
        pytest.skip(f"{name} needs {', '.join(_missing(name))}, not installed here")
    importlib.import_module(name)


def test_every_module_is_found():
    walked = {m.name for m in pkgutil.walk_packages(corrmm.__path__, "corrmm.")}
    assert walked | {"corrmm"} == {name for name in MODULES if not _missing(name) or name in OPTIONAL}
