"""The runner: knows only the stage protocol — order, fingerprints, skip, atomic completion, logs, one lock.

A stage's fingerprint is the sha256 of the canonical JSON of what went in: its resolved config, the global seed,
the fingerprints of the stages it reads, the content hash of the files it reads, the base model it starts from,
the source of its module and the versions of hfpipe and the libraries it drives. Output goes to
``runs/<recipe>/<stage>-<fingerprint[:12]>/``. A stage runs in ``.<stage>-<fp12>.partial/`` and is promoted with
one ``os.rename`` after ``manifest.json`` is written: a folder without ``.partial`` and with a manifest is finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import hfpipe
from hfpipe.errors import HfpipeError
from hfpipe.stages import MODEL_STAGES, STAGES, Inputs, load_module, read_manifest

log = logging.getLogger("hfpipe")

LIBRARIES = ("torch", "transformers", "tokenizers", "accelerate", "datasets", "datatrove", "trl", "peft", "lm_eval",
             "huggingface_hub", "safetensors")
_PACKAGE_DIR = Path(__file__).resolve().parent
_SHARED_CODE = (Path(__file__).parent / "modeling.py", Path(__file__).parent / "stages" / "__init__.py")


# ----------------------------------------------------------------------------------------------------------------
# Hashing


def canonical_json(obj) -> str:
    """Deterministic JSON; refuses anything that is not plain JSON (a fingerprint never degrades silently)."""

    def reject(o):
        raise TypeError(f"not JSON-serialisable in a fingerprint: {type(o).__name__}")

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=reject, allow_nan=False)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "hfpipe": hfpipe.__version__}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib.replace("_", "-"))
        except metadata.PackageNotFoundError:
            pass
    return out


def code_hash(module) -> str:
    h = hashlib.sha256()
    for p in (Path(module.__file__), *_SHARED_CODE):
        h.update(p.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The plan: which stages, what they read, their fingerprints — computed without running anything


@dataclass
class StagePlan:
    name: str
    module: object
    config: object
    upstream: dict[str, str]  # stage -> fingerprint it reads
    model_stage: str | None
    files: dict[str, str]  # recipe-relative path -> sha256
    fingerprint: str
    folder: Path
    key: dict = field(repr=False)  # everything that entered the fingerprint

    @property
    def done(self) -> bool:
        m = read_manifest(self.folder)
        return m is not None and m.get("fingerprint") == self.fingerprint


def run_root(recipe, runs_dir: Path) -> Path:
    return Path(runs_dir) / recipe.name


def _file_hashes(module, config, recipe) -> dict[str, str]:
    getter = getattr(module, "input_files", None)
    if getter is None:
        return {}
    out = {}
    for p in getter(config, recipe.recipe_dir):
        p = Path(p)
        if not p.is_file():
            raise HfpipeError(f"{p}: input file not found", 2)
        resolved = p.resolve()
        if resolved.is_relative_to(_PACKAGE_DIR):  # data shipped inside hfpipe: same key wherever it is installed
            rel = f"hfpipe:{resolved.relative_to(_PACKAGE_DIR)}"
        else:
            rel = os.path.relpath(resolved, recipe.recipe_dir.resolve())
            if rel.startswith(os.path.join("..", "..")):  # far outside the recipe's project: content counts, not place
                rel = f"external:{resolved.parent.name}/{resolved.name}"
        out[rel] = sha256_file(p)
    return out


def plan(recipe, runs_dir: Path) -> list[StagePlan]:
    versions = library_versions()
    root = run_root(recipe, runs_dir)
    plans: dict[str, StagePlan] = {}
    for name in recipe.stages():
        module = load_module(name)
        config = getattr(recipe, name)
        reads = getattr(module, "READS", ())
        earlier = [s for s in STAGES[: STAGES.index(name)] if s in plans]
        model_stage = next((s for s in reversed(earlier) if s in MODEL_STAGES), None) if "model" in reads else None
        upstream_names = [s for s in reads if s in plans] + ([model_stage] if model_stage else [])
        upstream = {s: plans[s].fingerprint for s in dict.fromkeys(upstream_names)}
        files = _file_hashes(module, config, recipe)
        uses_base = "model" in reads and model_stage is None
        key = {
            "stage": name,
            "config": config.model_dump(mode="json"),
            "seed": recipe.seed,
            "upstream": upstream,
            "files": files,
            "base_model": recipe.base_model.model_dump(mode="json") if uses_base and recipe.base_model else None,
            "code": code_hash(module),
            "versions": versions,
        }
        fp = hashlib.sha256(canonical_json(key).encode()).hexdigest()
        plans[name] = StagePlan(name, module, config, upstream, model_stage, files, fp, root / f"{name}-{fp[:12]}", key)
    return list(plans.values())


def stale_reason(p: StagePlan) -> str:
    """Why a stage must run, DVC-style: compared with the newest earlier run of the same stage."""
    older = sorted(p.folder.parent.glob(f"{p.name}-*"), key=lambda f: f.stat().st_mtime, reverse=True)
    prev = next((m for f in older if f != p.folder and (m := read_manifest(f))), None)
    if prev is None or "key" not in prev:
        return "never run"
    changed = [k for k in ("config", "seed", "upstream", "files", "base_model", "code", "versions")
               if prev["key"].get(k) != p.key.get(k)]
    if "config" in changed:
        a, b = prev["key"]["config"], p.key["config"]
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        changed[changed.index("config")] = "config (" + ", ".join(f"{p.name}.{k}" for k in keys) + ")"
    if "upstream" in changed:
        ups = [s for s in p.key["upstream"] if prev["key"]["upstream"].get(s) != p.key["upstream"][s]]
        changed[changed.index("upstream")] = "upstream " + ", ".join(ups)
    return "changed: " + "; ".join(changed) if changed else "previous run incomplete"


def status(recipe, runs_dir: Path) -> list[dict]:
    rows = []
    for p in plan(recipe, runs_dir):
        others = [f for f in p.folder.parent.glob(f"{p.name}-*") if f != p.folder and read_manifest(f)]
        state = "done" if p.done else ("stale" if others else "pending")
        rows.append({"stage": p.name, "status": state, "fingerprint": p.fingerprint, "path": str(p.folder)})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The lock: one run of a recipe at a time. flock is released by the kernel when a process dies, so a lock left by a
# crashed or killed run is never stale; the pid written inside only serves the message.


class RunLock:
    def __init__(self, root: Path):
        self.path = root / ".lock"
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise HfpipeError(f"{self.path.parent.name}: already being run by {holder} (lock {self.path}); "
                              "wait for it to finish or stop it", 2) from None
        previous = os.pread(self.fd, 200, 0).decode(errors="replace").strip()
        if previous:
            log.info("cleared a lock left by %s, which is no longer running", previous)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {platform.node()}".encode(), 0)
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ----------------------------------------------------------------------------------------------------------------
# Running


def _select(stages: list[str], only, start, until) -> list[str]:
    for s in [*(only or []), start, until]:
        if s is not None and s not in stages:
            raise HfpipeError(f"stage '{s}' is not in this recipe (it has: {', '.join(stages)})", 2)
    if only:
        return [s for s in stages if s in only]
    lo = stages.index(start) if start else 0
    hi = stages.index(until) + 1 if until else len(stages)
    return stages[lo:hi]


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_metrics(stage: str, metrics) -> dict:
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise HfpipeError(f"stage {stage}: run() must return a dict of metrics, got {type(metrics).__name__}")
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise HfpipeError(f"stage {stage}: metric {k} is {v}")
    canonical_json(metrics)
    return metrics


def _run_stage(p: StagePlan, recipe, plans: dict[str, StagePlan]) -> dict:
    partial = p.folder.parent / f".{p.folder.name}.partial"
    if partial.exists() and not getattr(p.module, "RESUMABLE", False):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    upstream = {s: plans[s].folder for s in p.upstream}
    inputs = Inputs(recipe_name=recipe.name, seed=recipe.seed, recipe_dir=recipe.recipe_dir, upstream=upstream,
                    manifests={s: read_manifest(f) for s, f in upstream.items()}, model_stage=p.model_stage,
                    base_model=recipe.base_model, fingerprint=p.fingerprint, recipe_yaml=recipe.to_yaml())
    handler = logging.FileHandler(partial / "stage.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    started = time.time()
    try:
        metrics = _check_metrics(p.name, p.module.run(p.config, inputs, partial))
    except HfpipeError as e:
        log.error("stage %s failed: %s", p.name, e)
        raise HfpipeError(f"stage {p.name}: {e}", e.exit_code) from e
    except Exception as e:  # a library failed: full traceback into the stage log, one line for the user
        (partial / "stage.log").open("a").write(traceback.format_exc())
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise HfpipeError(f"stage {p.name} failed: {type(e).__name__}: {first} (traceback in {partial / 'stage.log'})") from e
    finally:
        root_logger.removeHandler(handler)
        handler.close()
    wall = time.time() - started
    manifest = {
        "stage": p.name,
        "fingerprint": p.fingerprint,
        "config": p.key["config"],
        "inputs": {"upstream": p.upstream, "files": p.files, "base_model": p.key["base_model"]},
        "metrics": metrics,
        "wall_s": round(wall, 3),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "versions": p.key["versions"],
        "hfpipe_version": hfpipe.__version__,
        "key": p.key,
    }
    _write_json_atomic(partial / "manifest.json", manifest)
    if p.folder.exists():  # --force: the old result goes away only once the new one is complete
        trash = p.folder.parent / f".{p.folder.name}.old"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(p.folder, trash)
        os.rename(partial, p.folder)
        shutil.rmtree(trash)
    else:
        os.rename(partial, p.folder)
    fd = os.open(p.folder.parent, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return manifest


def run(recipe, runs_dir: Path, only=None, start=None, until=None, force=()) -> list[dict]:
    """Run the recipe: skip finished stages, run the rest in order. Returns one row per stage of the recipe."""
    plans = {p.name: p for p in plan(recipe, runs_dir)}
    names = list(plans)
    selected = _select(names, only, start, until)
    force = set(names if "all" in force else force)
    for s in force - set(names):
        raise HfpipeError(f"--force {s}: not a stage of this recipe (it has: {', '.join(names)})", 2)
    rows = []
    with RunLock(run_root(recipe, runs_dir)):
        for i, name in enumerate(names, 1):
            p = plans[name]
            tag = f"[{i}/{len(names)}] {name}"
            if name not in selected:
                rows.append({"stage": name, "action": "not selected", "path": str(p.folder)})
                continue
            if p.done and name not in force:
                log.info("%s: up to date (%s) - skipped", tag, p.fingerprint[:12])
                rows.append({"stage": name, "action": "skipped", "path": str(p.folder)})
                continue
            missing = [s for s in p.upstream if not plans[s].done]
            if missing:
                raise HfpipeError(f"stage {name} reads {', '.join(missing)}, which has not finished with the current "
                                  f"recipe; run without --only/--from first", 2)
            why = "forced" if name in force else stale_reason(p)
            log.info("%s: running (%s; %s) -> %s", tag, p.fingerprint[:12], why, p.folder)
            manifest = _run_stage(p, recipe, plans)
            log.info("%s: done in %.1fs", tag, manifest["wall_s"])
            rows.append({"stage": name, "action": "ran", "wall_s": manifest["wall_s"], "path": str(p.folder)})
    return rows


def finished_stages(recipe, runs_dir: Path) -> dict[str, Path]:
    """Stage -> folder for every stage of the recipe finished with the current fingerprint."""
    return {p.name: p.folder for p in plan(recipe, runs_dir) if p.done}


def setup_logging(verbose: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hfpipe | %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO if verbose else logging.WARNING)
    log.propagate = True
