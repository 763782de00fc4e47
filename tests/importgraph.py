"""ptm_cli's own import graph, read from the source: every import statement, at any depth, and importlib calls."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ptm_cli"
# Modules that import third-party packages by a computed name (never ptm's own): doctor probes torch & co.
COMPUTED_THIRD_PARTY = {"ptm_cli.doctor"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    base = current.split(".") if is_package else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *(target.split(".") if target else [])])


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The ptm_cli modules ``path`` imports, anywhere in the file (functions and TYPE_CHECKING blocks too)."""
    current = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def add(name: str) -> None:
        # the longest prefix that is a module of ours: ``from .a import b`` may name the module a.b
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != current:
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = _resolve(current, is_package, node.level, node.module)
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module
            else:
                continue
            for alias in node.names:
                add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        elif isinstance(node, ast.Call) and _is_import_module(node):
            found.update(_dynamic_targets(node, current, is_package, tree, modules))
    return found


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module"
    )


def _dynamic_targets(node: ast.Call, current: str, is_package: bool, tree: ast.Module, modules: set[str]) -> set[str]:
    """importlib.import_module targets: a constant, or the values of the package's ``_LAZY`` table."""
    arg = node.args[0] if node.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        name = arg.value
        if name.startswith("."):
            name = _resolve(current, is_package, 1, name.lstrip("."))
        return {name} if name.split(".")[0] == PACKAGE else set()
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        head = str(arg.values[0].value)
        if not head.startswith(".") and head.split(".")[0] != PACKAGE:
            return set()  # f"PIL.{plugin}": a third-party package
    if current in COMPUTED_THIRD_PARTY:
        return set()
    if is_package and _discovers_submodules(tree):
        # A registry that imports every module of its package (pkgutil.iter_modules): all of them count.
        return {m for m in modules if m.rpartition(".")[0] == current}
    lazy = _lazy_table(tree)
    if lazy is None:
        raise AssertionError(f"{current}: importlib.import_module with a computed name the test cannot follow")
    package = current if is_package else current.rpartition(".")[0]
    found = {f"{package}.{m}" for m in lazy}
    missing = found - modules
    if missing:
        raise AssertionError(f"{current}: its _LAZY table names modules that do not exist: {sorted(missing)}")
    return found


def _discovers_submodules(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "iter_modules"
        for node in ast.walk(tree)
    )


def _lazy_table(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            value = ast.literal_eval(node.value)
            return set(value.values())
    return None


def graph(root: Path) -> dict[str, set[str]]:
    """Each module and the ptm modules it imports; a C extension (its .c source) is a module importing none."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    extensions = sorted((root / PACKAGE).rglob("*.c"))
    modules = {module_name(f, root) for f in [*files, *extensions]}
    edges = {module_name(f, root): imports_of(f, root, modules) for f in files}
    edges.update({module_name(f, root): set() for f in extensions})
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found
