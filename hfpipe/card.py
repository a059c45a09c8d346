"""The model card: a pure function over finished stage folders. Offline: no network, no ``RepoCard.validate()``.

``build_card(recipe_name, recipe_yaml, stages)`` reads each folder's ``manifest.json``, plus what each stage says of
its own artifacts through its ``card_facts(folder, stages)`` (tables, images, eval scores), and renders the Jinja template
``hfpipe/templates/model_card.md`` through huggingface_hub's ``ModelCard.from_template``. ``write_card`` saves it and
copies the curve images beside it. ``read_card`` gives back the recipe YAML and every stage's full fingerprint from a
hidden JSON block: what ``hfpipe reproduce <card>`` needs. Missing facts render as HTML comments, never as made-up values.
"""

from __future__ import annotations

import json
import math
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hfpipe
from hfpipe.errors import HfpipeError
from hfpipe.resources import TEMPLATES, package_dir, package_file
from hfpipe.stages import MODEL_STAGES, STAGES, load_module, read_manifest

TEMPLATE = package_file(TEMPLATES, "model_card.md")
# The only metadata keys a card may carry (a subset of the Hub's model card spec).
METADATA_KEYS = frozenset({"license", "license_name", "license_link", "language", "datasets", "base_model", "tags",
                           "pipeline_tag", "library_name", "model-index"})
REPRO_RE = re.compile(r"<!-- hfpipe-reproduce\n(.*?)\n-->", re.S)
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHAT_STAGES = ("sft", "preference", "rl")
MAX_TABLE_ROWS = 25  # longer tables (e.g. per-source stats) are cut, with a comment saying how many rows were left out


# ----------------------------------------------------------------------------------------------------------------------
# Formatting helpers

def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _manifest(folder: Path) -> dict[str, Any]:
    m = read_manifest(folder)
    return m if isinstance(m, dict) else {}


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any) -> str:
    """One markdown table cell."""
    if isinstance(v, float):  # 4 decimals in the usual range (0.2625, 4321.5), 4 significant digits outside it
        s = f"{v:.4f}".rstrip("0").rstrip(".") if v == 0 or 1e-3 <= abs(v) < 1e6 else f"{v:.4g}"
    elif isinstance(v, (dict, list)):
        s = json.dumps(v, sort_keys=True)
        s = s if len(s) <= 80 else s[:77] + "..."
    else:
        s = str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def kv_rows(d: dict) -> tuple[list[tuple[str, str]], int]:
    """(key, value) rows of a flattened dict, at most MAX_TABLE_ROWS, and how many were left out."""
    flat = list(_flatten(d).items())
    return [(fmt(k), fmt(v)) for k, v in flat[:MAX_TABLE_ROWS]], max(0, len(flat) - MAX_TABLE_ROWS)


def tables(stats: dict) -> list[dict]:
    """stats.json as tables: a list of records or a mapping of records becomes one table each, scalars one table."""
    tables, scalars = [], {}
    for name, value in stats.items():
        records = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else None
        if records and all(isinstance(r, dict) for r in records):
            keys = list(dict.fromkeys(k for r in records for k in r))
            label = [] if isinstance(value, list) else [fmt(name)]
            rows = [([fmt(k)] if label else []) + [fmt(r.get(k, "")) for r in [rec] for k in keys]
                    for k, rec in (value.items() if isinstance(value, dict) else [(None, r) for r in value])]
            tables.append({"title": name, "header": label + [fmt(k) for k in keys], "rows": rows[:MAX_TABLE_ROWS],
                           "cut": max(0, len(rows) - MAX_TABLE_ROWS)})
        else:
            scalars[name] = value
    if scalars:
        rows, cut = kv_rows(scalars)
        tables.append({"title": "totals", "header": ["statistic", "value"], "rows": [list(r) for r in rows], "cut": cut})
    return tables


def _wall(s: Any) -> str | None:
    if not is_number(s):
        return None
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside text."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


# ----------------------------------------------------------------------------------------------------------------------
# Facts from the recipe, the stage folders and the environment

def _recipe_meta(recipe_yaml: str, recipe_dir: Path | None) -> dict[str, Any]:
    """license / language / datasets (top level or under ``card:``) and base_model, only as the recipe declares them."""
    import yaml

    try:
        recipe = yaml.safe_load(recipe_yaml) if recipe_yaml else {}
    except yaml.YAMLError:
        recipe = {}
    recipe = recipe if isinstance(recipe, dict) else {}
    section = recipe.get("card") if isinstance(recipe.get("card"), dict) else {}
    meta = {k: section.get(k, recipe.get(k)) for k in ("license", "license_name", "license_link", "language", "datasets")}
    meta = {k: v for k, v in meta.items() if isinstance(v, (str, list)) and v}
    if "datasets" in meta:
        meta["datasets"] = [d for d in ([meta["datasets"]] if isinstance(meta["datasets"], str) else meta["datasets"])
                            if isinstance(d, str) and HUB_ID_RE.match(d)] or None
    for key in ("intended_use", "limitations"):
        meta[key] = section.get(key) if isinstance(section.get(key), str) else None
    meta["tags"] = [t for t in section.get("tags") or [] if isinstance(t, str)]
    base = recipe.get("base_model")
    base = base.get("name_or_path") if isinstance(base, dict) else base
    meta["base_model_declared"] = base if isinstance(base, str) else None
    is_local = isinstance(base, str) and recipe_dir is not None and (Path(recipe_dir) / base).expanduser().exists()
    meta["base_model"] = base if isinstance(base, str) and HUB_ID_RE.match(base) and not is_local else None
    return meta


def _stage_module(stage: str):
    try:
        return load_module(stage) if stage in STAGES else None
    except ImportError:
        return None


def _stage_facts(stage: str, folder: Path, stages: dict[str, Path], asset_prefix: str,
                 assets: dict[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the stage's entry in the card, the template variables it adds). What a stage's own artifacts say comes from
    its ``card_facts(folder, stages)`` (see hfpipe.stages): ``section`` (merged into the entry), ``images``
    ({kind: file}, copied beside the card), ``hide_metrics`` (shown elsewhere), ``card`` (template variables)."""
    from hfpipe.runner import unpinned

    module = _stage_module(stage)
    hook = getattr(module, "card_facts", None)
    own = hook(folder, stages) if hook is not None else {}
    manifest = _manifest(folder)
    shown = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else None
    if shown and own.get("hide_metrics"):
        shown = {k: v for k, v in shown.items() if k not in own["hide_metrics"]}
    metrics, cut = kv_rows(shown) if shown is not None else ([], 0)
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    method = next((config[k] for k in ("method", "loss_type", "algorithm") if isinstance(config.get(k), str)), None)
    facts = {"name": stage, "has_manifest": bool(manifest), "fingerprint": manifest.get("fingerprint"),
             "wall": _wall(manifest.get("wall_s")), "metrics": metrics, "metrics_cut": cut, "method": method,
             "stats": None, "curves": None, "mixture": None, "cite": None, "tokenizer_report": None,
             "unpinned": unpinned(manifest.get("key") or {}),
             **own.get("section", {})}
    for kind, src in own.get("images", {}).items():
        if Path(src).is_file():
            link = f"{asset_prefix}_{stage}_{Path(src).name}"
            assets[link] = Path(src)
            facts[kind] = link
    cite = getattr(module, "CARD", None)
    facts["cite"] = {k: cite.get(k) for k in ("name", "paper", "citation")} if isinstance(cite, dict) else None
    return facts, own.get("card", {})


def _versions(manifests: dict[str, dict]) -> list[tuple[str, str]]:
    """package -> version rows; when stages ran under different versions, each version lists its stages."""
    seen: dict[str, dict[str, list[str]]] = {}
    for stage, m in manifests.items():
        versions = dict(m.get("versions") or {}) if isinstance(m.get("versions"), dict) else {}
        if m.get("hfpipe_version"):
            versions["hfpipe"] = m["hfpipe_version"]
        for pkg, ver in versions.items():
            seen.setdefault(str(pkg), {}).setdefault(str(ver), []).append(stage)
    rows = []
    for pkg, by_ver in sorted(seen.items()):
        cell = next(iter(by_ver)) if len(by_ver) == 1 else "; ".join(f"{v} ({', '.join(s)})" for v, s in by_ver.items())
        rows.append((fmt(pkg), fmt(cell)))
    return rows


def _git_state() -> dict[str, Any] | None:
    """Commit and dirty flag of the git checkout hfpipe runs from, if it runs from one."""
    here = package_dir()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode or not (Path(top.stdout.strip()) / "hfpipe" / "__init__.py").is_file():
            return None
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode or status.returncode:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}



def _environment() -> dict[str, Any]:
    """Platform, and a hash of every installed distribution (name==version, sorted): one value to compare setups."""
    import hashlib
    from importlib import metadata

    pins = sorted({f"{d.metadata['Name']}=={d.version}".lower() for d in metadata.distributions()
                   if d.metadata["Name"]})
    return {"platform": platform.platform(terse=True), "machine": platform.machine(),
            "lock_hash": hashlib.sha256("\n".join(pins).encode()).hexdigest()[:16], "n_packages": len(pins)}


# ----------------------------------------------------------------------------------------------------------------------
# Public API

def build_card(recipe_name: str, recipe_yaml: str, stages: dict[str, Path], *, pending: dict[str, str] | None = None,
               recipe_dir: Path | None = None, partial: dict[str, Path] | None = None,
               outputs: dict[str, str] | None = None, planned_config: dict[str, str] | None = None):
    """The model card of a pipeline run, from its finished stage folders (any subset of the pipeline).

    ``pending`` names stages still running (e.g. deploy writing this card) with their fingerprints; ``recipe_dir``
    lets a relative local ``base_model`` folder be told apart from a Hub id; ``partial`` gives the work folders of
    pending stages whose card facts are already written (deploy writing this card); ``outputs`` gives output digests
    of pending stages (``hfpipe.reproduce.output_digest``); ``planned_config`` their config fingerprints
    (hfpipe.interop.cards; finished stages' come from their manifests). Copy images with ``write_card``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    order = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    assets: dict[str, Path] = {}
    asset_prefix = re.sub(r"[^\w.-]+", "_", recipe_name) or "model"
    stages = {s: Path(f) for s, f in stages.items()}
    # template variables the stages fill in (through their card_facts), with what the card shows without them
    sections: dict[str, Any] = {"eval_rows": [], "harness": None, "eval_extra": [], "model_index": [],
                                "eval_result_entries": [], "parity": None, "serving": None}
    facts = []
    for s in order:
        entry, variables = _stage_facts(s, stages[s], stages, asset_prefix, assets)
        facts.append(entry)
        sections.update(variables)
    from hfpipe.stages.data.contamination import card_index, card_rows

    sections["contamination"] = [{k: fmt(v) for k, v in r.items()} for r in card_rows({s: stages[s] for s in order})]
    sections["contamination_index"] = card_index({s: stages[s] for s in order})
    manifests = {s: m for s in order if (m := _manifest(stages[s]))}
    fingerprints = {f["name"]: f["fingerprint"] for f in facts if isinstance(f["fingerprint"], str)}
    for stage, fp in (pending or {}).items():
        fingerprints[stage] = fp
        facts.append({"name": stage, "pending": True, "fingerprint": fp, "metrics": [], "cite": None})
        hook = getattr(_stage_module(stage), "card_facts", None)
        if hook is not None and stage in (partial or {}):
            sections.update(hook(Path(partial[stage]), stages).get("card", {}))

    # ---- metadata (YAML front matter) ----
    meta = _recipe_meta(recipe_yaml, recipe_dir)
    eval_results, eval_entries = sections.pop("model_index"), sections.pop("eval_result_entries")
    tags = ["hfpipe", *meta["tags"]] + [re.sub(r"[^a-z0-9._-]+", "-", (f.get("method") or f["name"]).lower())
                         for f in facts if f["name"] in MODEL_STAGES and not f.get("pending")]
    card_data = ModelCardData(
        license=meta.get("license"), license_name=meta.get("license_name"), license_link=meta.get("license_link"),
        language=meta.get("language"), datasets=meta.get("datasets"), base_model=meta["base_model"], tags=tags,
        pipeline_tag="text-generation", library_name="transformers",
        model_name=recipe_name if eval_results else None, eval_results=eval_results or None)
    stray = set(card_data.to_dict()) - METADATA_KEYS
    if stray:
        raise RuntimeError(f"model card metadata has keys outside the allowlist: {sorted(stray)}")

    # ---- body ----
    from hfpipe.reproduce import output_digest, stage_metrics

    digests = {s: d for s in order if s in STAGES and (d := output_digest(stages[s], s))} | dict(outputs or {})
    figures = {s: stage_metrics(s, m["metrics"]) for s, m in manifests.items() if isinstance(m.get("metrics"), dict)}
    # what the recipe decides per stage (no code, no library versions): the committed-card check (hfpipe.interop.cards)
    from hfpipe.interop.cards import config_fingerprints

    config_fps = config_fingerprints({s: m["key"] for s, m in manifests.items() if isinstance(m.get("key"), dict)})
    repro = {"hfpipe_card": 1, "recipe_name": recipe_name, "recipe_yaml": recipe_yaml, "fingerprints": fingerprints,
             "config_fingerprints": config_fps | dict(planned_config or {}), "outputs": digests, "metrics": figures}
    # '<' and '>' escaped inside JSON strings, so no recipe text can close the HTML comment early.
    repro_json = json.dumps(repro, indent=1).replace("<", "\\u003c").replace(">", "\\u003e")
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE),
        recipe_name=recipe_name, recipe_yaml=recipe_yaml.rstrip("\n"), fence=_fence(recipe_yaml), stages=facts,
        is_chat=any(s in stages for s in CHAT_STAGES), base_model_declared=meta["base_model_declared"],
        intended_use=meta["intended_use"], limitations=meta["limitations"],
        has_eval="eval" in stages, **sections,
        versions=_versions(manifests), git=_git_state(),
        writer={"hfpipe": hfpipe.__version__, "python": platform.python_version()}, env=_environment(),
        repro_block=f"<!-- hfpipe-reproduce\n{repro_json}\n-->")
    card.hfpipe_assets = assets  # image files write_card copies beside the card (name -> source)
    card.hfpipe_eval_results = eval_entries  # huggingface_hub EvalResultEntry list for .eval_results/ (Hub benchmarks)
    return card


def write_card(card, path: Path) -> Path:
    """Save the card (e.g. ``export/README.md``) and copy the images it links to into the same folder; beside a
    README.md also ``.eval_results/hfpipe.yaml`` when some eval task names its Hub dataset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, src in getattr(card, "hfpipe_assets", {}).items():
        shutil.copyfile(src, path.parent / name)
    card.save(path)
    entries = getattr(card, "hfpipe_eval_results", None)
    if entries and path.name == "README.md":  # a repo folder: the Hub reads .eval_results/*.yaml beside README.md
        import yaml
        from huggingface_hub import eval_result_entries_to_yaml

        (path.parent / ".eval_results").mkdir(exist_ok=True)
        (path.parent / ".eval_results" / "hfpipe.yaml").write_text(
            yaml.safe_dump(eval_result_entries_to_yaml(entries), sort_keys=False))
    return path


def read_card(path: Path) -> tuple[str, dict[str, str]]:
    """(recipe YAML, {stage: full fingerprint}) from a card written by hfpipe (a README.md or the folder holding it)."""
    block = read_card_block(path)
    return block["recipe_yaml"], block["fingerprints"]


def read_card_block(path: Path) -> dict[str, Any]:
    """The card's hidden block: recipe_yaml, fingerprints {stage: fp}, config_fingerprints {stage: fp} and outputs
    {stage: digest} (empty if absent)."""
    path = Path(path)
    path = path / "README.md" if path.is_dir() else path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HfpipeError(f"{path}: cannot read model card ({e.strerror or e})", 2) from e
    except UnicodeDecodeError as e:
        raise HfpipeError(f"{path}: not a model card (not UTF-8 text: byte {e.start})", 2) from e
    match = REPRO_RE.search(text)
    try:
        data = json.loads(match.group(1)) if match else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("recipe_yaml"), str):
        raise HfpipeError(f"{path}: not an hfpipe model card (no valid 'hfpipe-reproduce' block)", 2)
    fps = data.get("fingerprints") if isinstance(data.get("fingerprints"), dict) else {}
    outs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
    figures = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    configs = data.get("config_fingerprints") if isinstance(data.get("config_fingerprints"), dict) else {}
    return {"recipe_name": data.get("recipe_name"), "recipe_yaml": data["recipe_yaml"],
            "fingerprints": {str(k): str(v) for k, v in fps.items()},
            "config_fingerprints": {str(k): str(v) for k, v in configs.items()},
            "outputs": {str(k): str(v) for k, v in outs.items()},
            "metrics": {str(k): v for k, v in figures.items() if isinstance(v, dict)}}
