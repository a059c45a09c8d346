"""The runner: knows only the stage protocol — order, fingerprints, skip, atomic completion, logs, one lock, and the
console that shows a run (one live line per stage, the libraries' output into its stage.log, a summary table).

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
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import hfpipe
from hfpipe.errors import HfpipeError, first_line
from hfpipe.resources import cache_dir, package_dir
from hfpipe.stages import MODEL_STAGES, STAGES, Inputs, Reporter, load_module, read_manifest, reporting

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


# Protocol functions that say what a stage does or did (dry run, card, pins, the console's headline, `hfpipe
# inspect`) but take no part in what it produces: what they import is not code the stage runs.
NOT_RESULT = ("describe", "card_facts", "pins", "headline", "inspect")


def _result_nodes(tree):
    """Every node of a module's syntax tree except the bodies of its top-level NOT_RESULT functions."""
    import ast

    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(c for c in ast.iter_child_nodes(node)
                     if not (node is tree and isinstance(c, ast.FunctionDef) and c.name in NOT_RESULT))


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
    for node in _result_nodes(ast.parse(path.read_bytes(), str(path))):
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


# Libraries that only decide where the work runs, as the execution-only recipe keys do (data.executor: ray writes
# byte-identical output, tests/test_cluster.py): not in a fingerprint, so that installing the hfpipe[ray] extra does
# not make every data stage (and all after it) stale
EXECUTION_ENGINES = frozenset({"ray"})


def library_versions(module_name: str) -> dict[str, str]:
    """Versions of the libraries a stage's code imports, and of those libraries' own requirements that hfpipe also
    depends on (datatrove's word tokenizers use spacy; transformers' loading uses safetensors): computed from the
    import closure, so a library that can change the stage's result is in its fingerprint and its card."""
    ours = _requirements("hfpipe", base_only=True)
    facts = _installed()
    direct = {d for name in closure(module_name).libraries for d in facts["names"].get(name, ())} - EXECUTION_ENGINES
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


def _site_dirs() -> list[Path]:
    """Where installed packages live (the venv's site-packages, the user's): a file there is keyed by its path inside."""
    import site
    import sysconfig

    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.add(site.getusersitepackages())
    return [Path(d).resolve() for d in sorted(dirs)]


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
        elif site := next((d for d in _site_dirs() if resolved.is_relative_to(d)), None):  # data of an installed
            rel = f"site-packages:{resolved.relative_to(site)}"  # package (HumanEval): the same key in any venv
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
            "config": config.result_dump(),
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


def _run_stage(p: StagePlan, recipe, plans: dict[str, StagePlan], console) -> dict:
    partial = p.folder.parent / f".{p.folder.name}.partial"
    if partial.exists() and not getattr(p.module, "RESUMABLE", False):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    upstream = {s: plans[s].folder for s in p.upstream}
    inputs = Inputs(recipe_name=recipe.name, seed=recipe.seed, recipe_dir=recipe.recipe_dir, upstream=upstream,
                    manifests={s: read_manifest(f) for s, f in upstream.items()}, model_stage=p.model_stage,
                    base_model=recipe.base_model, fingerprint=p.fingerprint, recipe_yaml=recipe.to_yaml())
    stage_log = partial / "stage.log"
    handler = logging.FileHandler(stage_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    started = time.time()
    try:  # the libraries' output (fd 1/2, loguru, tqdm, subprocesses) goes to stage.log; progress to the live line
        with console.capture(stage_log), reporting(console):
            metrics = _check_metrics(p.name, p.module.run(p.config, inputs, partial))
    except HfpipeError as e:
        with stage_log.open("a") as f:
            f.write(f"stage {p.name} failed: {e}\n")
        raise HfpipeError(f"stage {p.name}: {e}", e.exit_code) from e
    except Exception as e:  # a library failed: full traceback into the stage log, one line for the user
        stage_log.open("a").write(traceback.format_exc())
        raise HfpipeError(f"stage {p.name} failed: {type(e).__name__}: {first_line(e, empty='')} "
                          f"(traceback in {stage_log})") from e
    finally:
        root_logger.removeHandler(handler)
        handler.close()
    _portable_log(stage_log, partial, p.folder.parent)
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


def _portable_log(log: Path, stage_folder: Path, run_folder: Path) -> None:
    """A finished stage's stage.log without this machine's paths, like every file promoted with it: what the
    libraries printed names the stage folder as ".", the run folder as ".." and the home folder as "~"."""
    try:
        text = log.read_bytes()
    except OSError:
        return
    for path, short in ((stage_folder, "."), (run_folder, ".."), (Path.home(), "~")):
        for form in sorted({str(path.absolute()), str(path.resolve())}, key=len, reverse=True):
            text = text.replace(form.encode() + b"/", short.encode() + b"/")
            if path != Path.home():  # "/root" alone may begin another name ("/rootfs")
                text = text.replace(form.encode(), short.encode())
    log.write_bytes(text)


def headline(module, metrics: dict | None) -> str:
    """The stage's one figure for the console and the summary (its module's ``headline(metrics)``; "" without one,
    or when the metrics lack what it reads)."""
    fn = getattr(module, "headline", None)
    if fn is None or not metrics:
        return ""
    try:
        return str(fn(metrics))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return ""


def run(recipe, runs_dir: Path, only=None, start=None, until=None, force=(), console=None) -> list[dict]:
    """Run the recipe: skip finished stages, run the rest in order. Returns one row per stage of the recipe:
    stage, action (ran / skipped / not selected), path, and for finished stages wall_s and headline. ``console``
    (Console, below) draws each running stage; by default plain lines on stderr, output not captured."""
    console = console if console is not None else Console()
    plans = {p.name: p for p in plan(recipe, runs_dir)}
    names = list(plans)
    selected = _select(names, only, start, until)
    force = set(names if "all" in force else force)
    for s in force - set(names):
        raise HfpipeError(f"--force {s}: not a stage of this recipe (it has: {', '.join(names)})", 2)
    rows = []
    with RunLock(run_root(recipe, runs_dir)):
        # every stage that will run checks what it can before the first one starts (trackers installed, pass-through
        # arguments known to the library): a typo fails in seconds, not after hours of earlier stages
        for name in selected:
            p = plans[name]
            if (not p.done or name in force) and hasattr(p.module, "preflight"):
                p.module.preflight(p.config, recipe.recipe_dir)
        for i, name in enumerate(names, 1):
            p = plans[name]
            tag = f"[{i}/{len(names)}] {name}"
            if name not in selected or (p.done and name not in force):
                action = "not selected" if name not in selected else "skipped"
                log.debug("%s: %s (%s)", tag, action, p.fingerprint[:12])
                m = read_manifest(p.folder) if p.done else None
                rows.append({"stage": name, "action": action, "path": str(p.folder),
                             "wall_s": m.get("wall_s") if m else None,
                             "headline": headline(p.module, m.get("metrics")) if m else ""})
                continue
            missing = [s for s in p.upstream if not plans[s].done]
            if missing:
                raise HfpipeError(f"stage {name} reads {', '.join(missing)}, which has not finished with the current "
                                  f"recipe; run without --only/--from first", 2)
            why = "forced" if name in force else stale_reason(p)
            console.start(tag, p.fingerprint, why, p.folder)
            t0 = time.time()
            try:
                manifest = _run_stage(p, recipe, plans, console)
            except BaseException as e:  # the error itself is the CLI's one line
                partial = p.folder.parent / f".{p.folder.name}.partial"
                console.failed(tag, time.time() - t0, partial / "stage.log", stopped=not isinstance(e, Exception))
                raise
            line = headline(p.module, manifest["metrics"])
            console.done(tag, manifest["wall_s"], line, p.folder, why)
            rows.append({"stage": name, "action": "ran", "wall_s": manifest["wall_s"], "path": str(p.folder),
                         "headline": line})
    return rows


def finished_stages(recipe, runs_dir: Path) -> dict[str, Path]:
    """Stage -> folder for every stage of the recipe finished with the current fingerprint."""
    return {p.name: p.folder for p in plan(recipe, runs_dir) if p.done}


def setup_logging(console=None) -> None:
    """The ``hfpipe`` logger on ``console`` (Console, below; default: plain lines on stderr)."""
    handler = ConsoleHandler(console if console is not None else Console())
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = True


# ----------------------------------------------------------------------------------------------------------------
# The console: what `hfpipe run` shows. While a stage runs, file descriptors 1 and 2 point at
# ``<stage folder>/stage.log`` (``Console.capture``): whatever datatrove (loguru), transformers, TRL, lm-eval,
# accelerate or uvicorn print or log, and every subprocess the stage starts, lands there. hfpipe's own lines go to a
# copy of the terminal's stderr taken before any capture:
#
# - on a terminal, one line per stage, redrawn in place: the stage, what it is doing (``hfpipe.stages.progress``) and,
#   for work of a known size, a bar with the rate and the time left (tqdm's ``format_meter``; tqdm comes with
#   transformers, datatrove and lm-eval); then ``done in``, the stage's headline figure and its folder;
# - elsewhere (a pipe, a CI log), a ``running`` and a ``done`` line per stage and, for long stages, a progress line
#   every ``heartbeat_s`` seconds;
# - at the end, the summary table (``summary_lines``).
#
# ``verbose`` (``hfpipe run -v``) also shows every line written to stage.log, above the live line. hfpipe's own
# warnings (the ``hfpipe`` logger, WARNING and above) are shown either way; its errors are the CLI's one line.

PREFIX = "hfpipe | "
_BAR = "{desc}{percentage:3.0f}% {bar:20} {n_fmt}/{total_fmt}{unit} · {rate_noinv_fmt} · {remaining} left"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Console(Reporter):
    """hfpipe's lines on ``stream``. ``live``: redraw the running stage's line in place (a terminal); ``capture``:
    send fd 1/2 into the stage's log while it runs (the CLI; in-process callers such as tests leave them alone)."""

    def __init__(self, stream=None, *, live: bool = False, capture: bool = False, verbose: bool = False,
                 heartbeat_s: float = 60.0, refresh_s: float = 0.2):
        self.stream = stream if stream is not None else sys.stderr
        self.live, self.capturing, self.verbose = live, capture, verbose
        self.heartbeat_s, self.refresh_s = heartbeat_s, refresh_s
        self._lock = threading.RLock()
        self._stage: _StageLine | None = None
        self._drawn = False  # a live line is on the screen, unfinished
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @classmethod
    def terminal(cls, verbose: bool = False) -> "Console":
        """The CLI's console: a duplicate of stderr (it stays the terminal while a stage's fd 2 points at its log),
        live when that is a terminal."""
        try:
            stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
        except (OSError, ValueError, AttributeError):  # a stderr without a file descriptor (in-process callers)
            return cls(sys.stderr, verbose=verbose)
        live = stream.isatty() and os.environ.get("TERM") != "dumb"
        return cls(stream, live=live, capture=True, verbose=verbose)

    @property
    def in_stage(self) -> bool:
        return self._stage is not None

    # ------------------------------------------------------------------------------------------------------------
    # lines

    def line(self, text: str) -> None:
        """A finished line, above the live one (which is drawn again below it)."""
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self._redraw()
            self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def _redraw(self) -> None:
        if self.live and self._stage is not None:
            self.stream.write("\r" + self._fit(self._stage.render()) + "\x1b[K")
            self._drawn = True

    def _fit(self, text: str) -> str:
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 120  # 0: a terminal that sets no size
        except (OSError, ValueError, AttributeError):
            width = 120
        return text if len(text) < width else text[: max(width - 2, 10)] + "…"

    # ------------------------------------------------------------------------------------------------------------
    # a stage

    def start(self, tag: str, fingerprint: str, why: str, folder: Path) -> None:
        with self._lock:
            self._stage = _StageLine(tag, why)
            if not self.live:
                self.line(f"{PREFIX}{tag}: running ({fingerprint[:12]}; {why}) -> {folder}")
            else:
                self._redraw()
                self.stream.flush()
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="hfpipe-console", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        """Keeps the live line's clock moving while the stage is busy in a library; off a terminal, a progress line
        every heartbeat_s seconds."""
        last = time.monotonic()
        while not self._stop.wait(self.refresh_s if self.live else 1.0):
            with self._lock:
                if self._stage is None:
                    return
                if self.live:
                    self._redraw()
                    self.stream.flush()
                elif time.monotonic() - last >= self.heartbeat_s:
                    last = time.monotonic()
                    self.line(self._stage.render())

    def update(self, description, total, advance, completed, unit) -> None:  # hfpipe.stages.progress()
        stage = self._stage
        if stage is not None:
            with self._lock:
                stage.update(description, total, advance, completed, unit)

    def _finish(self, text: str) -> None:
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()
        with self._lock:
            self._stage = None
            self.line(text)

    def done(self, tag: str, wall_s: float, headline: str, folder: Path, why: str) -> None:
        parts = [f"{PREFIX}{tag}: done in {wall_s:.1f}s", headline, str(folder)]
        reran = f" ({why})" if self.live and why not in ("never run",) else ""
        self._finish(" · ".join(p for p in parts if p) + reran)

    def failed(self, tag: str, wall_s: float, log_path: Path, stopped: bool = False) -> None:
        self._finish(f"{PREFIX}{tag}: {'stopped' if stopped else 'failed'} after {wall_s:.1f}s (log: {log_path})")

    # ------------------------------------------------------------------------------------------------------------
    # the libraries' output -> the stage's log

    @contextmanager
    def capture(self, log_path: Path):
        """fd 1 and 2 (this process's and every child's) append to ``log_path`` inside the block; with ``verbose``
        its lines are shown as well. Nothing happens unless the console was made with ``capture=True``."""
        if not self.capturing:
            yield
            return
        for s in (sys.stdout, sys.stderr):
            s.flush()
        saved = os.dup(1), os.dup(2)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        tail = _Tail(log_path, self) if self.verbose else None
        try:
            yield
        finally:
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except (OSError, ValueError):
                    pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if tail is not None:
                tail.stop()


class _StageLine:
    """What the live line of one stage says: its tag, and the piece of work it reports (description, done/total)."""

    def __init__(self, tag: str, why: str):
        self.tag, self.description = tag, f"running ({why})"
        self.total: float | None = None
        self.n = self.initial = 0.0
        self.unit = ""
        self.since = time.monotonic()

    def update(self, description, total, advance, completed, unit) -> None:
        if description is not None:
            self.description, self.total, self.unit = description, total, unit or ""
            self.n = self.initial = completed or 0
            self.since = time.monotonic()
        elif completed is not None:
            self.n = completed
        if advance:
            self.n += advance

    def render(self) -> str:
        from tqdm import tqdm

        elapsed = time.monotonic() - self.since
        head = f"{PREFIX}{self.tag}: {self.description} "
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            n = min(self.n, self.total)
            return tqdm.format_meter(n, self.total, elapsed, prefix=head, unit=unit, bar_format=_BAR,
                                     initial=self.initial)
        clock = tqdm.format_interval(elapsed)
        if self.n:
            rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0
            return f"{head}{self.n:,.0f}{unit} · {rate:.2f}{unit}/s · {clock}"
        return f"{head}· {clock}"


class _Tail:
    """``hfpipe run -v``: a thread copying the lines appended to a stage's log onto the console."""

    def __init__(self, path: Path, console: Console):
        self.path, self.console = path, console
        self.offset = path.stat().st_size if path.exists() else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hfpipe-log-tail", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = b""
        while True:
            stopping = self._stop.wait(0.2)
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            self.offset += len(data)
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                text = _ANSI.sub("", raw.decode("utf-8", "replace")).split("\r")[-1].rstrip()
                if text:
                    self.console.line(text)
            if stopping:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ConsoleHandler(logging.Handler):
    """The ``hfpipe`` logger on the console. Inside a stage its records go to stage.log (the root logger's file
    handler the runner adds); only warnings and errors are also shown, and with -v nothing here (the log is shown)."""

    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        if self.console.in_stage and (self.console.verbose or record.levelno < logging.WARNING):
            return
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never fail the run
            self.handleError(record)
            return
        warning = "warning: " if record.levelno >= logging.WARNING else ""
        self.console.line(f"{PREFIX}{warning}{text}")


# ----------------------------------------------------------------------------------------------------------------
# the summary table


def summary_lines(rows: list[dict], card: Path | None) -> list[str]:
    """The run's summary: per stage, what happened (ran / skipped / not selected), its wall time, its headline
    figure and its folder; then the card."""
    table = [("stage", "result", "wall", "headline", "folder")]
    for r in rows:
        wall = r.get("wall_s")
        if isinstance(wall, (int, float)):
            wall = f"{wall:.1f}s" if r["action"] == "ran" else f"({wall:.1f}s)"
        else:
            wall = "-"
        table.append((r["stage"], r["action"], wall, r.get("headline") or "-", r.get("path", "")))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    out = ["  ".join([*(c.ljust(w) if i != 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))), row[4]])
           for row in table]
    if any(r["action"] != "ran" and isinstance(r.get("wall_s"), (int, float)) for r in rows):
        out.append("() = the wall time of the earlier run whose result this one reuses (same fingerprint)")
    out.append(f"model card: {card}" if card else "model card: none (no stage has finished)")
    return out
