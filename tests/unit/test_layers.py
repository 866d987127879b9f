"""The package's layers point one way: cli (and the public client) -> coordinator -> services ->
core, and no module imports itself back through others. Read from the sources' import statements
(lazy imports inside functions count too), so a cycle or an upward import fails here, not in a
review."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "v2v"

# A module's layer is its first name under v2v; anything not listed is core (rank 0).
LAYERS = {"cli": 3, "client": 3, "coordinator": 2, "services": 1}
# The phase services are independent of each other: each is useful alone.
PHASES = ("input", "convert", "output", "copier")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod and not mod.startswith(name + "."):
                    graph[mod].add(name)
    return graph


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def phase(mod: str) -> str:
    parts = mod.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "services" and parts[2] in PHASES else ""


def test_no_upward_import() -> None:
    upward = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if layer(d) > layer(m))
    assert not upward, "upward imports (cli -> coordinator -> services -> core):\n" + "\n".join(upward)


def test_phase_services_do_not_import_each_other() -> None:
    crossing = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                      if phase(m) and phase(d) and phase(m) != phase(d))
    assert not crossing, "one phase service imports another:\n" + "\n".join(crossing)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(", ".join(c) for c in found)


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    """The checks themselves: a made-up graph with both faults is caught."""
    graph = {"v2v.a": {"v2v.b"}, "v2v.b": {"v2v.a"}, "v2v.services.x": {"v2v.cli.y"}, "v2v.cli.y": set()}
    assert cycles(graph) == [["v2v.a", "v2v.b"]]
    assert layer("v2v.cli.y") > layer("v2v.services.x")


@pytest.mark.parametrize("mod", ["v2v.cli.main", "v2v.coordinator.service", "v2v.services.input.service"])
def test_graph_knows_the_main_modules(mod: str) -> None:
    assert mod in import_graph()


# What the small container image (deploy/Dockerfile: no libguestfs, no hivex) runs: input, output,
# copier and coordinator through `v2v serve`.
SMALL_IMAGE_MODULES = ("v2v.cli.main", "v2v.cli.fleet_cmd", "v2v.coordinator.service", "v2v.services.input.service",
                       "v2v.services.output.service", "v2v.services.copier.service")
REFUSE_GUESTFS = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name in ("guestfs", "hivex"):
            raise ImportError(f"{name} is not in the small image")
sys.meta_path.insert(0, Refuse())
"""


def test_the_small_image_services_import_without_libguestfs() -> None:
    """The coordinator once imported the verify service (and so guestfs) for a one-line summary, and
    every small-image container failed at start; the image build checks this too, minutes later."""
    code = REFUSE_GUESTFS + "".join(f"import {m}\n" for m in SMALL_IMAGE_MODULES)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         cwd=PACKAGE.parent)
    assert res.returncode == 0, res.stderr[-3000:]
