"""The shape of the code: imports run one way, each module keeps to one job, the CLI only translates.

The import graph is read from the source, so imports inside functions, under
TYPE_CHECKING and through importlib all count.
"""

from __future__ import annotations

import ast
import inspect

import pytest
from helpers import ROOT
from importgraph import PACKAGE, cycles, graph

# Bottom to top, by package (a module of the package root is its own package). A module may
# import only from lower layers and from its own package, without cycles. The names say what
# each layer owns.
LAYERS: list[tuple[str, set[str]]] = [
    ("facts", {"version", "errors"}),
    ("the environment", {"settings"}),
    ("the process: files written whole, memory and threads", {"runtime"}),
    ("weights files", {"tensorio"}),
    ("images in: inputs, decoding, colour, preprocessing", {"images"}),
    ("videos in and out: frames read, clips written (PyAV)", {"video"}),
    ("what ptm writes: records, image files, the results page", {"output"}),
    ("image vectors: index files, exact and approximate search, near-duplicate groups", {"vectors"}),
    ("the catalog and the weights cache", {"cache"}),
    ("networks, devices and precision", {"nets"}),
    ("torch.hub repositories", {"hub"}),
    ("tasks: what ptm does with a model", {"tasks"}),
    ("diagnosis", {"doctor"}),
    ("batch jobs and the warm server", {"batch", "serve"}),
    ("commands", {"commands"}),
    ("the command line", {"cli"}),
    ("entry points and the public API", {"__main__", ""}),
]
# What the package root may hold: the entry points, the public API and the facts every layer shares.
ROOT_MODULES = {"", "__main__", "cli", "errors", "settings", "version"}

GRAPH = graph(ROOT)


def _short(module: str) -> str:
    return module.removeprefix(PACKAGE).lstrip(".")


def _package(module: str) -> str:
    """The layer unit of a module: its top-level subpackage, or the module itself at the package root."""
    return _short(module).split(".")[0]


def _layer_of() -> dict[str, int]:
    return {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def test_every_package_has_a_layer() -> None:
    layers = _layer_of()
    missing = sorted({_package(m) for m in GRAPH} - set(layers))
    assert not missing, f"add these packages to LAYERS: {missing}"
    gone = sorted(set(layers) - {_package(m) for m in GRAPH})
    assert not gone, f"LAYERS names packages that no longer exist: {gone}"


def test_the_package_root_holds_only_entry_points_and_the_public_api() -> None:
    at_root = {_short(m) for m in GRAPH if "." not in _short(m) and not (ROOT / PACKAGE / _short(m)).is_dir()}
    assert at_root <= ROOT_MODULES, f"move these into a subpackage: {sorted(at_root - ROOT_MODULES)}"


def test_no_two_modules_share_a_name() -> None:
    """One ``loading``, one ``formats``: a name says which module it is without its package."""
    seen: dict[str, str] = {}
    clashes = []
    for module in sorted(GRAPH):
        leaf = _short(module).rpartition(".")[2]
        if leaf in ("", "__init__", "__main__"):
            continue
        if leaf in seen:
            clashes.append(f"{seen[leaf]} and {_short(module)}")
        seen[leaf] = _short(module)
    assert not clashes, f"modules that share a name: {clashes}"


def test_there_are_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_imports_only_go_down() -> None:
    layers = _layer_of()
    upward = []
    for module, targets in GRAPH.items():
        here = _package(module)
        for target in targets:
            there = _package(target)
            if layers[there] > layers[here] or (layers[there] == layers[here] and here != there):
                upward.append(f"{_short(module)} -> {_short(target)}")
    assert not upward, f"imports that do not go down a layer: {sorted(upward)}"


def test_the_graph_sees_imports_in_functions_and_importlib(tmp_path: pytest.TempPathFactory) -> None:
    """The walker itself: a function-level import and the package's lazy table both count."""
    assert f"{PACKAGE}.tasks" in GRAPH[f"{PACKAGE}.commands.cmd_tasks"]  # inside the command's function
    assert f"{PACKAGE}.tasks.classify" in GRAPH[PACKAGE]  # through importlib, from the _LAZY table
    assert f"{PACKAGE}.tasks.translate" in GRAPH[f"{PACKAGE}.tasks"]  # every module of the task registry


@pytest.mark.parametrize("path", sorted((ROOT / PACKAGE).rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_650_lines(path: object) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())  # type: ignore[attr-defined]
    assert lines <= 650, f"{path} has {lines} lines; split it by job"


def _calls(path: object) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    return [n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]


def _third_party_imports(path: object) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_commands_leave_model_resolution_and_file_formats_to_the_library() -> None:
    """The CLI parses and writes; which entry, which file and how to read it is decided in the library."""
    sources = [ROOT / PACKAGE / "cli.py", *sorted((ROOT / PACKAGE / "commands").glob("*.py"))]
    for path in sources:
        assert "resolve" not in _calls(path), f"{path.name} resolves catalog names itself"
        heavy = _third_party_imports(path) & {"torch", "torchvision", "safetensors", "h5py", "numpy", "PIL"}
        assert not heavy, f"{path.name} imports {heavy}; the library does that"
        assert "os.environ" not in path.read_text(encoding="utf-8"), f"{path.name} reads the environment"


def test_only_settings_reads_ptm_variables() -> None:
    readers = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        if path.name == "settings.py":
            continue
        text = path.read_text(encoding="utf-8")
        if "os.environ" in text and '"PTM_' in text:
            readers.append(str(path.relative_to(ROOT)))
    assert not readers, f"these read PTM_ variables themselves: {readers}"


def _annotations_with_any(owner: str, function: object) -> list[str]:
    signature = inspect.signature(function)  # type: ignore[arg-type]
    found = [f"{owner}({p.name}: {p.annotation})" for p in signature.parameters.values() if "Any" in str(p.annotation)]
    if "Any" in str(signature.return_annotation):
        found.append(f"{owner} -> {signature.return_annotation}")
    return found


def test_the_public_api_says_what_it_takes_and_gives() -> None:
    """Every name ``ptm_cli`` exports is typed without ``Any``: its functions, and its classes' methods and fields."""
    import ptm_cli

    loose = []
    for name in ptm_cli.__all__:
        value = getattr(ptm_cli, name)
        if inspect.isfunction(value):
            loose += _annotations_with_any(name, value)
        elif inspect.isclass(value):
            for attribute, member in vars(value).items():
                if attribute.startswith("_") and attribute != "__init__":
                    continue
                if isinstance(member, property) and member.fget is not None:
                    loose += _annotations_with_any(f"{name}.{attribute}", member.fget)
                elif inspect.isfunction(member) or isinstance(member, classmethod | staticmethod):
                    loose += _annotations_with_any(f"{name}.{attribute}", getattr(value, attribute))
            loose += [
                f"{name}.{field}: {kind}"
                for field, kind in getattr(value, "__annotations__", {}).items()
                if not field.startswith("_") and "Any" in str(kind)
            ]
    assert not loose, f"typed with Any: {loose}"


def test_no_test_module_imports_another() -> None:
    """Shared code lives in the helper modules and shared fixtures in conftest.py, never in a test module."""
    tests = ROOT / "tests"
    modules = {path.stem for path in tests.glob("test_*.py")}
    found = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):  # from test_x import y, from . import test_x
                names = [node.module] if node.module else [alias.name for alias in node.names]
            else:
                continue
            found += [f"{path.name} imports {name}" for name in names if name.split(".")[-1] in modules]
    assert not found, f"move what these share into a helper module or conftest.py: {found}"
