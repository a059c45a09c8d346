"""Quantized variants of the export, and their parity with the full-precision model.

CPU schemes go through torchao, the quantization library transformers integrates (``TorchAoConfig``):

- ``int8``: ``Int8WeightOnlyConfig``, per-channel symmetric int8 weights of every linear layer;
- ``int4``: ``IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))``: 4-bit values in groups
  with one scale each. torchao keeps them unpacked in int8 storage on x86 CPUs, so the file is not smaller than int8's;
  the numbers say so.

GPU schemes (``bnb_int8``, ``bnb_int4`` through bitsandbytes, ``gptq`` through GPTQModel, ``awq``) are recipe keys that
stop the stage with one line when no CUDA device (or the library) is there.

Each variant is saved with ``save_pretrained`` (safetensors) under ``export/quantized/<scheme>/`` with the tokenizer,
and measured side by side with the full model: size ratio (weight bytes), latency ratio (median forward time on the same
batch, interleaved), perplexity on held-out text, next-token argmax agreement, and accuracy on a bundled
multiple-choice task scored by log-likelihood.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from hfpipe.errors import HfpipeError

CPU_SCHEMES = ("int8", "int4")
GPU_SCHEMES = {"bnb_int8": "bitsandbytes", "bnb_int4": "bitsandbytes", "gptq": "gptqmodel", "awq": "llmcompressor"}


def check_schemes(schemes) -> None:
    """Refuse GPU-only schemes before any work is done, in one line."""
    import importlib.util

    import torch

    for s in schemes:
        if s not in GPU_SCHEMES:
            continue
        lib = GPU_SCHEMES[s]
        if not torch.cuda.is_available():
            raise HfpipeError(f"deploy.quantize: '{s}' needs a CUDA GPU ({lib}) and this machine has none; "
                              f"use {' or '.join(CPU_SCHEMES)} (torchao, CPU)", 1)
        if importlib.util.find_spec(lib) is None:
            raise HfpipeError(f"deploy.quantize: '{s}' needs the '{lib}' package; install it or use "
                              f"{' or '.join(CPU_SCHEMES)}", 1)
        if s in ("gptq", "awq"):
            raise HfpipeError(f"deploy.quantize: '{s}' needs calibration through {lib}, which hfpipe does not drive "
                              f"yet; use bnb_int8 / bnb_int4 on a GPU, or {' / '.join(CPU_SCHEMES)}", 1)


def quantization_config(scheme: str, group_size: int):
    import torch
    from transformers import BitsAndBytesConfig, TorchAoConfig

    if scheme == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    if scheme == "int4":
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup

        return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size)))
    if scheme == "bnb_int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if scheme == "bnb_int4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    raise HfpipeError(f"deploy.quantize: unknown scheme '{scheme}'", 2)


# ----------------------------------------------------------------------------------------------------------------------
# Held-out text and the bundled task

def heldout_texts(path: Path, language: str, max_docs: int) -> list[str]:
    """Documents of one language from a jsonl file of {"text", "metadata": {"language"}} rows."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            lang = (row.get("metadata") or {}).get("language", row.get("language"))
            if row.get("text") and (not language or lang == language):
                texts.append(row["text"])
            if len(texts) >= max_docs:
                break
    if not texts:
        raise HfpipeError(f"deploy: no '{language}' documents in {path}", 1)
    return texts


def task_docs(path: Path, limit: int) -> list[dict]:
    """Rows {"country", "choices", "answer"} of the bundled capitals task (hfpipe/tasks/capitals/test.jsonl)."""
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()][:limit]
    if not docs or not all({"country", "choices", "answer"} <= set(d) for d in docs):
        raise HfpipeError(f"deploy: {path} has no rows with country/choices/answer", 1)
    return docs


def _encode_texts(tokenizer, texts: list[str], seq_len: int, max_tokens: int):
    """Held-out text as [n, seq_len] blocks of token ids (at most max_tokens tokens in all)."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    n = len(ids) // seq_len
    if n == 0:
        raise HfpipeError(f"deploy: held-out text gives {len(ids)} tokens, fewer than one block of {seq_len}", 1)
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def _logits(model, blocks):
    import torch

    with torch.no_grad():  # a bitsandbytes variant lives on the GPU: inputs go to the model, logits come back here
        return torch.cat([model(blocks[i:i + 1].to(model.device)).logits.float().cpu() for i in range(blocks.shape[0])])


def _perplexity(logits, blocks) -> float:
    import torch.nn.functional as F

    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    return float(loss.exp())


def _task_accuracy(model, tokenizer, docs: list[dict]) -> float:
    """Log-likelihood multiple choice, as lm-eval scores the task (acc): the choice with the highest sum wins."""
    import torch

    correct = 0
    for d in docs:
        prompt = f"Question: What is the capital of {d['country']}?\nAnswer:"
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = []
        for c in d["choices"]:
            c_ids = tokenizer(" " + c, add_special_tokens=False)["input_ids"]
            x = torch.tensor([p_ids + c_ids], device=model.device)
            with torch.no_grad():
                logp = model(x).logits.float().cpu().log_softmax(-1)[0, len(p_ids) - 1:-1]
            scores.append(logp.gather(-1, torch.tensor(c_ids)[:, None]).sum().item())
        correct += int(max(range(len(scores)), key=scores.__getitem__) == d["answer"])
    return correct / len(docs)


def _latency(models: dict, blocks, repeats: int) -> dict[str, float]:
    """Median seconds of one forward pass over the same block, models interleaved so machine noise hits all alike."""
    import torch

    x = {k: blocks[:1].to(m.device) for k, m in models.items()}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # GPU work is asynchronous
    times = {k: [] for k in models}
    with torch.no_grad():
        for k, m in models.items():  # warm-up
            m(x[k])
        for _ in range(repeats):
            for k, m in models.items():
                sync()
                t0 = time.perf_counter()
                m(x[k])
                sync()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _library(scheme: str) -> str:
    """'torchao 0.18.0': the library that quantized the variant and its version (the card's Environment lists only
    the libraries every stage records)."""
    from importlib import metadata

    lib = "torchao" if scheme in CPU_SCHEMES else GPU_SCHEMES[scheme]
    try:
        return f"{lib} {metadata.version(lib)}"
    except metadata.PackageNotFoundError:
        return lib


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


# ----------------------------------------------------------------------------------------------------------------------
# Public API

def quantize_and_measure(export: Path, schemes, *, tokenizer, texts: list[str], docs: list[dict], seq_len: int,
                         max_tokens: int, repeats: int, group_size: int) -> dict[str, dict]:
    """Save each scheme's variant under export/quantized/<scheme>/ and return its parity numbers vs full precision."""
    import torch
    from transformers import AutoModelForCausalLM

    # beside a GPU scheme (bitsandbytes loads onto the GPU) the full model is measured on the GPU too
    device = "cuda" if any(s in GPU_SCHEMES for s in schemes) else "cpu"
    full = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).to(device).eval()
    blocks = _encode_texts(tokenizer, texts, seq_len, max_tokens)
    full_logits = _logits(full, blocks)
    full_ppl = _perplexity(full_logits, blocks)
    full_acc = _task_accuracy(full, tokenizer, docs)
    full_bytes = _weight_bytes(export)
    out: dict[str, dict] = {}
    for scheme in schemes:
        folder = export / "quantized" / scheme
        q = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32,
                                                 quantization_config=quantization_config(scheme, group_size)).eval()
        q.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # what a user loads is the saved folder: measure that, and check it equals the in-memory variant
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
        q_logits = _logits(reloaded, blocks)
        if not torch.equal(q_logits, _logits(q, blocks)):
            raise HfpipeError(f"deploy: the saved {scheme} variant in {folder} gives other logits than the one saved", 1)
        lat = _latency({"full": full, scheme: reloaded}, blocks, repeats)
        ppl = _perplexity(q_logits, blocks)
        acc = _task_accuracy(reloaded, tokenizer, docs)
        out[scheme] = {
            "library": _library(scheme),
            "weight_bytes": _weight_bytes(folder), "size_ratio": _weight_bytes(folder) / full_bytes,
            "latency_ratio": lat[scheme] / lat["full"],
            "perplexity": ppl, "perplexity_full": full_ppl, "perplexity_delta": ppl - full_ppl,
            "argmax_agreement": float((q_logits.argmax(-1) == full_logits.argmax(-1)).float().mean()),
            "task_acc": acc, "task_acc_full": full_acc, "task_acc_delta": acc - full_acc,
            "heldout_tokens": int(blocks.numel()), "task_docs": len(docs),
        }
    return out
