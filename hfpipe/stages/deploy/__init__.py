"""deploy: export the final model as a self-contained Hugging Face folder that loads with plain transformers.

Run just this stage (the stages it reads must be done; add --force deploy to redo it):

    hfpipe run recipes/tiny.yaml --only deploy

Loads the upstream model (or the recipe's base_model) in ``export_dtype``, makes generation stop at the chat
template's end of turn (``<|im_end|>``), and writes ``out_dir/export/``: safetensors weights (sharded at
``max_shard_size``), config, generation config, tokenizer with its chat template; quantized variants
(``quantized/<scheme>/``, torchao on CPU, see ``hfpipe.stages.deploy.quant``) and GGUF files (``gguf/<name>-<type>.gguf``, see
``hfpipe.stages.deploy.gguf``), each measured against the full-precision model (``parity.json``); and README.md, the model
card built by ``hfpipe.card`` from every finished upstream stage folder and those parity numbers (plus the images it
links). The self-check reloads the export with transformers alone, compares its logits, generates, and checks that it
stops at end of turn.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from hfpipe.errors import HfpipeError
from hfpipe.resources import DATASETS, TASKS, TEMPLATES, package_file
from hfpipe.stages import STAGES, Inputs, StageConfig, progress, resolve_path

# "model" is the weights to export; every other finished stage is read only for the model card.
# compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
OUTPUTS = ("export/**/*.safetensors", "export/**/*.json", "export/**/*.gguf", "export/**/*.jinja")
RESULTS = ("parity.json",)
NOT_COMPARED = ("export_bytes",)  # counts the card, which carries wall times
READS = ("model",) + tuple(s for s in STAGES[: STAGES.index("deploy")])
CARD = {"name": "Export: safetensors, torchao quantization, GGUF + Hugging Face model card", "paper": None,
        "citation": None}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
BUNDLED_TEXT = package_file(DATASETS, "tokenizer_heldout.jsonl")
BUNDLED_TASK = package_file(TASKS, "capitals", "test.jsonl")
# Code outside this module that shapes the export: its content enters the fingerprint (see input_files).
CARD_TEMPLATE = package_file(TEMPLATES, "model_card.md")
EXPORT = "export"  # the folder users load, serve and push: <stage folder>/export  # the card this stage writes into the export

Scheme = Literal["int8", "int4", "bnb_int8", "bnb_int4", "gptq", "awq"]
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q4_0"]


class Config(StageConfig):
    export_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the exported weights: bfloat16/float16 halve the size (float16 can overflow "
        "in models trained in bfloat16)")
    safe_serialization: Literal[True] = Field(
        True, description="weights as safetensors only; pickled .bin weights are never exported (cannot be disabled)")
    max_shard_size: str = Field(
        "2GB", pattern=r"^[1-9][0-9]*(GB|MB|KB|GiB|MiB|KiB)$",
        description="largest weight file before the weights are split into shards (integer + unit, e.g. 2GB, 500MB)")
    check_new_tokens: int = Field(
        8, ge=1, le=256, description="tokens the self-check generates from the exported folder (cost: seconds)")
    # ---- quantized variants (export/quantized/<scheme>/)
    quantize: list[Scheme] = Field(
        [], description="quantized variants to save beside the export, each with parity numbers in the card: int8 / "
        "int4 (torchao weight-only, CPU); bnb_int8 / bnb_int4 (bitsandbytes), gptq, awq need a CUDA GPU and stop the "
        "stage with one line without one")
    quant_group_size: int = Field(
        32, ge=16, le=256, description="weights per int4 scale (int4 scheme); must divide every linear layer's input "
        "width; smaller = more accurate, bigger file")
    # ---- GGUF (llama.cpp / Ollama)
    gguf: list[GGUFType] = Field(
        [], description="GGUF files to write (llama.cpp tensor types), each loaded back with transformers and compared "
        "with the source logits; llama models with a byte-level BPE tokenizer only")
    gguf_max_logit_rel_rmse: dict[GGUFType, float] = Field(
        {"f32": 1e-6, "f16": 5e-3, "bf16": 3e-2, "q8_0": 0.05, "q4_0": 0.5},
        description="stated tolerance per GGUF type: RMS difference between the model's logits and those of its GGUF "
        "loaded back by transformers, relative to the logits' spread (RMS deviation from each position's mean), on the "
        "held-out text; above it the stage fails. Measured on the tiny recipe: f16 1e-4-5e-4, q8_0 0.003-0.008, "
        "q4_0 0.04-0.28")
    # ---- parity measurement (quantized variants and GGUF vs the full-precision export)
    parity_text: str | None = Field(
        None, description="jsonl of held-out {text, metadata.language} documents for perplexity / logit parity "
        "(recipe-relative); default: the bundled UDHR held-out file hfpipe/datasets/tokenizer_heldout.jsonl")
    parity_language: str = Field("en", description="language of the held-out documents used ('' = all)")
    parity_max_docs: int = Field(
        64, ge=1, le=10_000, description="held-out documents read at most (scoring stops at parity_max_tokens)")
    parity_max_tokens: int = Field(
        2048, ge=64, le=1_000_000, description="held-out tokens scored per model (cost grows linearly)")
    parity_seq_len: int = Field(128, ge=16, le=8192, description="tokens per scored block (≤ the model's context)")
    parity_task: str | None = Field(
        None, description="jsonl {country, choices, answer} scored by log-likelihood for the eval delta "
        "(recipe-relative); default: the bundled capitals test split hfpipe/tasks/capitals/test.jsonl")
    parity_task_limit: int = Field(40, ge=1, le=100_000, description="task questions scored per model")
    latency_repeats: int = Field(
        7, ge=1, le=1000, description="timed forward passes per model for the latency ratio (median; interleaved)")


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    """The card template and the parity data: editing either changes what this stage writes (its code is in the
    fingerprint through the runner's import closure)."""
    files = [CARD_TEMPLATE]
    if config.quantize or config.gguf:
        files += [resolve_path(config.parity_text, recipe_dir) if config.parity_text else BUNDLED_TEXT]
    if config.quantize:
        files += [resolve_path(config.parity_task, recipe_dir) if config.parity_task else BUNDLED_TASK]
    return files


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import torch
    import transformers

    from hfpipe.stages.deploy import gguf as deploy_gguf, quant as deploy_quant
    from hfpipe.card import build_card, write_card
    from hfpipe.models import EOS_TOKEN, load_model_and_tokenizer
    from hfpipe.reproduce import output_digest

    deploy_quant.check_schemes(config.quantize)  # GPU-only schemes stop here, before any work
    transformers.set_seed(inputs.seed)
    export = out_dir / EXPORT
    shutil.rmtree(export, ignore_errors=True)  # a retry must not keep shards of an earlier, different export

    # ---------------------------------------------------------------- load in the export dtype
    progress(f"exporting ({config.export_dtype})")
    model, tokenizer = load_model_and_tokenizer(inputs, torch_dtype=getattr(torch, config.export_dtype))
    model.eval()

    # ---------------------------------------------------------------- generation config: stop at end of turn
    vocab = tokenizer.get_vocab()
    old = model.generation_config.eos_token_id
    candidates = [vocab.get(EOS_TOKEN), tokenizer.eos_token_id, *(old if isinstance(old, list) else [old])]
    eos_ids = list(dict.fromkeys(i for i in candidates if isinstance(i, int)))
    if not eos_ids:
        raise HfpipeError(f"deploy: the tokenizer has no end-of-turn token ('{EOS_TOKEN}') and no eos_token", 1)
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    # ---------------------------------------------------------------- save weights, config, tokenizer
    model.save_pretrained(export, max_shard_size=config.max_shard_size)
    tokenizer.save_pretrained(export)

    # ---------------------------------------------------------------- held-out text for parity
    parity: dict = {"quantized": {}, "gguf": {}}
    if config.quantize or config.gguf:
        text_file = inputs.path(config.parity_text) if config.parity_text else BUNDLED_TEXT
        texts = deploy_quant.heldout_texts(text_file, config.parity_language, config.parity_max_docs)
        parity["heldout"] = {"file": config.parity_text or "hfpipe/datasets/tokenizer_heldout.jsonl",
                             "language": config.parity_language, "docs": len(texts)}

    # ---------------------------------------------------------------- quantized variants (torchao), measured
    if config.quantize:
        progress(f"quantizing and measuring {', '.join(config.quantize)}")
        task_file = inputs.path(config.parity_task) if config.parity_task else BUNDLED_TASK
        parity["task"] = config.parity_task or "hfpipe/tasks/capitals/test.jsonl"
        parity["quantized"] = deploy_quant.quantize_and_measure(
            export, config.quantize, tokenizer=tokenizer, texts=texts,
            docs=deploy_quant.task_docs(task_file, config.parity_task_limit), seq_len=config.parity_seq_len,
            max_tokens=config.parity_max_tokens, repeats=config.latency_repeats, group_size=config.quant_group_size)

    # ---------------------------------------------------------------- GGUF files, loaded back by transformers
    if config.gguf:
        progress(f"writing and loading back GGUF {', '.join(config.gguf)}")
        full = model.float()
        for gguf_type in config.gguf:
            path = deploy_gguf.write_gguf(full, tokenizer, export / "gguf" / f"{inputs.recipe_name}-{gguf_type}.gguf",
                                          gguf_type, inputs.recipe_name)
            check = deploy_gguf.check_gguf(path, full, tokenizer, texts, config.parity_seq_len)
            check.update(file=path.name, tolerance=config.gguf_max_logit_rel_rmse.get(gguf_type))
            if check["tolerance"] is None or check["logit_rel_rmse"] > check["tolerance"]:
                raise HfpipeError(f"deploy: {path.name} loaded back by transformers differs from the model by "
                                  f"a relative RMS of {check['logit_rel_rmse']:.4g} in logits "
                                  f"(deploy.gguf_max_logit_rel_rmse.{gguf_type} = {check['tolerance']})", 1)
            parity["gguf"][gguf_type] = check
        model = model.to(getattr(torch, config.export_dtype))
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=1))

    # ---------------------------------------------------------------- model card (README.md + images)
    card = build_card(inputs.recipe_name, inputs.recipe_yaml, dict(inputs.upstream),
                      pending={"deploy": inputs.fingerprint} if inputs.fingerprint else None,
                      recipe_dir=inputs.recipe_dir, partial={"deploy": out_dir},
                      outputs={"deploy": output_digest(out_dir, "deploy")})
    write_card(card, export / "README.md")

    # ---------------------------------------------------------------- self-check: plain transformers, no hfpipe
    progress("checking the export as a user loads it")
    new_tokens = _self_check(export, model, eos_ids, config)
    files = sorted(p for p in export.rglob("*") if p.is_file())
    metrics = {"export_bytes": sum(p.stat().st_size for p in files), "n_files": len(files),
               "n_params": sum(p.numel() for p in model.parameters()), "check_new_tokens": new_tokens}
    for scheme, q in parity["quantized"].items():
        metrics[scheme] = {k: q[k] for k in ("size_ratio", "latency_ratio", "perplexity_delta", "task_acc_delta")}
    for gguf_type, g in parity["gguf"].items():
        metrics[f"gguf_{gguf_type}"] = {"bytes": g["bytes"], "logit_rel_rmse": g["logit_rel_rmse"]}
    return metrics


def _self_check(export: Path, model, eos_ids: list[int], config: Config) -> int:
    """Reload the export as a user would; same logits, generation that stops at end of turn, a readable card."""
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    def fail(why: str):
        raise HfpipeError(f"deploy: self-check failed on {export}: {why}", 1)

    pickles = [p.name for p in export.rglob("*") if p.suffix in PICKLE_SUFFIXES or p.name == "training_args.bin"]
    if pickles or not list(export.glob("*.safetensors")):
        fail(f"pickled files {pickles}" if pickles else "no .safetensors weights")
    gen = GenerationConfig.from_pretrained(export)
    if not set(eos_ids) <= set(gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]):
        fail(f"generation_config.json eos_token_id {gen.eos_token_id} lacks {eos_ids}")

    tokenizer = AutoTokenizer.from_pretrained(export)
    loaded = AutoModelForCausalLM.from_pretrained(export).eval()
    if loaded.dtype != model.dtype:
        fail(f"reloads as {loaded.dtype}, exported {model.dtype}")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        if tokenizer.chat_template else "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        if not torch.allclose(loaded(**ids).logits.float(), model(**ids).logits.float(), atol=1e-4, rtol=1e-3):
            fail("reloaded weights give different logits from the model that was saved")
        out = loaded.generate(**ids, max_new_tokens=config.check_new_tokens, do_sample=False)
        # Push the end-of-turn token to the top: generation must stop right after it, by the exported config alone.
        stop = loaded.generate(**ids, max_new_tokens=config.check_new_tokens, do_sample=False,
                               sequence_bias=[[[eos_ids[0]], 1e4]])
    n_new, prompt_len = out.shape[1] - ids["input_ids"].shape[1], ids["input_ids"].shape[1]
    if not 1 <= n_new <= config.check_new_tokens:
        fail(f"generated {n_new} tokens, asked for {config.check_new_tokens}")
    if stop[0, prompt_len:].tolist() != [eos_ids[0]]:
        fail(f"generation did not stop at end of turn (got {stop[0, prompt_len:].tolist()}, eos {eos_ids})")

    card = ModelCard.load(export / "README.md")
    if card.data.pipeline_tag != "text-generation":
        fail("README.md does not load as a model card")
    return n_new


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the export's size and the variants beside it."""
    variants = [k.removeprefix("gguf_") + (" GGUF" if k.startswith("gguf_") else "") for k, v in metrics.items()
                if isinstance(v, dict)]
    return f"{metrics['export_bytes'] / 1e6:.1f} MB export" + (f" + {', '.join(variants)}" if variants else "")


def describe(c: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the export format and the quantized and GGUF variants it will write."""
    return {"engine": {"library": "transformers save_pretrained (safetensors)", "dtype": c.export_dtype,
                       "max_shard_size": c.max_shard_size, "quantize": list(getattr(c, "quantize", [])),
                       "gguf": list(getattr(c, "gguf", []))}, "expected": {}}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card: rows of the quantization and GGUF parity tables, from parity.json."""
    from hfpipe.card import fmt, read_json

    parity = read_json(folder / "parity.json")
    if not isinstance(parity, dict) or not (parity.get("quantized") or parity.get("gguf")):
        return {}
    quant = []
    for scheme, q in (parity.get("quantized") or {}).items():
        if isinstance(q, dict):
            quant.append({"scheme": fmt(scheme), **{k: fmt(q.get(k, "")) for k in (
                "library", "weight_bytes", "size_ratio", "latency_ratio", "perplexity", "perplexity_full",
                "perplexity_delta", "argmax_agreement", "task_acc", "task_acc_full", "task_acc_delta", "heldout_tokens",
                "task_docs")}})
    gguf = []
    for gtype, g in (parity.get("gguf") or {}).items():
        if isinstance(g, dict):
            gguf.append({"type": fmt(gtype), **{k: fmt(g.get(k, "")) for k in (
                "file", "writer", "bytes", "max_abs_logit_diff", "logit_rel_rmse", "tolerance", "argmax_agreement", "token_agreement")}})
    heldout = parity.get("heldout") if isinstance(parity.get("heldout"), dict) else {}
    return {"card": {"parity": {"quantized": quant, "gguf": gguf, "heldout": {k: fmt(v) for k, v in heldout.items()},
                                "task": fmt(parity.get("task") or "")}}}
