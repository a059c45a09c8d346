"""The recipe: one YAML file, one pydantic model per stage, unknown keys rejected.

    name: tiny            # runs/<name>/..., model_cards/<name>.md
    seed: 1234
    extends: base.yaml    # optional: deep-merged underneath this file
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct   # optional: start from an existing model
    data: {...}           # any subset of the stages, run in pipeline order
    tokenizer: {...}
    ...

Command-line overrides are ``key.path=value`` (the value is parsed as YAML): ``pretrain.learning_rate=3e-4``.
Every problem becomes one ``RecipeError`` line naming the file, the YAML line and the key path, with a close-match
suggestion for a misspelt key.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator

from hfpipe.errors import RecipeError
from hfpipe.stages.data.contamination import fill_decontamination_tasks
from hfpipe.stages import STAGES, BaseModelRef, load_module


class CardConfig(BaseModel):
    """Facts for the model card that no stage can know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    license: str | None = Field(None, description="SPDX id of the model's licence, e.g. apache-2.0 (None = not stated)")
    language: list[str] = Field(default_factory=list, description="ISO 639-1 codes of the languages the model targets")
    tags: list[str] = Field(default_factory=list, description="extra Hub tags")
    intended_use: str | None = Field(None, description="what the model is for, one paragraph")
    limitations: str | None = Field(None, description="what it is not for / known failure modes")


class RecipeBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="run name: runs/<name>/ and model_cards/<name>.md", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(42, ge=0, description="global seed; every stage derives its RNG state from it")
    description: str = Field("", description="one line for humans")
    base_model: BaseModelRef | None = Field(None, description="existing model (Hub id, folder or package:<pkg>) that post-training starts from when there is no pretrain stage")
    card: CardConfig = Field(default_factory=CardConfig)

    _path: Path | None = PrivateAttr(default=None)

    @field_validator("base_model", mode="before")
    @classmethod
    def _base_model_from_string(cls, v):
        return {"name_or_path": v} if isinstance(v, str) else v

    @property
    def path(self) -> Path | None:
        """The recipe file this was loaded from (None when built in code)."""
        return self._path

    @property
    def recipe_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    def stages(self) -> list[str]:
        """The stages this recipe runs, in pipeline order."""
        return [s for s in STAGES if getattr(self, s, None) is not None]

    def to_yaml(self) -> str:
        """The fully resolved recipe (defaults filled in), loadable again by load_recipe."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False, allow_unicode=True)

    @classmethod
    def load(cls, path_or_card: str | Path, overrides: list[str] = ()) -> RecipeBase:
        """The public entry point: a recipe file (.yaml), or the recipe embedded in an hfpipe model card (.md, or the
        folder holding its README.md), validated, with ``key=value`` overrides. Each stage section then gives the
        objects its library takes, the ones hfpipe's own stage builds: ``recipe.sft.to_trl()`` (trl.SFTConfig),
        ``recipe.preference.to_trl()``, ``recipe.rl.to_trl()``, ``recipe.pretrain.to_transformers()``,
        ``recipe.pretrain.to_accelerate()``, ``recipe.eval.to_lm_eval()``, ``recipe.data.to_datatrove()``."""
        path = Path(path_or_card)
        if path.is_dir() or path.suffix.lower() == ".md":
            from hfpipe.reproduce import load_card_recipe

            return load_card_recipe(path, overrides)[0]
        return load_recipe(path, overrides)

    def bind_sections(self) -> RecipeBase:
        """Tell every stage section which recipe holds it (its seed and run name, for the sections' to_* methods)."""
        for stage in STAGES:
            section = getattr(self, stage, None)
            if section is not None:
                section._recipe = self
        return self


def _stage_fields() -> dict[str, Any]:
    fields = {}
    for stage in STAGES:
        try:
            module = load_module(stage)
        except ModuleNotFoundError as e:
            if e.name != f"hfpipe.stages.{stage}":
                raise
            continue  # stage not implemented in this version
        fields[stage] = (module.Config | None, Field(None, description=(module.__doc__ or "").strip().splitlines()[0]))
    return fields


Recipe = create_model("Recipe", __base__=RecipeBase, **_stage_fields())


# ----------------------------------------------------------------------------------------------------------------
# YAML loading with line numbers


def _read_yaml(path: Path) -> tuple[dict, dict[tuple, int]]:
    """Parse one YAML file: its mapping and a {key path: line number} index for error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read recipe: {e}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of keys (name, seed, stages...), got {type(data).__name__}")
    lines: dict[tuple, int] = {}

    def walk(n, prefix):
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = prefix + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[prefix + (i,)] = v.start_mark.line + 1
                walk(v, prefix + (i,))

    walk(node, ())
    return data, lines


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, list[tuple[Path, dict]]]:
    """Load a recipe file with its `extends:` chain merged; also the line index of every file, most specific first."""
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: 'extends' forms a cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    data, lines = _read_yaml(path)
    files = [(path, lines)]
    base = data.pop("extends", None)
    if base is None:
        return data, files
    if not isinstance(base, str):
        raise RecipeError(f"{path}:{lines.get(('extends',), '?')}: extends: expected a recipe file path")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.is_file():
        raise RecipeError(f"{path}:{lines.get(('extends',), '?')}: extends: file not found: {base_path}")
    base_data, base_files = _load_tree(base_path, seen + (path,))
    return _deep_merge(base_data, data), files + base_files


def parse_override(text: str) -> tuple[list[str], Any]:
    """'pretrain.learning_rate=3e-4' -> (['pretrain', 'learning_rate'], 3e-4)."""
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key.strip()):
        raise RecipeError(f"override '{text}': expected key.path=value, e.g. pretrain.learning_rate=3e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def _apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise RecipeError(f"override {'.'.join(keys)}: '{'.'.join(keys[:i + 1])}' is not a section")
        node = node[k]
    node[keys[-1]] = value


# ----------------------------------------------------------------------------------------------------------------
# Errors: one line, key path, YAML line, suggestion


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model whose field the error location points into (to suggest close matches)."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation):
    """Optional[X] / X | None -> X; list[X] -> X."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return _unwrap(args[0]) if args else annotation
    return annotation


def _format_error(err: dict, files: list[tuple[Path, dict]], overrides: set[tuple]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    key = ".".join(str(p) for p in loc) or "<recipe>"
    where = "command line" if loc in overrides else None
    if where is None:
        for path, lines in files:
            probe = loc
            while probe and probe not in lines:
                probe = probe[:-1]
            if probe:
                where = f"{path}:{lines[probe]}"
                break
        where = where or str(files[0][0])
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        choices = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), choices, n=1, cutoff=0.6)
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else (
            f"; valid keys here: {', '.join(choices)}" if choices else "")
        return f"{where}: unknown key '{key}'{hint}"
    msg = err["msg"]
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict | list) and len(repr(value)) < 80 else ""
    return f"{where}: {key}: {msg}{shown}"


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RecipeBase:
    """Load, merge `extends`, apply `key=value` overrides, validate. Raises RecipeError (exit code 2)."""
    path = Path(path)
    data, files = _load_tree(path)
    override_keys = set()
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
        override_keys.add(tuple(keys))
    fill_decontamination_tasks(data)  # the eval plan's registry tasks -> data/sft/preference/rl decontamination
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        first = _format_error(errors[0], files, override_keys)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise RecipeError(first + more) from None
    recipe._path = path.resolve()
    return recipe.bind_sections()


def recipe_from_yaml(text: str, source_path: Path) -> RecipeBase:
    """Validate a recipe given as YAML text (e.g. read back from a model card), as if it lived at source_path."""
    data = yaml.safe_load(text) or {}
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{source_path}: {_format_error(e.errors()[0], [(source_path, {})], set())}") from None
    recipe._path = Path(source_path).resolve()
    return recipe.bind_sections()


def json_schema() -> dict:
    """The JSON schema of a recipe (for `hfpipe schema`, editors and agents)."""
    return Recipe.model_json_schema()
