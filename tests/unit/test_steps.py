"""Step names have one registry (v2v.steps.Step): every name the code emits is in it, and
docs/events.md lists exactly its names. The names are read from the sources (a step name passed to
a step, phase or clean-up call, given as `step=`, or compared with an event's `.step`, as a literal
or a module constant), so a new step written as a bare string anywhere fails here until the
registry and the doc have it."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from v2v.steps import Step

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "v2v"
EVENTS_DOC = ROOT / "docs" / "events.md"

# Calls whose argument at this position is a step name (StepReporter.step, the orchestrators'
# phase wrappers, the coordinator's clean-up calls, warm's rounds and phase checks).
STEP_ARGUMENT = {"step": 0, "phase": 0, "_quietly": 0, "delta_round": 0, "finish_round": 0, "expect": 2}


def constants(tree: ast.Module) -> dict[str, str]:
    """A module's top-level string constants (STEP = "initramfs")."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return found


def strings(node: ast.expr, consts: dict[str, str]) -> Iterator[str]:
    """The step names an expression can be; a parameter or a Step member yields none (the first is
    checked where it is given, the second exists by construction)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.Name) and node.id in consts:
        yield consts[node.id]
    elif isinstance(node, ast.IfExp):
        yield from strings(node.body, consts)
        yield from strings(node.orelse, consts)


def callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def emitted(tree: ast.Module) -> Iterator[tuple[int, str]]:
    consts = constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            position = STEP_ARGUMENT.get(callee(node))
            if position is not None and len(node.args) > position:
                yield from ((node.lineno, s) for s in strings(node.args[position], consts))
            for kw in node.keywords:
                if kw.arg == "step":
                    yield from ((node.lineno, s) for s in strings(kw.value, consts))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            # ev.step == "copy", or ev.step in ("precopy", "copy")
            sides = [node.left, node.comparators[0]]
            if any(isinstance(s, ast.Attribute) and s.attr == "step" for s in sides):
                if isinstance(sides[1], (ast.Tuple, ast.Set, ast.List)):
                    sides = list(sides[1].elts)
                yield from ((node.lineno, s) for side in sides for s in strings(side, consts))


def code_steps() -> dict[str, list[str]]:
    """Each step name the package's code uses -> where."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for line, name in emitted(ast.parse(path.read_text(), str(path))):
            found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


def doc_tables() -> list[list[str]]:
    """The first column of each table in docs/events.md's "Step names" section."""
    section = EVENTS_DOC.read_text().split("\n## Step names\n", 1)[1].split("\n## ", 1)[0]
    tables: list[list[str]] = []
    previous = ""
    for line in section.splitlines():
        if line.startswith("|---"):
            tables.append([])
        elif line.startswith("| `") and previous.startswith("|"):
            match = re.match(r"\| `([^`]+)` \|", line)
            assert match, f"docs/events.md: a step row without a `name` first: {line}"
            tables[-1].append(match.group(1))
        previous = line
    return tables


SNIPPET = """
STEP = "as-constant"
with report.step("in-step"):
    report.note("x", step=STEP)
with self.phase("in-phase"):
    raise V2VError("x", step="as-keyword")
self._quietly("in-cleanup", lambda: None)
self.finish_round("if-true" if precopy else "if-false", [], 0)
if ev.step.step == "compared" or s.step in ("in-tuple", Step.COPY):
    pass
with report.step(name):
    pass
"""


def test_the_scan_sees_every_kind_of_use() -> None:
    # if the scan missed a kind of use, the registry test would pass on names it never saw
    found = {name for _, name in emitted(ast.parse(SNIPPET))}
    assert found == {"as-constant", "in-step", "in-phase", "as-keyword", "in-cleanup", "if-true", "if-false",
                     "compared", "in-tuple"}
    # and in the package: a literal (convert's "launch"), a module constant (initramfs.py's STEP)
    assert {"launch", "initramfs"} <= set(code_steps())


def test_every_step_the_code_uses_is_registered() -> None:
    # "" is no step (a requeued guest's record)
    unknown = {name: where for name, where in code_steps().items() if name and name not in set(Step)}
    assert not unknown, f"step names missing from v2v/steps.py (add them there and to docs/events.md): {unknown}"


def test_docs_list_exactly_the_registered_steps() -> None:
    tables = doc_tables()
    assert tables, "docs/events.md has no step table under '## Step names'"
    for rows in tables:
        twice = sorted({n for n in rows if rows.count(n) > 1})
        assert not twice, f"docs/events.md lists {twice} twice in one table"
    documented = {n for rows in tables for n in rows}
    registered = {str(s) for s in Step}
    assert not documented - registered, f"docs/events.md lists unregistered steps: {sorted(documented - registered)}"
    assert not registered - documented, f"docs/events.md lacks registered steps: {sorted(registered - documented)}"


def test_registry_values_are_unique() -> None:
    # an Enum would silently make a second member with the same value an alias of the first
    assert len(Step.__members__) == len(set(Step))
