"""deploy: export the final model as a self-contained Hugging Face folder that loads with plain transformers.

Run just this stage (the stages it reads must be done; add --force deploy to redo it):

    hfpipe run recipes/tiny.yaml --only deploy

Loads the upstream model (or the recipe's base_model) in ``export_dtype``, makes generation stop at the chat
template's end of turn (``<|im_end|>``), and writes ``out_dir/export/``: safetensors weights (sharded at
``max_shard_size``), config, generation config, tokenizer with its chat template; quantized variants
(``quantized/<scheme>/``, torchao on CPU, see ``hfpipe.stages.deploy.quant``) and GGUF files (``gguf/<name>-<type>.gguf``, see
``hfpipe.stages.deploy.gguf``; K-quants by llama.cpp's quantizer from the f16 file, each measured in llama.cpp itself
when the hfpipe[gguf] extra is installed, ``hfpipe.stages.deploy.llamacpp``) with an Ollama ``Modelfile`` whose
TEMPLATE renders as the chat template does (``hfpipe.stages.deploy.ollama``), each measured against the
full-precision model (``parity.json``); and README.md, the model card built by ``hfpipe.card`` from every finished
upstream stage folder and those parity numbers (plus the images it links). The chat template is the tokenizer
stage's (sha256, ``hfpipe.posttrain.templates.check_template``) in the export, its ``chat_template.jinja`` (vLLM's
``--chat-template``), every GGUF's metadata and the Modelfile; any other fails the stage naming both hashes. The
self-check reloads the export with transformers alone, compares its logits, generates, and checks that it stops at
end of turn. `hfpipe chat RECIPE` talks to the export (``hfpipe.stages.deploy.chat``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from hfpipe.errors import HfpipeError
from hfpipe.resources import DATASETS, TASKS, TEMPLATES, package_file
from hfpipe.stages import STAGES, Inputs, StageConfig, progress, resolve_path
from hfpipe.stages.tokenizer import TORTURE_SET

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
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m"]


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
        "with the source logits, and measured in llama.cpp itself when llama-cpp-python (hfpipe[gguf]) is installed: "
        "tokenization, logits, perplexity, greedy tokens, decode tokens/s. q4_k_m / q5_k_m (and q8_0 / q4_0 when it is "
        "installed) come from llama.cpp's quantizer applied to the f16 file; llama models with a byte-level BPE "
        "tokenizer whose pre-tokenizer llama.cpp has")
    gguf_max_logit_rel_rmse: dict[GGUFType, float] = Field(
        {"f32": 1e-6, "f16": 5e-3, "bf16": 3e-2, "q8_0": 0.05, "q4_0": 0.5, "q4_k_m": 0.5, "q5_k_m": 0.35},
        description="stated tolerance per GGUF type: RMS difference between the model's logits and those of its GGUF "
        "loaded back by transformers, relative to the logits' spread (RMS deviation from each position's mean), on the "
        "held-out text (in transformers, and in llama.cpp when installed); above it the stage fails. Measured on the "
        "tiny recipe: f16 1e-4-5e-4, q8_0 0.003-0.008, q4_0 0.04-0.28")
    gguf_llama_cpp_max_logit_rel_rmse: dict[GGUFType, float] = Field(
        {"f32": 1e-3, "f16": 5e-3, "bf16": 3e-2, "q8_0": 0.05, "q4_0": 0.5, "q4_k_m": 0.5, "q5_k_m": 0.35},
        description="the same tolerance for the logits llama.cpp computes from each GGUF (its own kernels and f16 KV "
        "cache, so f32 is not bit-exact there); above it the stage fails. Measured: f32 1.2e-4 (test model); f16 3e-4 "
        "(test model) and 2.9e-3 (SmolLM2-135M); q8_0 0.008-0.011, q4_k_m 0.024-0.061 (test model), 0.33 (SmolLM2)")
    gguf_greedy_tokens: int = Field(
        32, ge=1, le=512, description="greedy tokens generated by llama.cpp from a chat prompt and compared with "
        "transformers' (must be identical for f16 and f32); their decode rate is the tokens/s of the parity table")
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

    from hfpipe.posttrain.templates import check_template
    from hfpipe.stages.deploy import gguf as deploy_gguf, llamacpp, quant as deploy_quant
    from hfpipe.card import build_card, write_card
    from hfpipe.models import EOS_TOKEN, load_model_and_tokenizer
    from hfpipe.reproduce import output_digest

    deploy_quant.check_schemes(config.quantize)  # GPU-only schemes stop here, before any work
    not_made = {t: f"needs llama.cpp's quantizer: {llamacpp.INSTALL}" for t in config.gguf
                if t in deploy_gguf.LLAMA_CPP_ONLY and not llamacpp.available()}
    for t, why in not_made.items():  # the rest of the export is made; installing llama.cpp makes this stage stale
        logging.getLogger("hfpipe").warning(f"deploy.gguf: {t} not made: {why}")
    transformers.set_seed(inputs.seed)
    export = out_dir / EXPORT
    shutil.rmtree(export, ignore_errors=True)  # a retry must not keep shards of an earlier, different export

    # ---------------------------------------------------------------- load in the export dtype
    progress(f"exporting ({config.export_dtype})")
    model, tokenizer = load_model_and_tokenizer(inputs, torch_dtype=getattr(torch, config.export_dtype))
    model.eval()
    template_sha = check_template("deploy", inputs, tokenizer.chat_template, out_dir)  # the tokenizer stage's
    pre_type = deploy_gguf.llama_pre_type(tokenizer, TORTURE_SET) if config.gguf else None  # before any work

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

    # ---------------------------------------------------------------- the chat template vLLM is given (--chat-template)
    jinja = export / "chat_template.jinja"
    check_template("deploy", inputs, jinja.read_text(encoding="utf-8") if jinja.is_file() else None,
                   what=f"{EXPORT}/chat_template.jinja (vLLM's --chat-template)")

    # ---------------------------------------------------------------- GGUF files: written, loaded back, run in llama.cpp
    if config.gguf:
        progress(f"writing and measuring GGUF {', '.join(config.gguf)}")
        parity["gguf"] = _gguf_files(config, [t for t in config.gguf if t not in not_made], inputs, model.float(),
                                     tokenizer, export, out_dir, texts, pre_type, template_sha, eos_ids)
        parity["gguf_not_made"] = not_made
        parity["gguf_runtime"] = {
            "pre_tokenizer": pre_type, "llama_cpp": llamacpp.version() if llamacpp.available() else llamacpp.NOT_RUN,
            "exact_for": deploy_gguf.LLAMA_CPP_RUNTIMES if llamacpp.available() else
            f"{deploy_gguf.LLAMA_CPP_RUNTIMES} by the pre-tokenizer rules (llama.cpp pre-tokenizer '{pre_type}'); "
            f"{llamacpp.NOT_RUN}"}
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
    if parity.get("gguf_not_made"):
        metrics["gguf_not_made"] = sorted(parity["gguf_not_made"])
    for gguf_type, g in parity["gguf"].items():
        cpp = g["llama_cpp"] if isinstance(g["llama_cpp"], dict) else {}
        metrics[f"gguf_{gguf_type}"] = {"bytes": g["bytes"], "logit_rel_rmse": g["logit_rel_rmse"],
                                        "llama_cpp_logit_rel_rmse": cpp.get("logit_rel_rmse", llamacpp.NOT_RUN),
                                        "llama_cpp_perplexity_delta": cpp.get("perplexity_delta", llamacpp.NOT_RUN),
                                        "llama_cpp_decode_tokens_per_s": cpp.get("decode_tokens_per_s", llamacpp.NOT_RUN)}
    return metrics


def _gguf_files(config: Config, types: list[str], inputs: Inputs, full, tokenizer, export: Path, out_dir: Path,
                texts: list[str], pre_type: str, template_sha: str | None, eos_ids: list[int]) -> dict:
    """Write every GGUF type (K-quants through llama.cpp's quantizer from the f16 file), check each: loaded back by
    transformers, its chat template, and in llama.cpp itself when installed; then the Ollama Modelfile."""
    import gguf

    from hfpipe.posttrain.templates import check_template
    from hfpipe.stages.deploy import convert, gguf as deploy_gguf, llamacpp, ollama, quant as deploy_quant

    folder = export / "gguf"
    name = inputs.recipe_name
    use_cpp = llamacpp.available()
    # llama.cpp quantizes from the f16 file; when f16 is not asked for it is a work file, removed at the end
    cpp_types = [t for t in types if t in deploy_gguf.LLAMA_CPP_ONLY or (use_cpp and t in ("q8_0", "q4_0"))]
    f16 = folder / f"{name}-f16.gguf" if "f16" in types else out_dir / f".{name}-f16.gguf"
    # Llama: hfpipe's writer (the tensor map of llama.cpp's converter); other architectures: llama.cpp's converter on
    # the export, which then has to be on this machine (hfpipe.stages.deploy.convert)
    llama = full.config.model_type == "llama"

    def write(path: Path, gguf_type: str) -> None:
        if llama:
            deploy_gguf.write_gguf(full, tokenizer, path, gguf_type, name, pre_type)
        elif gguf_type in ("f32", "f16", "bf16", "q8_0"):
            convert.convert(export, path, pre_type, gguf_type, log=out_dir / f"convert-{gguf_type}.log")
        else:
            raise HfpipeError(f"deploy.gguf: {gguf_type} of a '{full.config.model_type}' model is made by llama.cpp's "
                              f"quantizer from the f16 file: {llamacpp.INSTALL}", 2)

    if cpp_types or "f16" in types:
        write(f16, "f16")
    blocks = deploy_quant._encode_texts(tokenizer, texts, config.parity_seq_len, config.parity_max_tokens)
    full_logits = deploy_quant._logits(full, blocks)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    torture = [*TORTURE_SET, deploy_gguf.CHKTXT]
    out: dict[str, dict] = {}
    for gguf_type in types:
        path = folder / f"{name}-{gguf_type}.gguf"
        if gguf_type in cpp_types:
            ftype = deploy_gguf.LLAMA_CPP_ONLY.get(gguf_type) or deploy_gguf.GGUF_TYPES[gguf_type][1]
            llamacpp.quantize(f16, path, ftype)
        elif gguf_type != "f16":
            write(path, gguf_type)
        tol = config.gguf_max_logit_rel_rmse.get(gguf_type)
        if deploy_gguf.transformers_reads(full.config.model_type):
            check = deploy_gguf.check_gguf(path, full, tokenizer, texts, config.parity_seq_len)
        elif use_cpp:  # SmolLM3 and others: llama.cpp's measurement below is the proof
            check = {"writer": "llama.cpp convert_hf_to_gguf.py", "bytes": path.stat().st_size, "logit_rel_rmse": 0.0,
                     "transformers": f"transformers cannot read a '{full.config.model_type}' GGUF back"}
        else:
            raise HfpipeError(f"deploy.gguf: transformers cannot read a '{full.config.model_type}' GGUF back to check "
                              f"it, and llama.cpp is not installed: {llamacpp.INSTALL}", 2)
        if gguf_type in cpp_types:
            check["writer"] = f"llama.cpp quantize ({llamacpp.version()}) from f16"
        check.update(file=path.name, tolerance=tol)
        if tol is None or check["logit_rel_rmse"] > tol:
            raise HfpipeError(f"deploy: {path.name} loaded back by transformers differs from the model by "
                              f"a relative RMS of {check['logit_rel_rmse']:.4g} in logits "
                              f"(deploy.gguf_max_logit_rel_rmse.{gguf_type} = {tol})", 1)
        field = gguf.GGUFReader(path).get_field("tokenizer.chat_template")
        check_template("deploy", inputs, field.contents() if field is not None else None,
                       what=f"{path.name}'s tokenizer.chat_template")
        check["chat_template_sha256"] = template_sha
        # ---- in llama.cpp itself
        if use_cpp:
            cpp = llamacpp.measure(path, model=full, tokenizer=tokenizer, blocks=blocks, full_logits=full_logits,
                                   torture=torture, prompt=prompt, greedy_tokens=config.gguf_greedy_tokens)
            if cpp["tokenization_differs"]:
                raise HfpipeError(f"deploy: llama.cpp tokenizes {len(cpp['tokenization_differs'])} of "
                                  f"{cpp['tokenization_strings']} torture strings differently from the trained "
                                  f"tokenizer in {path.name} (pre-tokenizer '{pre_type}', e.g. "
                                  f"{cpp['tokenization_differs'][0]!r}); tokenizer.pre_tokenizer has no exact "
                                  "llama.cpp equivalent", 1)
            cpp_tol = cpp["tolerance"] = config.gguf_llama_cpp_max_logit_rel_rmse.get(gguf_type)
            if cpp_tol is None or cpp["logit_rel_rmse"] > cpp_tol:
                raise HfpipeError(f"deploy: {path.name} in llama.cpp differs from the export by a relative RMS of "
                                  f"{cpp['logit_rel_rmse']:.4g} in logits (deploy.gguf_llama_cpp_max_logit_rel_rmse."
                                  f"{gguf_type} = {cpp_tol})", 1)
            if gguf_type in ("f32", "f16") and not cpp["greedy_equal"]:
                raise HfpipeError(f"deploy: {path.name}'s greedy {cpp['greedy_tokens']} tokens in llama.cpp differ "
                                  f"from transformers' at token {cpp['greedy_first_difference']}", 1)
            check["llama_cpp"] = cpp
        else:
            check["llama_cpp"] = llamacpp.NOT_RUN
        out[gguf_type] = check
    if f16.parent == out_dir:
        f16.unlink(missing_ok=True)

    if not out:
        return out
    # ---- Ollama: a Modelfile beside the files, its TEMPLATE rendering as the chat template does
    go = ollama.go_template(tokenizer)
    ollama.check_translation(tokenizer, go)
    target = next((t for t in ("q4_k_m", "q8_0", "f16") if t in out), types[0])
    stops = list(dict.fromkeys(tokenizer.convert_ids_to_tokens(i) for i in eos_ids))
    (folder / "Modelfile").write_text(ollama.modelfile(out[target]["file"], go, stops, template_sha), encoding="utf-8")
    return out


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
                       "gguf": list(getattr(c, "gguf", [])), **({"gguf_measured_in": _llama_cpp_note()} if c.gguf else {})},
            "expected": {}}


def _llama_cpp_note() -> str:
    from hfpipe.stages.deploy import llamacpp

    return llamacpp.version() if llamacpp.available() else f"{llamacpp.NOT_RUN} ({llamacpp.INSTALL})"


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
            cpp = g.get("llama_cpp")  # measured in llama.cpp, or the words "not run in llama.cpp" (never a match)
            row = {"type": fmt(gtype), **{k: fmt(g.get(k, "")) for k in (
                "file", "writer", "bytes", "max_abs_logit_diff", "logit_rel_rmse", "tolerance", "argmax_agreement",
                "token_agreement")}}
            if isinstance(cpp, dict):
                row["cpp"] = {k: fmt(cpp.get(k, "")) for k in (
                    "logit_rel_rmse", "argmax_agreement", "perplexity", "perplexity_full", "perplexity_delta",
                    "decode_tokens_per_s", "greedy_tokens", "tolerance")}
                row["cpp"]["tokens"] = f"{cpp.get('tokenization_equal')}/{cpp.get('tokenization_strings')} equal"
                row["cpp"]["greedy"] = "identical" if cpp.get("greedy_equal") else \
                    f"differs at token {cpp.get('greedy_first_difference')}"
            else:
                row["cpp"] = None
            gguf.append(row)
    heldout = parity.get("heldout") if isinstance(parity.get("heldout"), dict) else {}
    runtime = dict(parity.get("gguf_runtime")) if isinstance(parity.get("gguf_runtime"), dict) else {}
    if parity.get("gguf_not_made"):
        runtime["not_made"] = "; ".join(f"{t}: {why}" for t, why in parity["gguf_not_made"].items())
    return {"card": {"parity": {"quantized": quant, "gguf": gguf, "heldout": {k: fmt(v) for k, v in heldout.items()},
                                "task": fmt(parity.get("task") or ""),
                                "gguf_runtime": {k: fmt(v) for k, v in runtime.items()}}}}
