"""The package structure says one thing in one place (issue 10):

* the import graph of fmrl_sdk's packages (static imports and importlib strings) has no cycle;
* exactly one module (fmrl_sdk/runtime/program.py) loads ExecuTorch programs or sizes its thread pool,
  and the benchmarks go through it too;
* nothing outside fmrl_sdk/runtime/ reaches into a Recommender's private attributes.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fmrl_sdk"
GROUND = "fmrl_sdk"                      # modules at the package root (errors, fileio, ids, jsonio, __init__)
LOADER = PACKAGE / "runtime" / "program.py"
IMPORT_CALLS = ("import_module", "__import__", "find_spec")
# what only the loader may use: the private pybindings, the official runtime's loader, pool sizing
LOADER_TOKENS = ("_load_program_from_buffer", "executorch.runtime", "extension.pybindings", "portable_lib",
                 "_unsafe_reset_threadpool", "_threadpool_get_thread_count", "Runtime.get(")


def sources(root: Path = PACKAGE) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, text: str | None = None) -> set[str]:
    """Absolute names of every fmrl_sdk module `path` imports: import statements anywhere in the file
    (also inside functions) and string arguments of importlib.import_module / __import__ / find_spec."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import quickstart`
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in IMPORT_CALLS:
                found.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return {m for m in found if m == "fmrl_sdk" or m.startswith("fmrl_sdk.")}


def package_of(module: str) -> str:
    """fmrl_sdk.X.* -> fmrl_sdk.X when X is a subpackage; root modules -> the ground floor."""
    parts = module.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return f"fmrl_sdk.{parts[1]}"
    return GROUND


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sources():
        source = package_of(module_name(path))
        graph.setdefault(source, set())
        for target in imported_modules(path):
            target = package_of(target)
            if target != source:
                graph[source].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}   # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_import_graph_sees_dynamic_imports():
    """The checker itself: a relative import inside a function and an importlib string are both edges."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    probe = PACKAGE / "features" / "example.py"   # parsed from the text below, never written
    text = ("def f():\n    from ..train.run import load_run\n"
            "def g():\n    import importlib\n    importlib.import_module('fmrl_sdk.deploy.export')\n")
    assert imported_modules(probe, text) == {"fmrl_sdk.train.run", "fmrl_sdk.train.run.load_run",
                                             "fmrl_sdk.deploy.export"}


def test_no_cycle_between_packages():
    graph = package_graph()
    # the real layering, so that the test cannot pass on an empty graph
    assert "fmrl_sdk.features" in graph["fmrl_sdk.train"]
    assert "fmrl_sdk.train" in graph["fmrl_sdk.deploy"] and "fmrl_sdk.runtime" in graph["fmrl_sdk.deploy"]
    assert graph[GROUND] == set(), f"the ground floor imports {graph[GROUND]}"
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
    layers = "\n".join(f"  {p} -> {', '.join(sorted(t)) or '-'}" for p, t in sorted(graph.items()))
    print(f"fmrl_sdk package graph (no cycle):\n{layers}")


def test_runtime_depends_on_the_ground_floor_only():
    assert package_graph()["fmrl_sdk.runtime"] <= {GROUND}


def test_exactly_one_module_loads_programs():
    users = {}
    for path in sources() + sorted((ROOT / "benchmarks").glob("*.py")):
        text = path.read_text()
        hits = [t for t in LOADER_TOKENS if t in text]
        if hits:
            users[str(path.relative_to(ROOT))] = hits
    assert list(users) == [str(LOADER.relative_to(ROOT))], users


def test_no_private_recommender_access_outside_the_runtime():
    offenders = []
    for path in sources() + sorted((ROOT / "benchmarks").glob("*.py")):
        if (PACKAGE / "runtime") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            owner = node.value
            owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if owner_name in ("rec", "recommender", "engine") or node.attr == "_catalog":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {owner_name}.{node.attr}")
    assert offenders == []


def test_ground_floor_holds_no_orchestration():
    """Root modules are shared helpers; CLI orchestration (quickstart) lives in the cli package."""
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "errors.py", "fileio.py", "ids.py", "jsonio.py"]
