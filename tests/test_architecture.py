"""The shape of the code: imports run one way, each module keeps to one job, the CLI only translates.

The import graph is read from the source, so imports inside functions, under
TYPE_CHECKING and through importlib all count.
"""

from __future__ import annotations

import ast

import pytest
from helpers import ROOT
from importgraph import PACKAGE, cycles, graph

# Bottom to top. A module may import modules of lower layers only; inside one
# subpackage (tensorio, hub, commands) its modules may also import each other,
# without cycles. The layer names say what each owns.
LAYERS: list[tuple[str, set[str]]] = [
    ("compiled kernels", {"_resample"}),
    ("facts", {"version", "errors", "output", "nets"}),
    ("the environment", {"settings"}),
    ("devices and models", {"device", "modeling"}),
    ("process memory", {"heap"}),
    ("writing files", {"fsutil"}),
    ("formats and colour", {"formats", "colour"}),
    ("JPEG structure", {"jpegdata"}),
    ("reading files", {"imageio", "tensorio", "tensorio.formats", "tensorio.torchfile", "tensorio.h5",
               "tensorio.safetensors_io", "tensorio.loading", "tensorio.inspection", "tensorio.convert"}),
    ("network and preprocessing", {"download", "transforms"}),
    ("catalog and the pins store", {"catalog", "pins"}),
    ("cache, inputs and networks", {"weights", "inputs", "cyclegan"}),
    ("registry", {"architectures"}),
    ("engines", {"classify", "translate", "imagejobs"}),
    ("results page", {"report"}),
    ("hub", {"hub", "hub.repos", "hub.trust", "hub.sandbox", "hub.classifier"}),
    ("ready models", {"loading", "doctor"}),
    ("warm server", {"serve", "serve.protocol", "serve.client", "serve.warm", "serve.server"}),
    ("batch jobs", {"batch", "batch.job", "batch.shardfile", "batch.worker", "batch.run", "batch.local_engine",
                    "batch.ray_engine", "batch.spark_engine"}),
    ("commands", {"commands", "commands.common", "commands.options", "commands.classify", "commands.translate",
                  "commands.models", "commands.weights", "commands.hub", "commands.doctor", "commands.completion",
                  "commands.progress", "commands.remote", "commands.serve", "commands.batch", "commands.records",
                  "commands.quick", "commands.root"}),
    ("the command line", {"cli"}),
    ("entry points", {"__main__", ""}),
]  # fmt: skip

GRAPH = graph(ROOT)


def _short(module: str) -> str:
    return module.removeprefix(PACKAGE).lstrip(".")


def _layer_of() -> dict[str, int]:
    return {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}


def test_every_module_has_a_layer() -> None:
    layers = _layer_of()
    missing = sorted(_short(m) for m in GRAPH if _short(m) not in layers)
    assert not missing, f"add these modules to LAYERS: {missing}"
    gone = sorted(set(layers) - {_short(m) for m in GRAPH})
    assert not gone, f"LAYERS names modules that no longer exist: {gone}"


def test_there_are_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_imports_only_go_down() -> None:
    layers = _layer_of()
    upward = []
    for module, targets in GRAPH.items():
        here = _short(module)
        for target in targets:
            there = _short(target)
            same_package = ("." in here or "." in there) and here.split(".")[0] == there.split(".")[0]
            if layers[there] > layers[here] or (layers[there] == layers[here] and not same_package):
                upward.append(f"{here} -> {there}")
    assert not upward, f"imports that do not go down a layer: {sorted(upward)}"


def test_the_graph_sees_imports_in_functions_and_importlib(tmp_path: pytest.TempPathFactory) -> None:
    """The walker itself: a function-level import and the package's lazy table both count."""
    assert f"{PACKAGE}.classify" in GRAPH[f"{PACKAGE}.commands.classify"]  # imported inside the command body
    assert f"{PACKAGE}.loading" in GRAPH[PACKAGE]  # through importlib, from the _LAZY table


@pytest.mark.parametrize("path", sorted((ROOT / PACKAGE).rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_much_over_600_lines(path: object) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())  # type: ignore[attr-defined]
    assert lines <= 620, f"{path} has {lines} lines; split it by job"


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
