"""The package imports only downward, and has no import cycle (function-level imports included).

config → reference/kernels → backends → methods → plan/stats → api → integrations
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rrattention"

# Top-level modules and subpackages of rrattention, lowest layer first; a module may import its own
# layer and the layers below it.
LAYERS = [
    {"config", "_checks", "crossover", "policy", "timing", "graphs"},
    {"reference", "kernels"},
    {"backends"},
    {"methods"},
    {"plan", "stats"},
    {"api", "varlen"},
    {"integrations", "paddle", "assets", "__init__"},  # the package namespace re-exports every layer (and rr.hf)
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rrattention"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "rrattention":
                continue
            for alias in node.names:  # `from . import api` names a submodule
                sub = f"{module}.{alias.name}"
                found.add(sub if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else module)
    return found - {name}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1] if len(parts) > 1 else "__init__"]


def test_every_module_has_a_layer():
    assert all(_layer(m) is not None for m in _graph())


def test_imports_only_go_down():
    upward = [f"{src} → {dst}" for src, dsts in _graph().items() for dst in dsts if _layer(dst) > _layer(src)]
    assert not upward, "imports against the layering: " + ", ".join(sorted(upward))


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for dst in sorted(graph.get(module, ())):
            if dst == "rrattention" and module != "rrattention":
                continue  # importing a submodule runs the package __init__ first: not an edge of ours
            if state.get(dst) == 1:
                return [*path, module, dst]
            if dst not in state and (cycle := visit(dst, [*path, module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            return cycle
    return None


def test_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_checks_can_fail():
    graph = _graph()
    graph["rrattention.config"] = graph["rrattention.config"] | {"rrattention.api"}  # api → … → config → api
    assert _find_cycle(graph) is not None
    assert any(_layer(dst) > _layer(src) for src, dsts in graph.items() for dst in dsts)
