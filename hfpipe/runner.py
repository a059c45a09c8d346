"""The runner: knows only the stage protocol — order, fingerprints, skip, atomic completion, logs, one lock.

A stage's fingerprint is the sha256 of the canonical JSON of what went in: its resolved config, the global seed,
the fingerprints of the stages it reads, the content hash of the files it reads, the base model it starts from,
the source of its module and the versions of hfpipe and the libraries it drives. Output goes to
``runs/<recipe>/<stage>-<fingerprint[:12]>/``. A stage runs in ``.<stage>-<fp12>.partial/`` and is promoted with
one ``os.rename`` after ``manifest.json`` is written: a folder without ``.partial`` and with a manifest is finished.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import hfpipe
from hfpipe.errors import HfpipeError, first_line
from hfpipe.resources import cache_dir, package_dir
from hfpipe.stages import MODEL_STAGES, STAGES, Inputs, load_module, read_manifest

log = logging.getLogger("hfpipe")

_PACKAGE_DIR = package_dir().resolve()


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


@dataclass(frozen=True)
class Closure:
    """What a stage's module runs, computed from the source (nothing listed by hand): the hfpipe source files in
    the transitive closure of its ``hfpipe.*`` imports (function-level ones included), the package data those files
    reach through ``hfpipe.resources.package_file``, and the top-level names of the other libraries they import."""

    sources: tuple[Path, ...]
    data: tuple[Path, ...]
    libraries: tuple[str, ...]


def _module_file(name: str) -> Path | None:
    """The source file of an hfpipe module name (``hfpipe.a.b`` -> hfpipe/a/b.py or hfpipe/a/b/__init__.py)."""
    if name.split(".")[0] != "hfpipe":
        return None
    base = _PACKAGE_DIR.joinpath(*name.split(".")[1:])
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=None)
def _scan(path: Path) -> tuple[frozenset[str], frozenset[Path], frozenset[str]]:
    """(hfpipe modules a source file imports, with their parent packages since importing ``hfpipe.a.b`` runs
    ``hfpipe/a/__init__.py``; package data it names as ``package_file(DATASETS, "x.jsonl")``; other top-level
    modules it imports). ``from hfpipe.a import b`` may name a submodule: both readings are kept."""
    import ast

    from hfpipe import resources

    names: set[str] = set()
    data: set[Path] = set()
    package = ".".join(("hfpipe", *path.relative_to(_PACKAGE_DIR).with_suffix("").parts))
    package = package.removesuffix(".__init__") if path.name == "__init__.py" else package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import
                mod = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [mod])])
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "package_file":
            parts = [a.value if isinstance(a, ast.Constant) else getattr(resources, getattr(a, "id", ""), None)
                     for a in node.args]
            if parts and all(isinstance(x, str) for x in parts):
                data.add(resources.package_file(*parts))
    ours, others = set(), set()
    for name in filter(None, names):
        parts = name.split(".")
        if parts[0] == "hfpipe":
            ours.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
            others.add(parts[0])
    return frozenset(ours), frozenset(data), frozenset(others)


@functools.lru_cache(maxsize=None)
def closure(module_name: str) -> Closure:
    seen: dict[str, Path] = {}
    data: set[Path] = set()
    libraries: set[str] = set()
    todo = ["hfpipe", module_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:  # an attribute imported from a module (from hfpipe.x import func), not a module
            continue
        seen[name] = path
        ours, reads, others = _scan(path)
        todo.extend(ours - seen.keys())
        data |= reads
        libraries |= others
    files = {f for d in data for f in ([d] if d.is_file() else d.rglob("*"))
             if f.is_file() and "__pycache__" not in f.parts}
    return Closure(tuple(sorted(set(seen.values()))), tuple(sorted(files)), tuple(sorted(libraries)))


def code_files(module_name: str) -> list[Path]:
    """Every hfpipe file a stage's result depends on: its import closure's sources and the package data they read."""
    c = closure(module_name)
    return [*c.sources, *c.data]


def code_hash(module) -> str:
    """sha256 over (package-relative path, content) of every file of code_files(module); a stage module outside
    hfpipe (a plugin, a test's fake) counts with its own file."""
    h = hashlib.sha256()
    for p in code_files(module.__name__):
        h.update(p.relative_to(_PACKAGE_DIR).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    if not module.__name__.startswith("hfpipe.") and getattr(module, "__file__", None):
        h.update(Path(module.__file__).name.encode() + b"\0" + Path(module.__file__).read_bytes())
    return h.hexdigest()


def _dist_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group(0).lower().replace("_", "-").replace(".", "-")


def _holds_distributions(folder: str) -> bool:
    try:
        return any(e.name.endswith((".dist-info", ".egg-info")) for e in os.scandir(folder))
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def _installed() -> dict:
    """Facts about the installed distributions: {"names": {import name: [distribution]}, "versions": {distribution:
    version}, "requires": {distribution: [requirement]}}. Reading every distribution's metadata takes ~1 s, so the facts
    are cached on disk until a sys.path folder changes (an install, upgrade or uninstall rewrites it)."""
    folders = [os.path.abspath(p or ".") for p in sys.path]
    signature = [[p, os.stat(p).st_mtime_ns] for p in folders if _holds_distributions(p)]
    cache = cache_dir() / "installed.json"
    try:
        facts = json.loads(cache.read_text())
        if facts["signature"] == signature:
            return facts
    except (OSError, ValueError, KeyError, TypeError):
        pass
    facts = {"signature": signature, "versions": {}, "requires": {},
             "names": {k: [_dist_name(d) for d in v] for k, v in metadata.packages_distributions().items()}}
    for dist in metadata.distributions():
        name = _dist_name(dist.metadata["Name"] or "")
        if name and name not in facts["versions"]:  # the first on sys.path is the one imported
            facts["versions"][name], facts["requires"][name] = dist.version, list(dist.requires or ())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(json.dumps(facts))
        os.replace(tmp, cache)
    except OSError:  # a read-only home: recomputed next time
        pass
    return facts


def _requirements(dist: str, base_only: bool = False) -> set[str]:
    """The distributions ``dist`` requires (``base_only``: leaving out its optional extras)."""
    return {_dist_name(r) for r in _installed()["requires"].get(dist, ()) if not (base_only and "extra ==" in r)}


def library_versions(module_name: str) -> dict[str, str]:
    """Versions of the libraries a stage's code imports, and of those libraries' own requirements that hfpipe also
    depends on (datatrove's word tokenizers use spacy; transformers' loading uses safetensors): computed from the
    import closure, so a library that can change the stage's result is in its fingerprint and its card."""
    ours = _requirements("hfpipe", base_only=True)
    facts = _installed()
    direct = {d for name in closure(module_name).libraries for d in facts["names"].get(name, ())}
    dists = direct.union(*(_requirements(d) & ours for d in direct))
    return {"python": platform.python_version(), **{d: facts["versions"][d] for d in sorted(dists)
                                                      if d in facts["versions"]}}


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


def _pins(module, config, recipe, uses_base: bool) -> dict[str, dict]:
    """What the model, tokenizer and Hub dataset locations a stage reads are, by content (hfpipe.models.pin): the
    recipe's base_model when the stage starts from it, and whatever the stage's ``pins(config, recipe_dir)`` adds."""
    out = {}
    if uses_base and recipe.base_model is not None:
        from hfpipe.models import pin

        ref = recipe.base_model
        out["base_model"] = pin(ref.name_or_path, recipe.recipe_dir, revision=ref.revision, gguf_file=ref.gguf_file)
    getter = getattr(module, "pins", None)
    if getter is not None:
        out.update(getter(config, recipe.recipe_dir))
    return out


def unpinned(key: dict) -> list[str]:
    """The recipe keys of a stage whose Hub locations resolve to no commit: its result may change under it."""
    return sorted(k for k, v in (key.get("pins") or {}).items() if isinstance(v, dict) and v.get("unpinned"))


def plan(recipe, runs_dir: Path) -> list[StagePlan]:
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
        pins = _pins(module, config, recipe, uses_base)
        key = {
            "stage": name,
            "config": config.model_dump(mode="json"),
            "seed": recipe.seed,
            "upstream": upstream,
            "files": files,
            "base_model": recipe.base_model.model_dump(mode="json") if uses_base and recipe.base_model else None,
            "pins": pins,
            "code": code_hash(module),
            "versions": library_versions(module.__name__),
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
    changed = [k for k in ("config", "seed", "upstream", "files", "base_model", "pins", "code", "versions")
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
    plans = plan(recipe, runs_dir)
    dead = {}
    for folder, _why in garbage(plans):
        dead.setdefault(folder.name.lstrip(".").split("-")[0], []).append(folder)
    for p in plans:
        others = [f for f in p.folder.parent.glob(f"{p.name}-*") if f != p.folder and read_manifest(f)]
        state = "done" if p.done else ("stale" if others else "pending")
        rows.append({"stage": p.name, "status": state, "fingerprint": p.fingerprint, "path": str(p.folder),
                     "unpinned": unpinned(p.key), "stale_folders": len(dead.get(p.name, [])),
                     "stale_bytes": sum(folder_bytes(f) for f in dead.get(p.name, []))})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Garbage: finished folders of configs the recipe no longer plans, work folders of runs that died


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def garbage(plans: list[StagePlan]) -> list[tuple[Path, str]]:
    """(folder, why) of everything in the run folder that no current fingerprint points to: finished folders of other
    configs (``<stage>-<fp12>``), ``.partial`` work folders (except a resumable stage's current one, which holds its
    checkpoints) and ``.old`` folders a --force left behind. Stage names the recipe does not plan are left alone."""
    if not plans:
        return []
    root = plans[0].folder.parent
    current = {p.folder.name: p for p in plans}
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        name = folder.name
        stage = name.lstrip(".").split("-")[0]
        if not folder.is_dir() or stage not in STAGES:
            continue
        if name.endswith(".partial"):
            keep = current.get(name[1:].removesuffix(".partial"))
            if keep is None or not getattr(keep.module, "RESUMABLE", False):
                out.append((folder, "work folder of a run that did not finish"))
        elif name.endswith(".old"):
            out.append((folder, "left behind by --force"))
        elif name not in current and read_manifest(folder) is not None:
            out.append((folder, "finished with a config the recipe no longer has"))
    return out


def gc(recipe, runs_dir: Path, dry_run: bool = False) -> list[dict]:
    """Remove (or with ``dry_run`` list) the garbage of a recipe's run folder; holds the run lock, so never while the
    recipe runs. Returns one row per folder: path, bytes, why."""
    plans = plan(recipe, runs_dir)
    rows = []
    with RunLock(run_root(recipe, runs_dir)):
        for folder, why in garbage(plans):
            rows.append({"path": str(folder), "bytes": folder_bytes(folder), "why": why})
            if not dry_run:
                shutil.rmtree(folder)
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
        raise HfpipeError(f"stage {p.name} failed: {type(e).__name__}: {first_line(e, empty='')} (traceback in {partial / 'stage.log'})") from e
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
