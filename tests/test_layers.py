"""The house's layers, read from the source: the command line (``parasim/``) above the executor,
the executor above the simulator, the report beside them reading dicts only; no module imports
one that imports it back (directly or round a longer circle, lazy imports included); and the
simulator's commands load neither the executor nor plotly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("parasim", "simulator", "executor", "reports")


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> nx.DiGraph:
    """Module -> the project modules it imports anywhere in its file."""
    files = {module_of(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from pkg import sub`` imports the submodule when there is one
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files
                         else node.module for a in node.names]
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    g.add_edge(mod, name)
    return g


def test_no_module_imports_one_that_imports_it_back():
    circles = [sorted(c) for c in nx.strongly_connected_components(imports()) if len(c) > 1]
    assert circles == []


def test_each_layer_imports_only_the_layers_below_it():
    g = imports()
    below = {"parasim": {"parasim", "simulator", "executor", "reports"},
             "executor": {"executor", "simulator", "reports"},
             # the search's reasons are the report's sentences (reports.compare: dicts only)
             "simulator": {"simulator", "reports"},
             "reports": {"reports"}}
    wrong = [(a, b) for a, b in g.edges if b.split(".")[0] not in below[a.split(".")[0]]]
    assert wrong == []


def test_the_simulators_commands_load_neither_the_executor_nor_plotly():
    code = ("import sys, simulator.cli, simulator.search, simulator.outputs\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'executor', 'parasim', 'plotly', 'numba', 'mpi4py'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.strip()
    assert out == "[]"
