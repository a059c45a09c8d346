"""Package data: every file hfpipe ships and reads (accelerate configs, lm-eval tasks, bundled datasets, templates),
reached one way, through ``importlib.resources``, so an installed wheel finds them as a checkout does.

    from hfpipe.resources import package_file
    package_file("templates", "chat_template.jinja")
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ACCELERATE = "accelerate"  # accelerate launch config files (ddp, fsdp, deepspeed_zero3, single)
DATASETS = "datasets"  # bundled post-training and tokenizer sets (hfpipe:<file> in a recipe)
TASKS = "tasks"  # hfpipe's own lm-eval tasks (an --include_path folder)
TEMPLATES = "templates"  # the default chat template and the model card template


def cache_dir() -> Path:
    """Where hfpipe keeps caches that only save time (file digests, facts about the installed libraries):
    ``$HFPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/hfpipe``, else ``~/.cache/hfpipe``. Deleting it loses nothing."""
    import os

    base = os.environ.get("HFPIPE_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "hfpipe")
    return Path(base).expanduser()


def package_dir() -> Path:
    """The folder of the installed hfpipe package."""
    return Path(str(resources.files("hfpipe")))


def package_file(*parts: str) -> Path:
    """A file or folder shipped inside hfpipe, e.g. ``package_file(TASKS)`` or ``package_file(DATASETS, "x.jsonl")``."""
    return package_dir().joinpath(*parts)
