"""The architecture, checked from the code: imports point one way (stages -> zoo ->
core; models and training never import stages), there is no import circle, the
library never imports Prefect, and the stage registry is the one list of stages
that the Prefect tasks, the flow and the CLI are made from."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("emotionclip", "tasks", "flows", "deployments")

# package -> the packages of emotionclip it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "zoo": {"core"},
    "stages": {"core", "zoo"},
    "models": {"core"},
    "training": {"core", "models", "evaluation"},  # the in-training probe runs the evaluation code
    "evaluation": {"core", "zoo", "stages", "models"},  # benchmarks go through the same frames/detection code
    "viz": {"core", "models", "training"},
    "sample": {"core"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (REPO / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """Every project module `path` imports, at module level or inside functions.
    `from pkg import sub` counts as importing `pkg.sub` when that is a module."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in mods)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            if all(s in mods for s in subs):
                out.update(subs)
            elif node.module in mods:
                out.add(node.module)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, mods) - {m} for m, p in mods.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "emotionclip" and len(parts) > 1 else parts[0]


def test_imports_point_one_way(graph):
    bad = sorted(
        f"{a} -> {b}" for a, targets in graph.items() for b in targets
        if b.startswith("emotionclip.") and a.startswith("emotionclip.") and _layer(a) in ALLOWED
        and _layer(b) != _layer(a) and _layer(b) not in ALLOWED[_layer(a)]
    )
    assert not bad, bad


def test_no_import_circle(graph):
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_library_never_imports_prefect():
    offenders = []
    for p in (REPO / "emotionclip").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "prefect" or n.startswith(("prefect.", "tasks", "flows", "deployments")) for n in names):
                offenders.append(str(p.relative_to(REPO)))
    assert not offenders, offenders


def test_one_stage_list_makes_the_tasks_the_flow_and_the_cli():
    from typer.main import get_command

    from emotionclip.cli.stage import app as stage_app
    from emotionclip.stages.registry import STAGES, VIDEO_STAGES
    from tasks.dataset import TASKS, VIDEO_STAGE_TASKS

    assert list(STAGES) == ["search", "download", "words", "frames", "sentences", "sentiment", "humans", "clips",
                            "manifests", "card"]
    assert all(callable(s.run) for s in STAGES.values())
    assert set(TASKS) == set(STAGES) | {"import"}  # import: the download stage's local-folder form
    assert [t.name for t in VIDEO_STAGE_TASKS.values()] == list(VIDEO_STAGES)
    commands = get_command(stage_app).commands
    assert set(commands) == set(STAGES)
    for name, stage in STAGES.items():
        assert commands[name].help == stage.help, name
        assert TASKS[name].description == stage.help, name


def _decorated(path: Path, decorator: str) -> list[str]:
    """Functions of `path` decorated with `decorator` (called or not) or made by calling it."""
    out, decorators = [], set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                decorators.add(id(d))
                target = d.func if isinstance(d, ast.Call) else d
                if isinstance(target, ast.Name) and target.id == decorator:
                    out.append(node.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and id(node) not in decorators and isinstance(node.func, ast.Name) \
                and node.func.id == decorator:
            out.append(f"{decorator}(...) call")
    return out


def test_every_task_is_made_in_tasks_and_flows_only_compose():
    """tasks/ holds every Prefect task; flows/ and deployments/ define none; tasks/
    imports the library and never the flows."""
    elsewhere = {str(p.relative_to(REPO)): _decorated(p, "task")
                 for pkg in ("flows", "deployments", "emotionclip") for p in (REPO / pkg).rglob("*.py")}
    assert not {k: v for k, v in elsewhere.items() if v}
    assert any(_decorated(p, "task") for p in (REPO / "tasks").rglob("*.py"))
    mods = _modules()
    for name, path in mods.items():
        if name.startswith("tasks"):
            assert not {m for m in _imports(path, mods) if m.startswith(("flows", "deployments"))}, name
