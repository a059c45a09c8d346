"""Recipe schema: unknown keys rejected with suggestions, YAML lines, overrides, extends, every shipped recipe loads.

    python -m pytest tests/test_recipe.py -v
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hfpipe.errors import RecipeError
from hfpipe.recipe import Recipe, load_recipe, parse_override

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.stages()
    # the resolved YAML loads back to the same recipe (the card embeds it)
    again = Recipe.model_validate(yaml.safe_load(recipe.to_yaml()))
    assert again.model_dump() == recipe.model_dump()


def test_misspelt_key_names_path_line_and_suggestion(tmp_path):
    p = write(tmp_path, "name: x\npretrain:\n  learning_rat: 0.001\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p.resolve()}:3" in msg and "pretrain.learning_rat" in msg and "did you mean 'pretrain.learning_rate'" in msg
    assert "\n" not in msg and e.value.exit_code == 2


def test_misspelt_stage_name_suggested(tmp_path):
    p = write(tmp_path, "name: x\npretrian: {}\n")
    with pytest.raises(RecipeError, match="did you mean 'pretrain'"):
        load_recipe(p)


def test_wrong_type_names_key_and_value(tmp_path):
    p = write(tmp_path, "name: x\nseed: twelve\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:2: seed: .*integer.*'twelve'"):
        load_recipe(p)


def test_out_of_range_value(tmp_path):
    p = write(tmp_path, "name: x\npretrain:\n  learning_rate: -1\n")
    with pytest.raises(RecipeError, match=r":3: pretrain.learning_rate: .*greater than"):
        load_recipe(p)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden"])
def test_recipe_name_cannot_be_a_path(tmp_path, bad):
    p = write(tmp_path, f"name: '{bad}'\n")
    with pytest.raises(RecipeError, match="name"):
        load_recipe(p)


def test_yaml_syntax_error_has_line(tmp_path):
    p = write(tmp_path, "name: x\npretrain:\n  learning_rate: [1, 2\n")
    with pytest.raises(RecipeError, match=r"r\.yaml:\d+:\d+: invalid YAML"):
        load_recipe(p)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError, match="YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_overrides_parse_and_apply(tmp_path):
    p = write(tmp_path, "name: x\npretrain:\n  learning_rate: 0.001\n")
    r = load_recipe(p, ["pretrain.learning_rate=3e-4", "seed=7"])
    assert r.pretrain.learning_rate == pytest.approx(3e-4) and r.seed == 7
    assert parse_override("eval.tasks=[a, b]") == (["eval", "tasks"], ["a", "b"])
    with pytest.raises(RecipeError, match="command line: unknown key 'pretrain.lr'"):
        load_recipe(p, ["pretrain.lr=1"])
    with pytest.raises(RecipeError, match="expected key.path=value"):
        load_recipe(p, ["pretrain.learning_rate"])


def test_extends_merges_deeply_and_detects_cycles(tmp_path):
    write(tmp_path, "name: base\nseed: 3\npretrain:\n  learning_rate: 0.001\n  warmup_steps: 0\n  max_steps: 5\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\nname: child\npretrain:\n  max_steps: 9\n", "child.yaml")
    r = load_recipe(child)
    assert (r.name, r.seed, r.pretrain.learning_rate, r.pretrain.max_steps) == ("child", 3, 0.001, 9)
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    bad = write(tmp_path, "extends: base.yaml\nname: c\npretrain:\n  max_stepz: 9\n", "c.yaml")
    with pytest.raises(RecipeError, match=r"c\.yaml:4: unknown key 'pretrain.max_stepz'"):
        load_recipe(bad)


def test_base_model_string_shorthand(tmp_path):
    r = load_recipe(write(tmp_path, "name: x\nbase_model: org/model\n"))
    assert r.base_model.name_or_path == "org/model" and r.base_model.gguf_file is None


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "hfpipe.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_misspelt_key_exits_2_with_one_line(tmp_path):
    p = write(tmp_path, "name: x\ntokenizer:\n  vocab_sise: 100\n")
    res = _cli("run", str(p), cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'tokenizer.vocab_size'" in lines[0] and "Traceback" not in res.stderr


def test_cli_validate_and_schema(tmp_path):
    res = _cli("validate", str(REPO / "recipes" / "tiny.yaml"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout
    res = _cli("schema", cwd=tmp_path)
    schema = json.loads(res.stdout)
    assert {"name", "seed", "data", "tokenizer", "pretrain", "sft", "preference", "eval", "deploy"} <= set(schema["properties"])
    res = _cli("schema", "pretrain", cwd=tmp_path)
    assert res.returncode == 0 and json.loads(res.stdout)["section"] == "pretrain"
