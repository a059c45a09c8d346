"""The stage protocol.

Every stage is a module or package ``hfpipe/stages/<name>`` (its helpers beside it in the package) with:

- ``class Config(StageConfig)``: its recipe section (pydantic, unknown keys rejected, frozen);
- ``READS``: the upstream it consumes, a tuple of stage names and/or ``"model"`` (the latest model-producing stage
  before it, or the recipe's ``base_model`` when there is none);
- ``def run(config, inputs, out_dir) -> dict``: does the work, writes artifacts into ``out_dir`` and returns
  JSON-serialisable metrics. It never looks for its inputs anywhere but ``inputs``.
- ``def describe(config, recipe) -> dict``: what a run would do, resolved offline, for ``hfpipe run --dry-run``
  (``engine``: the library or launcher with its settings; ``expected``: the work; ``sources``/``datasets``/``tasks``);
- optionally ``preflight(config, recipe_dir)``: checks that need the stage's libraries (a pass-through argument the
  library does not know, a tracker not installed), run for every stage about to run before the first one starts;
- optionally ``RESUMABLE = True`` when a re-run after a crash may reuse what is already in ``out_dir``;
  ``input_files(config, recipe_dir) -> list[Path]`` for files whose content enters the fingerprint;
  ``CARD = {"name", "paper", "citation"}`` facts for the model card; ``headline(metrics) -> str``, the one figure
  the console shows beside the stage when it is done and in the run's summary table (``"val_loss 3.21"``);
  ``card_facts(folder, stages) -> dict`` for what the card shows of its artifacts (``section``, ``images``,
  ``hide_metrics``, ``card`` template variables); ``pins(config, recipe_dir) -> dict`` for the model, tokenizer and
  Hub dataset locations it reads, by content (``hfpipe.models.pin``);
- ``OUTPUTS`` (glob patterns of the files it writes that must come out the same), ``RESULTS`` (JSON files compared
  without their timing figures) and optionally ``NOT_COMPARED`` (metric keys that vary run to run): what ``hfpipe
  reproduce`` compares. A stage that declares none is reported "not compared".

A stage tells the console what it is doing through ``progress()`` (below): a description and, for work of a known
size, a total to advance through; the runner draws it as the stage's live line. Outside a run it does nothing.

Stage modules import only the standard library, pydantic and hfpipe at top level, so that ``hfpipe validate`` and
``hfpipe status`` stay fast; heavy libraries are imported inside ``run``.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

STAGES: tuple[str, ...] = ("data", "tokenizer", "pretrain", "sft", "preference", "rl", "eval", "deploy", "serve")
MODEL_STAGES: tuple[str, ...] = ("pretrain", "sft", "preference", "rl")


EXECUTION_ONLY = {"execution_only": True}  # Field(json_schema_extra=EXECUTION_ONLY): not in the fingerprint


class StageConfig(BaseModel):
    """Base of every stage's recipe section."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # the recipe holding this section, bound by hfpipe.recipe when it loads one: the seed and run name a section's
    # to_* methods (the upstream library's config objects, hfpipe.interop) need besides the section itself
    _recipe: Any = PrivateAttr(None)

    def result_dump(self) -> dict:
        """The section as it enters the fingerprint: every field but those marked ``EXECUTION_ONLY`` (where and how
        the work runs, proven not to change the output: e.g. the data stage's executor, byte-identical across
        local, Slurm and Ray by tests/test_cluster.py)."""
        skip = {n for n, f in type(self).model_fields.items() if (f.json_schema_extra or {}).get("execution_only")}
        return self.model_dump(mode="json", exclude=skip)

    def recipe_context(self) -> tuple[str, int, Path]:
        """(run name, seed, recipe folder) of the recipe this section was loaded in; built in code: (hfpipe, 42, .)."""
        r = self._recipe
        return (r.name, r.seed, r.recipe_dir) if r is not None else ("hfpipe", 42, Path.cwd())


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


# ----------------------------------------------------------------------------------------------------------------
# Progress: what a running stage is doing, for the console's live line


class Reporter:
    """Receives a stage's progress; the base class ignores it (a stage run outside ``hfpipe run``, a test). The
    console (hfpipe.runner.Console) subclasses it and draws the live line."""

    def update(self, description: str | None, total: float | None, advance: float, completed: float | None,
               unit: str | None) -> None:
        pass


_reporters: list[tuple[int, Reporter]] = [(os.getpid(), Reporter())]


def progress(description: str | None = None, *, total: float | None = None, advance: float = 0,
             completed: float | None = None, unit: str | None = None) -> None:
    """Report what the running stage is doing. A ``description`` starts a new piece of work (what it is doing,
    "training"), with its ``total`` (None: size unknown) in ``unit`` ("steps", "docs", "requests") from 0 or from
    ``completed``; without one, moves the current work on by ``advance`` or to ``completed``. Cheap enough to call per
    document. Calls from another process (a forked datatrove worker) or when nothing listens do nothing."""
    pid, reporter = _reporters[-1]
    if pid == os.getpid():
        reporter.update(description, total, advance, completed, unit)


class reporting:
    """``with reporting(reporter):`` sends this process's ``progress()`` calls to ``reporter`` (the runner, around
    each stage)."""

    def __init__(self, reporter: Reporter):
        self.entry = (os.getpid(), reporter)

    def __enter__(self):
        _reporters.append(self.entry)
        return self.entry[1]

    def __exit__(self, *exc):
        _reporters.remove(self.entry)


# report_to name -> (the module its integration imports, what to pip install); shared by every training stage
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio")}
Tracker = Literal["tensorboard", "wandb", "trackio"]


def check_trackers(names, key: str) -> None:
    """A one-line error naming the package to install (``key``: the recipe key), before any training starts."""
    import importlib.util

    from hfpipe.errors import HfpipeError

    for name in names:
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None and not (name == "tensorboard" and importlib.util.find_spec("tensorboardX")):
            raise HfpipeError(f"{key}: '{name}' is not installed; `pip install {package}` or remove it from report_to", 2)


def load_module(stage: str):
    return importlib.import_module(f"hfpipe.stages.{stage}")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
