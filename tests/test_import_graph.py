"""No module of peft_ckt imports another that imports it back, directly or through others.

Imports inside functions count: a circle that only closes at call time still ties the modules together (and breaks
when one of them is imported first from the other's import). Edges go to the module an import names (a package's
`__init__` for `from . import name` only when `name` is not a submodule); `importlib` calls are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import peft_ckt

ROOT = Path(peft_ckt.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("peft_ckt", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """peft_ckt module -> the peft_ckt modules it imports (anywhere in its body)."""
    files = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                # `from pkg import sub` imports the submodule `pkg.sub` when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                # `import a.b.c` names a.b.c; keep the longest prefix that is a module of this package.
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_import_graph_sees_function_level_imports():
    graph = import_graph()
    # load_policy imports the scripted expert inside the function; run_jobs calls into the Ray backend.
    assert "peft_ckt.libero.policies.expert" in graph["peft_ckt.libero.policies.factory"]
    assert "peft_ckt.libero.workers.ray" in graph["peft_ckt.libero.workers.process"]


def test_import_circles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]


def test_package_has_no_import_circles():
    circles = import_circles(import_graph())
    assert not circles, f"import circles: {circles}"


def test_policies_and_workers_do_not_import_back():
    graph = import_graph()
    assert "peft_ckt.libero.policies.expert" not in graph["peft_ckt.libero.policies.base"]
    assert (
        not {"peft_ckt.libero.policies.mlp", "peft_ckt.libero.policies.expert"}
        & graph["peft_ckt.libero.policies.base"]
    )
    assert "peft_ckt.libero.policies.mlp" not in graph["peft_ckt.libero.policies.factory"]  # found by importlib
    assert "peft_ckt.libero.workers.process" not in graph["peft_ckt.libero.workers.ray"]
