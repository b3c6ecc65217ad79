"""The import contract: cli -> run -> tools (quantization, exporters, evaluation, benchmarking, calibration) ->
runtimes -> core, never back up, and no import cycle anywhere in src/qdeploy. Function-level imports count too: a
lazy import is still a dependency. Pure: reads the source, imports nothing of qdeploy's."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "qdeploy"
# Top to bottom; a module may import from its own layer or any layer below. The root package (`qdeploy.load`, the
# public entry point) sits with the CLI.
LAYERS = {
    "cli": {"qdeploy", "__main__", "cli", "cli_bench", "cli_docs", "cli_parsers", "cli_progress", "cli_run",
            "cli_table"},
    "run": {"pipeline", "work", "baseline", "executors", "storage", "package", "report", "inspect_layers",
            "predictor", "claims"},
    "tools": {"quantization", "exporters", "evaluation", "benchmarking", "calibration"},
    "runtimes": {"runtimes"},
    "core": {"artifact", "config", "engine_files", "errors", "formats", "gguf_source", "layer_plan", "layer_plan_graph",
             "machine", "models", "plan", "progress", "registry", "tasks", "textdata"},
}
ORDER = list(LAYERS)
CONSTANTS = {"__version__"}  # read from the root package by anyone: a string, not a dependency on the CLI


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                for alias in node.names:
                    if alias.name in CONSTANTS:
                        continue
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def _layer(module: str) -> str:
    top = module.split(".")[1] if "." in module else module
    for layer, members in LAYERS.items():
        if top in members:
            return layer
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_import_layers.py")


def test_every_import_goes_down_the_layers():
    edges = _edges(_modules())
    upward = [f"{a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, targets in sorted(edges.items())
              for b in sorted(targets) if ORDER.index(_layer(b)) < ORDER.index(_layer(a))]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = _edges(_modules())
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles
