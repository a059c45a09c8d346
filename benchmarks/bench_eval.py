"""Eval stage, whole job, against `lm_eval.simple_evaluate` doing the same scoring directly (protocol: README.md).

Model: benchmarks/recipes/bench.yaml's pretrained model (the tiny Llama shape, trained once by this bench, not timed).
Tasks: hfpipe's bundled ``capitals`` (multiple choice) and ``math`` (greedy generation), the recipe's limit.
- stage, latency on: `hfpipe run benchmarks/recipes/bench.yaml --only eval --force eval` in a fresh process (model
  load, bundled task index, simple_evaluate with per-sample logs, results.json, samples, the stage's default latency
  and cost measurement, self-check, card);
- stage, latency off: the same with `eval.latency_batch_sizes=[]` (scoring alone);
- direct: a fresh `python benchmarks/bench_eval.py --direct MODEL OUT`: what an lm-eval user writes —
  ``simple_evaluate(model="hf", model_args={"pretrained": MODEL}, task_manager=TaskManager(include_path=hfpipe/tasks,
  include_defaults=False), ...)`` with the same tasks, limit, n-shot, batch size, generation cap, bootstrap
  iterations, per-sample logs and seeds; results and samples written as JSON.
The three sides rotate order in every repetition. The stage's scores must equal the direct call's (checked).
Work = one evaluation. Targets: median of paired ratios (direct wall / stage wall), latency off >= 0.97; latency
on is reported beside it against the same target (the latency measurement is extra work the direct side does not do).

Run: .venv/bin/python benchmarks/bench_eval.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BENCH_RECIPE, hfpipe, paired, python, stage_dir, target, write_result  # noqa: E402


def direct(model: Path, out: Path, config_json: str) -> None:
    """The reference side, in its own process: lm-eval alone."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from hfpipe.stages.eval import TASKS_DIR

    c = json.loads(config_json)
    result = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model), "dtype": "float32", "device": "cpu"}, tasks=c["tasks"],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False), num_fewshot=c["num_fewshot"],
        limit=c["limit"], batch_size=c["batch_size"], bootstrap_iters=c["bootstrap_iters"], log_samples=True,
        gen_kwargs={"max_gen_toks": c["max_gen_toks"]}, random_seed=c["seed"], numpy_random_seed=c["seed"],
        torch_random_seed=c["seed"], fewshot_random_seed=c["seed"])
    out.mkdir(parents=True, exist_ok=True)
    for task, samples in result.pop("samples").items():
        (out / f"samples_{task}.jsonl").write_text("".join(json.dumps(s, default=str) + "\n" for s in samples))
    (out / "results.json").write_text(json.dumps(result, default=str, indent=1))


def scores(results: dict) -> dict:
    """lm-eval's results -> {task/metric[:filter]: value}, the stage's naming."""
    out = {}
    for t, row in results.items():
        for k, v in row.items():
            if "," in k and "_stderr," not in k and isinstance(v, (int, float)):
                metric, filt = k.split(",", 1)
                out[f"{t}/{metric if filt == 'none' else f'{metric}:{filt}'}"] = round(v, 6)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--direct"]:
        return direct(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(BENCH_RECIPE)
    c = recipe.eval
    root = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    hfpipe(root, "--until", "pretrain")  # the model, once (not timed)
    model = stage_dir(root, "pretrain") / "model"
    settings = json.dumps({"tasks": c.tasks, "num_fewshot": c.num_fewshot, "limit": c.limit, "batch_size": c.batch_size,
                           "bootstrap_iters": c.bootstrap_iters, "max_gen_toks": c.max_gen_toks, "seed": recipe.seed})
    stage_scores = {}

    def stage(*overrides: str):
        def run(rep: int) -> float:
            hfpipe(root, "--only", "eval", "--force", "eval", *overrides)
            stage_scores[overrides] = json.loads((stage_dir(root, "eval") / "results.json").read_text())
            return 1
        return run

    def reference(rep: int) -> float:
        shutil.rmtree(root / "direct", ignore_errors=True)
        python(__file__, "--direct", str(model), str(root / "direct"), settings)
        return 1

    result = paired("eval", {"stage, latency on": stage(), "stage, latency off": stage("eval.latency_batch_sizes=[]"),
                             "direct": reference}, reference="direct")
    theirs = scores(json.loads((root / "direct" / "results.json").read_text())["results"])
    for key, res in stage_scores.items():
        ours = {f"{t}/{label}": round(m["value"], 6) for t, e in res["tasks"].items() for label, m in e["metrics"].items()}
        if ours != theirs:
            raise SystemExit(f"the stage ({key or 'defaults'}) scored {ours}, the direct call {theirs}: not the same work")
    off, on = result["ratios"]["stage, latency off"], result["ratios"]["stage, latency on"]
    figures = {"tasks": c.tasks, "limit": c.limit, "scores": theirs, "latency_off_over_direct_wall": off["wall"],
               "latency_off_over_direct_cpu": off["cpu"], "latency_on_over_direct_wall": on["wall"],
               "latency_on_over_direct_cpu": on["cpu"], "runs": result["runs"]}
    write_result("eval", figures,
                 [target("eval stage (whole job), latency measurement off, vs lm_eval.simple_evaluate direct",
                         off["wall"], ">=", 0.97),
                  target("eval stage (whole job), latency measurement on (the stage default), vs direct",
                         on["wall"], ">=", 0.97)],
                 notes="fresh processes on every side; identical scores checked; the direct side writes results and "
                       "per-sample logs as the stage does.")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
