"""The layout is the architecture: one package per stage, a small engine at the top, no import cycles.

    python -m pytest tests/test_layout.py -v
"""

import ast
from pathlib import Path

from hfpipe import runner
from hfpipe.stages import STAGES, load_module

PACKAGE = Path(runner.__file__).resolve().parent
STAGE_PREFIXES = tuple(f"{s}_" for s in STAGES) + ("_pretrain", "deploy_", "rl_", "tokenizer_", "eval_")


def modules() -> dict[str, Path]:
    """Every hfpipe module by dotted name (the lm-eval task helpers in hfpipe/tasks/ are package data, not modules)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[0] == "tasks":
            continue
        parts = ("hfpipe", *rel.parts[:-1]) if rel.name == "__init__" else ("hfpipe", *rel.parts)
        out[".".join(parts)] = path
    return out


def test_top_level_is_small_and_has_no_stage_prefixes():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    names = [p.stem for p in PACKAGE.rglob("*.py")]
    assert not [n for n in names if n.startswith(STAGE_PREFIXES)], names


def test_every_stage_is_a_package_or_module_with_the_protocol():
    for stage in STAGES:
        module = load_module(stage)
        for name in ("Config", "READS", "run", "describe"):
            assert hasattr(module, name), f"hfpipe.stages.{stage} lacks {name}"
        assert "hfpipe run recipes/" in module.__doc__ and f"--only {stage}" in module.__doc__, stage


def test_no_import_cycle_inside_hfpipe():
    """Module-level imports between hfpipe modules form no cycle (importing a submodule runs its packages first)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: function-level imports are lazy
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name and not name.startswith(d + ".")}
    assert graph["hfpipe.runner"], "the graph is empty: the test reads nothing"
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
