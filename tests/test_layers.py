"""Dependencies point down the layer list of DESIGN.md: no module imports a module of a higher layer.

Every module of ``aelab/`` is parsed with ``ast`` (imports at module level and inside functions,
``import x`` and ``from x import y``, relative imports resolved; imports under
``if TYPE_CHECKING:`` are skipped: they never run). The checker is a pure function over the
module graph, so the synthetic tests below show that it does fail on a forbidden import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "aelab"

#: layer of each module, low to high; a pattern ``p.*`` matches ``p`` and everything under it
LAYERS: tuple[tuple[str, ...], ...] = (
    ("aelab.registry", "aelab.config", "aelab.outputs", "aelab.io", "aelab.protocol", "aelab.batch",
     "aelab.schedules", "aelab.compat", "aelab.distributed"),
    ("aelab.nn.*",),
    ("aelab.distributions", "aelab.flows.*"),
    ("aelab.latents.*", "aelab.likelihoods", "aelab.priors.*"),
    ("aelab.losses.*",),
    ("aelab.models.*",),
    ("aelab.data.*",),
    ("aelab.metrics.*",),
    ("aelab.training.*", "aelab.runs"),
    ("aelab.report.*",),
    ("aelab.cli.*", "aelab.api", "aelab", "aelab.__main__"),
)


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int | None:
    """The layer of ``module``, or ``None`` when no pattern matches it."""
    for i, patterns in enumerate(layers):
        for p in patterns:
            if module == p or (p.endswith(".*") and (module == p[:-2] or module.startswith(p[:-1]))):
                return i
    return None


def check_layers(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every offence of ``graph`` (``{module: modules it imports}``, aelab modules only), sorted:
    ``a -> b (layer i imports layer j)`` for an import of a higher layer, ``a: not in any layer``
    for a module (importer or imported) no layer pattern matches."""
    problems = set()
    for a, imported in graph.items():
        for m in {a, *imported}:
            if layer_of(m, layers) is None:
                problems.add(f"{m}: not in any layer")
        i = layer_of(a, layers)
        for b in imported:
            j = layer_of(b, layers)
            if i is not None and j is not None and j > i:
                problems.add(f"{a} -> {b} (layer {i} imports layer {j})")
    return sorted(problems)


# --- the real tree -------------------------------------------------------------------------------
def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The aelab modules imported anywhere under ``node`` (``if TYPE_CHECKING:`` bodies skipped)."""
    out: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for c in child.orelse:
                out |= _imports(ast.Module(body=[c], type_ignores=[]), module, is_package, modules)
            continue
        if isinstance(child, ast.Import):
            names = [a.name for a in child.names]
        elif isinstance(child, ast.ImportFrom):
            if child.level:  # relative: resolved against this module's package
                package = module if is_package else module.rpartition(".")[0]
                base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                base = f"{base}.{child.module}" if child.module else base
            else:
                base = child.module or ""
            # ``from p import x``: x is a submodule of p when there is one, else a name in p
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
        else:
            out |= _imports(child, module, is_package, modules)
            continue
        # only the named module: ``import aelab.a.b`` also runs aelab/__init__.py, which is no edge
        out |= {n for n in names if n == "aelab" or n.startswith("aelab.")}
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: the aelab modules it imports}`` for every ``.py`` file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = _imports(tree, name, path.name == "__init__.py", modules) - {name}
    return graph


def _report(problems: list[str]) -> str:
    return f"{len(problems)} imports against the layers of DESIGN.md:\n  " + "\n  ".join(problems)


def test_the_graph_sees_the_tree():
    graph = import_graph()
    assert {"aelab", "aelab.nn.kmeans", "aelab.metrics.clustering", "aelab.__main__"} <= graph.keys()
    assert "aelab.nn.kmeans" in graph["aelab.metrics.clustering"]


def test_no_module_imports_a_higher_layer():
    problems = check_layers(import_graph())
    assert not problems, _report(problems)


# --- the checker on synthetic graphs: it can fail ------------------------------------------------
def test_checker_reports_exactly_the_forbidden_edge():
    graph = {
        "aelab.nn.foo": {"aelab.training.trainer", "aelab.registry", "aelab.nn.bar"},
        "aelab.nn.bar": set(),
        "aelab.training.trainer": {"aelab.models.vae", "aelab.nn.foo"},
        "aelab.models.vae": {"aelab.nn.bar"},
        "aelab.registry": set(),
    }
    assert check_layers(graph) == ["aelab.nn.foo -> aelab.training.trainer (layer 1 imports layer 8)"]
    del graph["aelab.nn.foo"]
    assert check_layers(graph) == []


def test_checker_rejects_modules_in_no_layer():
    graph = {"aelab.gadgets": {"aelab.nn.bar"}, "aelab.nn.bar": {"aelab.widgets.x"}}
    assert check_layers(graph) == ["aelab.gadgets: not in any layer", "aelab.widgets.x: not in any layer"]


@pytest.mark.parametrize(("module", "layer"), [
    ("aelab", 10), ("aelab.cli", 10), ("aelab.cli.train", 10), ("aelab.nn", 1), ("aelab.nn.kmeans", 1),
    ("aelab.schedules", 0), ("aelab.runs", 8), ("aelab.registryx", None), ("aelab.nnx", None),
])
def test_layer_patterns(module, layer):
    assert layer_of(module) == layer


def test_parser_resolves_relative_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "aelab"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text("")
    (pkg / "nn" / "__init__.py").write_text("from .foo import x\n")
    (pkg / "nn" / "foo.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from .. import registry\n"
        "if TYPE_CHECKING:\n    from aelab.training import Trainer\n"
        "else:\n    import aelab.data.base\n"
        "def f():\n    from ..metrics.likelihood import evaluation\n    import aelab.nn\n"
    )
    graph = import_graph(pkg)
    assert graph["aelab.nn"] == {"aelab.nn.foo"}
    assert graph["aelab.nn.foo"] == {"aelab.registry", "aelab.data.base", "aelab.metrics.likelihood", "aelab.nn"}
    assert check_layers(graph) == [
        "aelab.nn.foo -> aelab.data.base (layer 1 imports layer 6)",
        "aelab.nn.foo -> aelab.metrics.likelihood (layer 1 imports layer 7)",
    ]
