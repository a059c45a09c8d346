"""The model card: a pure function over finished stage folders. Offline: no network, no ``RepoCard.validate()``.

``build_card(recipe_name, recipe_yaml, stages)`` reads each folder's ``manifest.json`` (plus the data stage's
``stats.json``, the eval stage's ``results.json`` and model stages' ``curves.png``) and renders the Jinja template
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
from hfpipe.stages import MODEL_STAGES, STAGES, load_module, read_manifest

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
# The only metadata keys a card may carry (a subset of the Hub's model card spec).
METADATA_KEYS = frozenset({"license", "license_name", "license_link", "language", "datasets", "base_model", "tags",
                           "pipeline_tag", "library_name", "model-index"})
REPRO_RE = re.compile(r"<!-- hfpipe-reproduce\n(.*?)\n-->", re.S)
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHAT_STAGES = ("sft", "preference", "rl")
MAX_TABLE_ROWS = 25  # longer tables (e.g. per-source stats) are cut, with a comment saying how many rows were left out


# ----------------------------------------------------------------------------------------------------------------------
# Formatting helpers

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _manifest(folder: Path) -> dict[str, Any]:
    m = read_manifest(folder)
    return m if isinstance(m, dict) else {}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
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


def _rows(d: dict) -> tuple[list[tuple[str, str]], int]:
    """(key, value) rows of a flattened dict, at most MAX_TABLE_ROWS, and how many were left out."""
    flat = list(_flatten(d).items())
    return [(_fmt(k), _fmt(v)) for k, v in flat[:MAX_TABLE_ROWS]], max(0, len(flat) - MAX_TABLE_ROWS)


def _tables(stats: dict) -> list[dict]:
    """stats.json as tables: a list of records or a mapping of records becomes one table each, scalars one table."""
    tables, scalars = [], {}
    for name, value in stats.items():
        records = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else None
        if records and all(isinstance(r, dict) for r in records):
            keys = list(dict.fromkeys(k for r in records for k in r))
            label = [] if isinstance(value, list) else [_fmt(name)]
            rows = [([_fmt(k)] if label else []) + [_fmt(r.get(k, "")) for r in [rec] for k in keys]
                    for k, rec in (value.items() if isinstance(value, dict) else [(None, r) for r in value])]
            tables.append({"title": name, "header": label + [_fmt(k) for k in keys], "rows": rows[:MAX_TABLE_ROWS],
                           "cut": max(0, len(rows) - MAX_TABLE_ROWS)})
        else:
            scalars[name] = value
    if scalars:
        rows, cut = _rows(scalars)
        tables.append({"title": "totals", "header": ["statistic", "value"], "rows": [list(r) for r in rows], "cut": cut})
    return tables


def _wall(s: Any) -> str | None:
    if not _is_number(s):
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


def _eval_facts(results: Any) -> tuple[list[dict], list, str | None]:
    """Table rows, one huggingface_hub EvalResult per numeric metric, and the harness version, from results.json.

    Reads {"results" (or "tasks"): {task: {"metrics": {metric: {"value", "stderr"}}, "version", "n_shot", "n_samples",
    "higher_is_better"?}}, "harness_version" (or "harness": {"version"})}; anything else in it is ignored.
    """
    from huggingface_hub import EvalResult

    rows, evals = [], []
    results = results if isinstance(results, dict) else {}
    tasks = results.get("results", results.get("tasks"))
    for task, entry in sorted(tasks.items()) if isinstance(tasks, dict) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            continue
        n_shot, n_samples = entry.get("n_shot"), entry.get("n_samples")
        if isinstance(n_samples, dict):  # lm-eval style {"original": N, "effective": M}
            n_samples = n_samples.get("effective", n_samples.get("original"))
        better = entry.get("higher_is_better") if isinstance(entry.get("higher_is_better"), dict) else {}
        for metric, m in entry["metrics"].items():
            value, stderr = (m.get("value"), m.get("stderr")) if isinstance(m, dict) else (m, None)
            mtype, _, filt = str(metric).replace(",", ":", 1).partition(":")  # "acc,none" / "acc:flex" / "acc"
            name = f"{mtype} ({n_shot}-shot)" if isinstance(n_shot, int) else mtype
            name += f" [{filt}]" if filt and filt != "none" else ""
            arrow = {True: " ↑", False: " ↓"}.get(better.get(metric), "")
            rows.append({"task": _fmt(task), "metric": _fmt(name) + arrow, "arrow": arrow, "value": _fmt(value),
                         "stderr": _fmt(stderr) if _is_number(stderr) else "", "n_samples": _fmt(n_samples or ""),
                         "version": _fmt(str(entry.get("version") or ""))})
            if _is_number(value):
                evals.append(EvalResult(task_type="text-generation", dataset_type=str(task), dataset_name=str(task),
                                        metric_type=mtype, metric_value=value, metric_name=name,
                                        dataset_args={"num_few_shot": n_shot} if isinstance(n_shot, int) else None))
    harness = results.get("harness_version")
    if harness is None and isinstance(results.get("harness"), dict):
        harness = results["harness"].get("version")
    return rows, evals, str(harness) if harness else None


def _eval_extra(results: Any) -> tuple[list[dict], list]:
    """Everything else of results.json that is a mapping (latency and cost, regression vs a baseline, ...) as tables;
    and one ``EvalResultEntry`` per metric of a task that names its Hub dataset (``dataset_path``: ``org/name``), for the
    ``.eval_results/`` files the Hub shows on benchmark leaderboards (tasks without a Hub dataset have none)."""
    extra, entries = [], []
    if not isinstance(results, dict):
        return extra, entries
    for key, value in results.items():
        if key in ("tasks", "results", "harness", "model", "sample_counts", "configs", "versions") \
                or not isinstance(value, dict) or not value:
            continue
        extra.append({"title": key, "tables": _tables(value)})
    try:
        from huggingface_hub import EvalResultEntry
    except ImportError:  # huggingface_hub < 1.3: no .eval_results support
        return extra, entries
    tasks = results.get("tasks", results.get("results"))
    for task, entry in sorted(tasks.items()) if isinstance(tasks, dict) else []:
        dataset = entry.get("dataset_path") if isinstance(entry, dict) else None
        if not (isinstance(dataset, str) and HUB_ID_RE.match(dataset)) or not isinstance(entry.get("metrics"), dict):
            continue
        for metric, m in entry["metrics"].items():
            value = m.get("value") if isinstance(m, dict) else m
            if _is_number(value):
                entries.append(EvalResultEntry(dataset_id=dataset, task_id=str(task), value=value,
                                               notes=f"{metric}; lm-evaluation-harness via hfpipe"))
    return extra, entries


def _stage_facts(stage: str, folder: Path, asset_prefix: str, assets: dict[str, Path]) -> dict[str, Any]:
    manifest = _manifest(folder)
    shown = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else None
    if stage == "tokenizer" and shown:  # its per-group numbers get their own table (report.json)
        shown = {k: v for k, v in shown.items() if k != "heldout"}
    metrics, cut = _rows(shown) if shown is not None else ([], 0)
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    method = next((config[k] for k in ("method", "loss_type", "algorithm") if isinstance(config.get(k), str)), None)
    facts = {"name": stage, "has_manifest": bool(manifest), "fingerprint": manifest.get("fingerprint"),
             "wall": _wall(manifest.get("wall_s")), "metrics": metrics, "metrics_cut": cut, "method": method,
             "stats": None, "curves": None, "mixture": None, "cite": None, "tokenizer_report": None}
    if stage == "data":
        stats = _read_json(folder / "stats.json")
        facts["stats"] = _tables(stats) if isinstance(stats, dict) else None
    if stage == "tokenizer":
        from hfpipe.tokenizer_report import card_facts

        facts["tokenizer_report"] = card_facts(_read_json(folder / "report.json"))
    if (folder / "curves.png").is_file():
        link = f"{asset_prefix}_{stage}_curves.png"
        assets[link] = folder / "curves.png"
        facts["curves"] = link
    if (folder / "mixture.png").is_file():
        link = f"{asset_prefix}_{stage}_mixture.png"
        assets[link] = folder / "mixture.png"
        facts["mixture"] = link
    if stage in STAGES:
        try:
            cite = getattr(load_module(stage), "CARD", None)
        except ImportError:
            cite = None
        facts["cite"] = {k: cite.get(k) for k in ("name", "paper", "citation")} if isinstance(cite, dict) else None
    return facts


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
        rows.append((_fmt(pkg), _fmt(cell)))
    return rows


def _git_state() -> dict[str, Any] | None:
    """Commit and dirty flag of the git checkout hfpipe runs from, if it runs from one."""
    here = Path(__file__).resolve().parent

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



def _parity_facts(parity: Any) -> dict[str, Any] | None:
    """Rows of the quantization and GGUF parity tables from the deploy stage's parity.json (or its in-memory twin)."""
    if not isinstance(parity, dict) or not (parity.get("quantized") or parity.get("gguf")):
        return None
    quant = []
    for scheme, q in (parity.get("quantized") or {}).items():
        if isinstance(q, dict):
            quant.append({"scheme": _fmt(scheme), **{k: _fmt(q.get(k, "")) for k in (
                "library", "weight_bytes", "size_ratio", "latency_ratio", "perplexity", "perplexity_full",
                "perplexity_delta", "argmax_agreement", "task_acc", "task_acc_full", "task_acc_delta", "heldout_tokens",
                "task_docs")}})
    gguf = []
    for gtype, g in (parity.get("gguf") or {}).items():
        if isinstance(g, dict):
            gguf.append({"type": _fmt(gtype), **{k: _fmt(g.get(k, "")) for k in (
                "file", "writer", "bytes", "max_abs_logit_diff", "logit_rel_rmse", "tolerance", "argmax_agreement", "token_agreement")}})
    heldout = parity.get("heldout") if isinstance(parity.get("heldout"), dict) else {}
    return {"quantized": quant, "gguf": gguf, "heldout": {k: _fmt(v) for k, v in heldout.items()},
            "task": _fmt(parity.get("task") or "")}


def _serving_facts(folder: Path | None, eval_results: Any) -> dict[str, Any] | None:
    """The serve stage's load test (loadtest.json) and command lines (serve.json), beside the eval stage's in-process
    latency at batch size 1."""
    if folder is None:
        return None
    lt, sv = _read_json(folder / "loadtest.json"), _read_json(folder / "serve.json")
    if not isinstance(lt, dict):
        return None
    sv = sv if isinstance(sv, dict) else {}
    rows = [("requests (ok / sent / planned)", f"{lt.get('requests_ok')} / {lt.get('requests_sent')} / "
             f"{lt.get('requests_planned')}"), ("concurrency", lt.get("concurrency")),
            ("max_tokens per request", lt.get("max_tokens")), ("streamed", lt.get("stream")),
            ("latency p50 (s)", lt.get("latency_p50_s")), ("latency p95 (s)", lt.get("latency_p95_s")),
            ("time to first token p50 / p95 (s)", f"{_fmt(lt['ttft_p50_s'])} / {_fmt(lt['ttft_p95_s'])}"
             if lt.get("ttft_p50_s") is not None else "not streamed"),
            ("requests/s", lt.get("requests_per_s")), ("generated tokens/s", lt.get("completion_tokens_per_s")),
            ("errors", lt.get("errors")), ("finish reasons", lt.get("finish_reasons")),
            ("answers per variant", lt.get("variant_counts")), ("wall (s)", lt.get("wall_s"))]
    lat = (eval_results or {}).get("latency") if isinstance(eval_results, dict) else None
    b1 = ((lat or {}).get("batch_sizes") or {}).get("1") if isinstance(lat, dict) else None
    if isinstance(b1, dict) and b1.get("latency_p50_s") is not None:
        rows.append((f"eval stage, in-process generate, batch 1, {lat.get('new_tokens')} new tokens: latency p50 / "
                     f"p95 (s)", f"{_fmt(b1['latency_p50_s'])} / {_fmt(b1.get('latency_p95_s'))}"))
    split = lt.get("split") if isinstance(lt.get("split"), dict) else None
    eos = lt.get("eos_check") if isinstance(lt.get("eos_check"), dict) else {}
    return {"engine": _fmt(lt.get("engine") or sv.get("engine") or "?"), "rule": _fmt(lt.get("route_rule") or "?"),
            "variants": [_fmt(v) for v in lt.get("variants") or []], "cb": bool(lt.get("continuous_batching")),
            "rows": [(_fmt(k), _fmt(v)) for k, v in rows],
            "split": {k: _fmt(split.get(k)) for k in ("expected", "observed", "max_abs_deviation", "tolerance",
                                                      "within_tolerance", "n")} if split else None,
            "eos": [(_fmt(v), _fmt(e.get("finish_reason")), _fmt(e.get("completion_tokens"))) for v, e in eos.items()
                    if isinstance(e, dict)],
            "eos_tokens": _fmt(sv.get("eos_tokens") or ""), "template_sha": _fmt(sv.get("chat_template_sha256") or ""),
            "commands": [(_fmt(v), c) for v, c in (sv.get("commands") or {}).items() if isinstance(c, dict)]}


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
               recipe_dir: Path | None = None, parity: dict | None = None, outputs: dict[str, str] | None = None):
    """The model card of a pipeline run, from its finished stage folders (any subset of the pipeline).

    ``pending`` names stages still running (e.g. deploy writing this card) with their fingerprints; ``recipe_dir``
    lets a relative local ``base_model`` folder be told apart from a Hub id; ``parity`` is the deploy stage's
    quantization / GGUF parity (read from its ``parity.json`` when the deploy stage has finished); ``outputs`` gives
    output digests of pending stages (``hfpipe.reproduce.output_digest``). Copy images with ``write_card``.
    """
    from huggingface_hub import ModelCard, ModelCardData

    order = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    assets: dict[str, Path] = {}
    asset_prefix = re.sub(r"[^\w.-]+", "_", recipe_name) or "model"
    facts = [_stage_facts(s, Path(stages[s]), asset_prefix, assets) for s in order]
    manifests = {s: m for s in order if (m := _manifest(Path(stages[s])))}
    fingerprints = {f["name"]: f["fingerprint"] for f in facts if isinstance(f["fingerprint"], str)}
    for stage, fp in (pending or {}).items():
        fingerprints[stage] = fp
        facts.append({"name": stage, "pending": True, "fingerprint": fp, "metrics": [], "cite": None})

    if parity is None and "deploy" in stages:
        parity = _read_json(Path(stages["deploy"]) / "parity.json")

    # ---- metadata (YAML front matter) ----
    meta = _recipe_meta(recipe_yaml, recipe_dir)
    eval_rows, eval_results, harness, eval_extra, eval_entries, results = [], [], None, [], [], None
    if "eval" in stages:
        results = _read_json(Path(stages["eval"]) / "results.json")
        eval_rows, eval_results, harness = _eval_facts(results)
        eval_extra, eval_entries = _eval_extra(results)
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
    from hfpipe.reproduce import output_digest

    digests = {s: d for s in order if (d := output_digest(Path(stages[s])))} | dict(outputs or {})
    repro = {"hfpipe_card": 1, "recipe_name": recipe_name, "recipe_yaml": recipe_yaml, "fingerprints": fingerprints,
             "outputs": digests}
    # '<' and '>' escaped inside JSON strings, so no recipe text can close the HTML comment early.
    repro_json = json.dumps(repro, indent=1).replace("<", "\\u003c").replace(">", "\\u003e")
    card = ModelCard.from_template(
        card_data, template_path=str(TEMPLATE),
        recipe_name=recipe_name, recipe_yaml=recipe_yaml.rstrip("\n"), fence=_fence(recipe_yaml), stages=facts,
        is_chat=any(s in stages for s in CHAT_STAGES), base_model_declared=meta["base_model_declared"],
        intended_use=meta["intended_use"], limitations=meta["limitations"],
        eval_rows=eval_rows, harness=harness, eval_extra=eval_extra, has_eval="eval" in stages,
        versions=_versions(manifests), git=_git_state(),
        writer={"hfpipe": hfpipe.__version__, "python": platform.python_version()}, env=_environment(),
        parity=_parity_facts(parity),
        serving=_serving_facts(Path(stages["serve"]) if "serve" in stages else None, results),
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
    """The card's hidden block: recipe_yaml, fingerprints {stage: fp} and outputs {stage: digest} (empty if absent)."""
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
    return {"recipe_name": data.get("recipe_name"), "recipe_yaml": data["recipe_yaml"],
            "fingerprints": {str(k): str(v) for k, v in fps.items()},
            "outputs": {str(k): str(v) for k, v in outs.items()}}
