"""The shape of the house, kept by a test: no import cycles among llmri's modules (imports inside
functions included), imports only go down the floors of docs/architecture.md, and no module grows
past its size budget. The import graph is grimp's, built from the source with every import in it."""

from __future__ import annotations

from pathlib import Path

import grimp
import networkx as nx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "llmri"

# Floors, lowest first. A module may import from its own floor and the floors below it, never above.
FLOORS = {
    "ground": ["errors", "precision", "sites", "model", "corpus", "disk", "store", "batches", "stats", "threads", "engine",
               "distributed"],
    "figures": ["viz"],
    "analyses": ["capture", "scan_settings", "regions", "nrag", "metrics", "probe", "neurons", "attention", "interventions",
                 "generate", "sae", "explain", "circuits"],
    "presentation": ["report"],
    "shell": ["cli", "commands", "__main__"],
}
RANK = {name: i for i, names in enumerate(FLOORS.values()) for name in names}
FLOOR_NAMES = list(FLOORS)
MAX_LINES = 600
MAX_LINES_CLI = 150


def floor_of(module: str) -> int | None:
    """The floor of ``llmri.X...``; None for the package facade ``llmri`` itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1] not in RANK:
        raise AssertionError(f"{module}: not on any floor; add it to FLOORS here and to docs/architecture.md")
    return RANK[parts[1]]


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    """Module -> imported module, with the implicit edge to each package whose ``__init__`` Python
    runs first (importing ``llmri.sae.model`` from outside ``llmri.sae`` runs ``llmri/sae/__init__.py``)."""
    g = grimp.build_graph("llmri", exclude_type_checking_imports=True)
    packages = {m for m in g.modules if (SRC.parent / m.replace(".", "/") / "__init__.py").is_file()}
    out = nx.DiGraph()
    out.add_nodes_from(g.modules)
    for m in g.modules:
        for d in g.find_modules_directly_imported_by(m):
            out.add_edge(m, d)
            parts = d.split(".")
            for i in range(2, len(parts)):
                pkg = ".".join(parts[:i])
                if pkg in packages and not (m == pkg or m.startswith(pkg + ".")):
                    out.add_edge(m, pkg)
    out.remove_edges_from([(m, "llmri") for m in list(out.predecessors("llmri"))] if "llmri" in out else [])
    return out


def test_every_module_is_on_a_floor(graph):
    for m in graph.nodes:
        floor_of(m)


def test_no_import_cycles(graph):
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_imports_only_go_down(graph):
    up = []
    for a, b in graph.edges:
        fa, fb = floor_of(a), floor_of(b)
        if fa is not None and fb is not None and fb > fa:
            up.append(f"{a} ({FLOOR_NAMES[fa]}) imports {b} ({FLOOR_NAMES[fb]})")
    assert not up, "upward imports:\n" + "\n".join(sorted(up))


def test_the_ray_executor_imports_no_analysis_and_the_shell_never_reaches_it(graph):
    ground = {f"llmri.{n}" for n in FLOORS["ground"]}
    assert set(graph.successors("llmri.distributed")) <= ground
    shell = [m for m in graph.nodes if floor_of(m) == RANK["cli"]]
    assert not [m for m in shell if graph.has_edge(m, "llmri.distributed")]


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The graph must count a function-local import (most of the old cycle hid in them)."""
    pkg = tmp_path / "probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (pkg / "b.py").write_text("")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        g = grimp.build_graph("probe_pkg")
    finally:
        sys.path.remove(str(tmp_path))
    assert "probe_pkg.b" in g.find_modules_directly_imported_by("probe_pkg.a")


def test_module_sizes():
    big = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    cli = len((SRC / "cli.py").read_text(encoding="utf-8").splitlines())
    assert cli <= MAX_LINES_CLI, f"cli.py has {cli} lines; command bodies belong in llmri/commands/"


def test_modules_import_modules_by_name_not_through_their_package():
    """``from . import annotate`` inside a package reads as an import of the package itself, whose
    ``__init__`` imports the module back: a cycle to any checker that does not resolve the name.
    Outside an ``__init__``, name the module: ``from .annotate import label_features``."""
    import ast

    found = []
    for p in SRC.rglob("*.py"):
        if p.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module is None:
                found.append(f"{p.relative_to(SRC)}:{node.lineno}")
    assert not found, f"imports through the package: {found}"
