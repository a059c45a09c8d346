"""deploy: export the final model as a self-contained Hugging Face folder that loads with plain transformers.

Loads the upstream model (or the recipe's base_model) in ``export_dtype``, makes generation stop at the chat
template's end of turn (``<|im_end|>``), and writes ``out_dir/export/``: safetensors weights (sharded at
``max_shard_size``), config, generation config, tokenizer with its chat template, and README.md, the model card built by
``hfpipe.card`` from every finished upstream stage folder (plus the curve images it links). The self-check reloads the
export with transformers alone, compares its logits, generates, and checks that it stops at end of turn.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from hfpipe.errors import HfpipeError
from hfpipe.stages import STAGES, Inputs, StageConfig

# "model" is the weights to export; every other finished stage is read only for the model card.
READS = ("model",) + tuple(s for s in STAGES if s != "deploy")
CARD = {"name": "Export: safetensors + Hugging Face model card", "paper": None, "citation": None}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


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


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import torch
    import transformers

    from hfpipe.card import build_card, write_card
    from hfpipe.modeling import EOS_TOKEN, load_model_and_tokenizer

    transformers.set_seed(inputs.seed)
    export = out_dir / "export"
    shutil.rmtree(export, ignore_errors=True)  # a retry must not keep shards of an earlier, different export

    # ---------------------------------------------------------------- load in the export dtype
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

    # ---------------------------------------------------------------- model card (README.md + curve images)
    card = build_card(inputs.recipe_name, inputs.recipe_yaml, dict(inputs.upstream),
                      pending={"deploy": inputs.fingerprint} if inputs.fingerprint else None, recipe_dir=inputs.recipe_dir)
    write_card(card, export / "README.md")

    # ---------------------------------------------------------------- self-check: plain transformers, no hfpipe
    new_tokens = _self_check(export, model, eos_ids, config)
    files = sorted(p for p in export.rglob("*") if p.is_file())
    return {"export_bytes": sum(p.stat().st_size for p in files), "n_files": len(files),
            "n_params": sum(p.numel() for p in model.parameters()), "check_new_tokens": new_tokens}


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
