"""`hfpipe run RECIPE --dry-run`: what a run would do, resolved fully offline.

Validates the recipe, plans it (fingerprints, and per stage whether it would run or be skipped as already done) and
prints, per stage, the engine it drives with its settings: the ``accelerate launch`` command line and its config file,
the datatrove executor (local workers, Slurm or Ray), the lm-eval model arguments; plus the expected tokens, optimizer
steps and checkpoints. Nothing is downloaded, no dataset is read (local input files are only hashed for the
fingerprints, as ``hfpipe status`` does) and no accelerator library is imported, so it runs on a laptop for a recipe
meant for a cluster.

A stage module may add ``describe(config, recipe) -> dict`` for details this module does not know; its keys are
merged into the stage's entry.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path


def _cmd(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def _checkpoint_steps(interval: int, max_steps: int) -> list[int]:
    return list(range(interval, max_steps + 1, interval))


def _data(c, recipe) -> dict:
    sources = [{"name": s.name, "format": s.format, "domain": s.domain, "language": s.language,
                **({"dataset": s.dataset, "subset": s.subset, "split": s.split} if s.format == "hub" else {"path": s.path})}
               for s in c.sources]
    if c.executor == "slurm":
        s = c.slurm
        engine = {"executor": "datatrove.executor.SlurmPipelineExecutor", "tasks": c.tasks, "partition": s.partition,
                  "time": s.time, "cpus_per_task": s.cpus_per_task, "mem_per_cpu_gb": s.mem_per_cpu_gb, "qos": s.qos,
                  "venv_path": s.venv_path, "sbatch_args": dict(s.sbatch_args),
                  "note": "one sbatch array job per pass; the stage waits for every task's completion marker"}
    elif c.executor == "ray":
        engine = {"executor": "datatrove.executor.RayPipelineExecutor", "tasks": c.tasks, "workers": c.workers,
                  "cpus_per_task": c.ray.cpus_per_task, "mem_per_cpu_gb": c.ray.mem_per_cpu_gb,
                  "note": "connects to the Ray cluster of RAY_ADDRESS (ray start --head / ray up first)"}
    else:
        engine = {"executor": "datatrove.executor.LocalPipelineExecutor", "tasks": c.tasks,
                  "workers": min(c.workers, c.tasks)}
    expect = {"output_bytes_cap": c.balance.max_bytes} if c.balance.enabled and c.balance.max_bytes else {}
    return {"engine": engine, "sources": sources, "chains": {k: list(v) for k, v in c.chains.items()},
            "dedup": c.dedup.model_dump(), "expected": expect,
            "needs_network": any(s.format == "hub" for s in c.sources)}


def _tokenizer(c, recipe) -> dict:
    if c.pretrained:
        return {"engine": {"library": "transformers.AutoTokenizer", "pretrained": c.pretrained,
                           "gguf_file": c.gguf_file}, "expected": {}}
    return {"engine": {"library": f"tokenizers.trainers.{'BpeTrainer' if c.model == 'bpe' else 'UnigramTrainer'}",
                       "pre_tokenizer": c.pre_tokenizer, "vocab_size": c.vocab_size,
                       "max_training_bytes": c.max_training_bytes},
            "expected": {"vocab_size": c.vocab_size}}


def _accelerate(config_name: str, num_processes: int, recipe_dir: Path, module_argv: list[str]) -> dict:
    from hfpipe.stages._pretrain_launch import accelerate_config_path

    cfg = accelerate_config_path(config_name, recipe_dir)
    argv = ["python", "-m", "accelerate.commands.launch", "--config_file", str(cfg), "--num_processes",
            str(num_processes), "--main_process_port", "<free port>", *module_argv]
    import yaml

    settings = yaml.safe_load(cfg.read_text()) or {}
    keep = {k: settings[k] for k in ("distributed_type", "mixed_precision", "num_machines") if k in settings}
    if "fsdp_config" in settings:
        keep["fsdp"] = {k.removeprefix("fsdp_"): v for k, v in settings["fsdp_config"].items()}
    if "deepspeed_config" in settings:
        keep["deepspeed"] = settings["deepspeed_config"]
    return {"launch": _cmd(argv), "accelerate_config": str(cfg), "accelerate_settings": keep}


def _pretrain(c, recipe) -> dict:
    phases = c.phases()
    procs = c.num_processes
    tokens_per_step = c.batch_size * c.seq_len * c.gradient_accumulation_steps * procs
    if c.launched():
        from hfpipe.stages._pretrain_launch import SPEC

        engine = _accelerate(c.accelerate_config or "ddp", procs, recipe.recipe_dir,
                             ["-m", "hfpipe.stages.pretrain", "--worker", f"<stage folder>/{SPEC}"])
    else:
        engine = {"launch": "in process (one Accelerator, no launcher)", "mixed_precision": c.mixed_precision}
    engine.update({"num_processes": procs, "mixed_precision": c.mixed_precision, "optimizer": c.optimizer,
                   "lr_schedule": c.lr_schedule, "learning_rate": c.learning_rate})
    params = None
    m = c.model
    if all(hasattr(m, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size")):
        # decoder blocks: attention (q,o full; k,v grouped) + gated MLP; embeddings counted apart
        h, L, f = m.hidden_size, m.num_hidden_layers, m.intermediate_size
        kv = h * getattr(m, "num_key_value_heads", m.num_attention_heads) // m.num_attention_heads
        params = L * (2 * h * h + 2 * h * kv + 3 * h * f)
    return {"engine": engine,
            "expected": {"optimizer_steps": c.max_steps, "tokens_per_step": tokens_per_step,
                         "tokens": tokens_per_step * c.max_steps,
                         "phases": [{"seq_len": s, "steps": n, "blocks_per_micro_batch": b} for s, n, b in phases],
                         "checkpoints_at_steps": _checkpoint_steps(c.checkpoint_interval, c.max_steps),
                         "checkpoints_kept": c.keep_checkpoints,
                         "non_embedding_params": params}}


def _post_training(name: str):
    def describe(c, recipe) -> dict:
        batch = c.per_device_batch_size * getattr(c, "gradient_accumulation_steps", 1)
        steps = c.max_steps
        per = {"sft": "sequences", "preference": "pairs", "rl": "completions"}[name]
        trainer = {"sft": "trl.SFTTrainer", "preference": "trl.DPOTrainer",
                   "rl": f"trl.{'GRPOTrainer' if getattr(c, 'algorithm', '') == 'grpo' else 'RLOOTrainer'}"}[name]
        engine = {"trainer": trainer, "launch": "in process (single process; the stage has no num_processes key)",
                  "per_device_batch_size": c.per_device_batch_size, "learning_rate": c.learning_rate}
        if getattr(c, "lora", None) is not None:
            engine["lora"] = c.lora.model_dump()
        expect = {"optimizer_steps": steps if steps else f"{c.num_train_epochs} epoch(s) over the dataset",
                  f"{per}_per_step": batch}
        max_len = getattr(c, "max_length", None)
        if steps and max_len:
            expect["tokens_at_most"] = steps * batch * max_len * (2 if name == "preference" else 1)
        if name == "rl":
            expect["completion_tokens_at_most"] = steps * c.per_device_batch_size * c.max_completion_length
        datasets = []
        for spec in ([*c.datasets] if getattr(c, "datasets", None) else []):
            datasets.append({"name": spec.name or spec.path, "split": spec.split, "weight": spec.weight})
        if not datasets and hasattr(c, "dataset"):
            datasets = [{"name": c.dataset, "eval": getattr(c, "eval_dataset", None)}]
        return {"engine": engine, "datasets": datasets, "expected": expect, "checkpoints": "none kept (final model only)"}
    return describe


def _eval(c, recipe) -> dict:
    backend = getattr(c, "backend", "hf")
    model_args = {"pretrained": "<upstream model folder>", **dict(getattr(c, "model_args", None) or {})}
    if c.max_length:
        model_args["max_length"] = c.max_length
    argv = ["lm_eval", "--model", backend, "--model_args", ",".join(f"{k}={v}" for k, v in model_args.items()),
            "--tasks", ",".join(c.tasks), "--batch_size", str(c.batch_size)]
    if c.num_fewshot is not None:
        argv += ["--num_fewshot", str(c.num_fewshot)]
    if c.limit:
        argv += ["--limit", str(c.limit)]
    if c.apply_chat_template:
        argv.append("--apply_chat_template")
    engine = {"library": "lm_eval.simple_evaluate", "backend": backend,
              "model": "lm_eval.models.huggingface.HFLM" if backend == "hf" else f"lm-eval '{backend}' model",
              "model_args": model_args, "equivalent_cli": _cmd(argv)}
    return {"engine": engine, "tasks": list(c.tasks),
            "expected": {"requests_per_task_at_most": c.limit} if c.limit else {}}


def _deploy(c, recipe) -> dict:
    return {"engine": {"library": "transformers save_pretrained (safetensors)", "dtype": c.export_dtype,
                       "max_shard_size": c.max_shard_size, "quantize": list(getattr(c, "quantize", [])),
                       "gguf": list(getattr(c, "gguf", []))}, "expected": {}}


DESCRIBE = {"data": _data, "tokenizer": _tokenizer, "pretrain": _pretrain, "sft": _post_training("sft"),
            "preference": _post_training("preference"), "rl": _post_training("rl"), "eval": _eval, "deploy": _deploy}


def describe(recipe, runs_dir: Path) -> dict:
    """The whole dry run as data: per stage, run/skip with its fingerprint, engine settings and expectations."""
    from hfpipe import runner

    stages, plans = [], {}
    for p in runner.plan(recipe, runs_dir):
        plans[p.name] = p
        entry = {"stage": p.name, "fingerprint": p.fingerprint, "folder": str(p.folder),
                 "action": "skip (done)" if p.done else f"run ({runner.stale_reason(p)})",
                 "reads": {**{s: f"{s}-{fp[:12]}" for s, fp in p.upstream.items()}},
                 "input_files": len(p.files)}
        fn = DESCRIBE.get(p.name)
        if fn is not None:
            entry.update(fn(p.config, recipe))
        if p.name == "eval":  # name the folder lm-eval will load
            where = (str(plans[p.model_stage].folder / "model") if p.model_stage
                     else recipe.base_model.name_or_path if recipe.base_model else "<no model>")
            entry["engine"]["model_args"]["pretrained"] = where
            entry["engine"]["equivalent_cli"] = entry["engine"]["equivalent_cli"].replace("<upstream model folder>", where)
        hook = getattr(p.module, "describe", None)
        if callable(hook):
            entry.update(hook(p.config, recipe))
        stages.append(entry)
    return {"recipe": str(recipe.path) if recipe.path else recipe.name, "name": recipe.name, "seed": recipe.seed,
            "base_model": recipe.base_model.model_dump() if recipe.base_model else None, "stages": stages}


def render(info: dict) -> str:
    """Human-readable dry run: one block per stage."""
    lines = [f"dry run of {info['recipe']} ({info['name']}, seed {info['seed']}): nothing is run, read or downloaded"]
    if info["base_model"]:
        lines.append(f"base_model: {info['base_model']['name_or_path']}")
    for s in info["stages"]:
        lines += ["", f"[{s['stage']}] {s['action']}  fingerprint {s['fingerprint'][:12]}  -> {s['folder']}"]
        eng = dict(s.get("engine", {}))
        if "launch" in eng:
            lines.append(f"  launch: {eng.pop('launch')}")
        if "equivalent_cli" in eng:
            lines.append(f"  lm-eval: {eng.pop('equivalent_cli')}")
        for k, v in eng.items():
            lines.append(f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        for k in ("sources", "datasets", "tasks"):
            if s.get(k):
                lines.append(f"  {k}: {json.dumps(s[k])}")
        for k, v in (s.get("expected") or {}).items():
            lines.append(f"  expected {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        if "checkpoints" in s:
            lines.append(f"  checkpoints: {s['checkpoints']}")
    return "\n".join(lines)

