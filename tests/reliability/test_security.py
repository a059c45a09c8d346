"""Recipes cannot execute code: no eval/exec of strings in hfpipe (the code-eval sandbox is the one reviewed
exception, and it runs model-written code in a separate, audited process), no unsafe YAML or pickle loading, no
shell strings, and trust_remote_code is False unless the recipe sets it, everywhere a model or tokenizer is loaded.

    python -m pytest -q tests/reliability/test_security.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "hfpipe"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))
# The one place allowed to exec: the code-eval sandbox's child process template (see hfpipe/stages/eval/sandbox.py's docstring).
EXEC_ALLOWED = {"sandbox.py"}


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else (f"{getattr(f.value, 'id', '?')}.{f.attr}"
                                                           if isinstance(f, ast.Attribute) else "?")
            yield name, node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_eval_exec_unsafe_load_or_shell(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for name, node in calls(tree):
        where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
        if name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile") and path.name not in EXEC_ALLOWED:
            bad.append(f"{where}: {name}()")
        if name in ("yaml.unsafe_load", "yaml.full_load", "pickle.load", "pickle.loads", "marshal.loads",
                    "os.system", "os.popen"):
            bad.append(f"{where}: {name}()")
        if name == "yaml.load":
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            text = ast.unparse(loader) if loader is not None else ""
            if loader is None or any(u in text for u in ("FullLoader", "UnsafeLoader", "yaml.Loader")):
                bad.append(f"{where}: yaml.load without a safe Loader ({text or 'none'})")
        if name == "torch.load":
            wo = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append(f"{where}: torch.load without weights_only=True")
        for k in node.keywords:
            if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                bad.append(f"{where}: {name}(shell=...)")
            if k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is True:
                bad.append(f"{where}: trust_remote_code=True hard-coded")
    # string-built kwargs dicts too: {"trust_remote_code": True}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and isinstance(v, ast.Constant) \
                        and v.value is True:
                    bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: trust_remote_code=True hard-coded")
    assert not bad, bad


def test_trust_remote_code_is_off_unless_the_recipe_says_so(tmp_path):
    from hfpipe.recipe import load_recipe
    from hfpipe.stages import BaseModelRef

    assert BaseModelRef.model_fields["trust_remote_code"].default is False
    p = tmp_path / "r.yaml"
    p.write_text("name: r\nbase_model: some/model\n")
    assert load_recipe(p).base_model.trust_remote_code is False
    p.write_text("name: r\nbase_model: {name_or_path: some/model, trust_remote_code: true}\n")
    assert load_recipe(p).base_model.trust_remote_code is True
    # every source that passes trust_remote_code to a loader takes it from the recipe's base_model reference
    for path in SOURCES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "trust_remote_code" in line and ("from_pretrained" in line or '"trust_remote_code":' in line):
                if line.split(":", 1)[-1].strip().rstrip(",}").startswith('"'):
                    continue  # a key-name mapping (hfpipe import: TRL's argument -> base_model's key), not a value
                assert "ref.trust_remote_code" in line or ".trust_remote_code" in line.split(":", 1)[-1], line


def test_recipe_yaml_tags_cannot_build_python_objects(tmp_path):
    """A recipe is data: YAML tags that construct Python objects are refused (safe_load), one line, exit 2."""
    from hfpipe.errors import RecipeError
    from hfpipe.recipe import load_recipe

    marker = tmp_path / "pwned"
    p = tmp_path / "r.yaml"
    p.write_text(f"name: r\ndescription: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert not marker.exists()
    assert "r.yaml:2" in str(e.value) and "\n" not in str(e.value)
