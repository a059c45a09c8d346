"""The stage protocol.

Every stage is a module or package ``hfpipe/stages/<name>`` (its helpers beside it in the package) with:

- ``class Config(StageConfig)``: its recipe section (pydantic, unknown keys rejected, frozen);
- ``READS``: the upstream it consumes, a tuple of stage names and/or ``"model"`` (the latest model-producing stage
  before it, or the recipe's ``base_model`` when there is none);
- ``def run(config, inputs, out_dir) -> dict``: does the work, writes artifacts into ``out_dir`` and returns
  JSON-serialisable metrics. It never looks for its inputs anywhere but ``inputs``.
- ``def describe(config, recipe) -> dict``: what a run would do, resolved offline, for ``hfpipe run --dry-run``
  (``engine``: the library or launcher with its settings; ``expected``: the work; ``sources``/``datasets``/``tasks``);
- optionally ``RESUMABLE = True`` when a re-run after a crash may reuse what is already in ``out_dir``;
  ``input_files(config, recipe_dir) -> list[Path]`` for files whose content enters the fingerprint;
  ``CARD = {"name", "paper", "citation"}`` facts for the model card.

Stage modules import only the standard library, pydantic and hfpipe at top level, so that ``hfpipe validate`` and
``hfpipe status`` stay fast; heavy libraries are imported inside ``run``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

STAGES: tuple[str, ...] = ("data", "tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy", "serve")
MODEL_STAGES: tuple[str, ...] = ("pretrain", "sft", "preference", "rl")


class StageConfig(BaseModel):
    """Base of every stage's recipe section."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelRef(BaseModel):
    """An existing model to start from: a Hub id or a local folder, optionally a GGUF file inside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name_or_path: str
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False


def resolve_path(p: str | Path, recipe_dir: Path) -> Path:
    """A path written in a recipe: ``~`` expanded; relative paths are relative to the recipe file's folder."""
    p = Path(p).expanduser()
    return p if p.is_absolute() else Path(recipe_dir) / p


@dataclass(frozen=True)
class Inputs:
    """What the runner hands a stage: resolved upstream folders and recipe-level context."""

    recipe_name: str
    seed: int
    recipe_dir: Path
    upstream: dict[str, Path] = field(default_factory=dict)  # stage name -> its finished output folder
    manifests: dict[str, dict] = field(default_factory=dict)  # stage name -> its manifest.json
    model_stage: str | None = None  # which upstream stage provides "model", if any
    base_model: BaseModelRef | None = None
    fingerprint: str = ""  # this stage's own fingerprint
    recipe_yaml: str = ""  # the fully resolved recipe as YAML (for the model card)

    def path(self, p: str | Path) -> Path:
        """Resolve a path written in the recipe (see resolve_path)."""
        return resolve_path(p, self.recipe_dir)

    def model_dir(self) -> Path | None:
        """The folder holding the upstream model (``<stage>/model``, saved with save_pretrained), if any."""
        return self.upstream[self.model_stage] / "model" if self.model_stage else None


def load_module(stage: str):
    return importlib.import_module(f"hfpipe.stages.{stage}")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
