"""GGUF files measured in llama.cpp itself (llama-cpp-python, the optional ``hfpipe[gguf]`` extra), and llama.cpp's
own quantizer for the K-quants.

A GGUF loaded back by transformers proves the weights, not what llama.cpp does with them: llama.cpp runs its own
tokenizer (from the file's metadata) and its own kernels. So for every GGUF file this module measures, in llama.cpp:

- tokenization: llama.cpp's token ids against the exported tokenizer's on every string of the tokenizer torture set
  (``hfpipe.stages.tokenizer.TORTURE_SET``, which also holds llama.cpp's own check string);
- logits: llama.cpp's logits on the held-out blocks (the same token ids) against the safetensors export's, as RMS of the
  difference relative to the logits' spread (the stage fails above ``deploy.gguf_max_logit_rel_rmse``), argmax agreement,
  and perplexity on those blocks beside the export's (the perplexity delta);
- greedy generation: 32 tokens from a chat prompt, against transformers' greedy tokens (must be identical for f16);
- decode speed: tokens per second of that greedy loop (one token per llama.cpp decode call).

Without llama-cpp-python installed nothing here runs, and the parity table says "not run in llama.cpp".
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import importlib.util
import time
from pathlib import Path

from hfpipe.errors import HfpipeError

NOT_RUN = "not run in llama.cpp"
INSTALL = "install the hfpipe[gguf] extra (`make gguf`: builds llama-cpp-python once per machine)"


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def version() -> str:
    from importlib import metadata

    return f"llama-cpp-python {metadata.version('llama-cpp-python')}"


# ----------------------------------------------------------------------------------------------------------------------
# llama.cpp's quantizer

def quantize(src: Path, dst: Path, ftype: int, threads: int = 0) -> Path:
    """``llama_model_quantize`` (what the ``llama-quantize`` tool runs) from ``src`` (the f16 file) to ``dst``;
    ``ftype``: llama.cpp's file type id (LLAMA_FTYPE_MOSTLY_*)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    dst.parent.mkdir(parents=True, exist_ok=True)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise HfpipeError(f"deploy.gguf: llama.cpp's quantizer failed on {src.name} -> {dst.name} (code {rc})", 1)
    return dst


# ----------------------------------------------------------------------------------------------------------------------
# Loading and running

def load(path: Path, n_ctx: int):
    """A llama.cpp model and context over ``path`` with the logits of every position kept (``Llama.scores``)."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, logits_all=True, verbose=False,
                 seed=0)


def tokenize(llm, text: str, special: bool = False) -> list[int]:
    """llama.cpp's tokenizer, from the file's metadata, with no BOS added (as the exported tokenizer encodes)."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def logits(llm, ids: list[int]):
    """float32 [len(ids), vocab] logits of llama.cpp on ``ids`` from an empty context."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def greedy(llm, prompt: list[int], n: int, stop: set[int] | None = None) -> tuple[list[int], float]:
    """Greedy continuation of ``prompt`` (argmax of llama.cpp's logits, one decode call per token), stopping early at
    a ``stop`` id; returns the new ids and the decode rate in tokens per second."""
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        if stop and tok in stop:
            break
        llm.eval([tok])
    return out, len(out) / max(time.perf_counter() - t0, 1e-9)


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy tokens (argmax of the full forward pass, no stopping) for the same prompt."""
    import torch

    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


# ----------------------------------------------------------------------------------------------------------------------
# The measurement

def measure(path: Path, *, model, tokenizer, blocks, full_logits, torture: list[str], prompt: str,
            greedy_tokens: int) -> dict:
    """Parity of one GGUF file in llama.cpp against the export (``model``: the export in float32; ``blocks``: [n, L]
    held-out token ids; ``full_logits``: the export's logits on them)."""
    import numpy as np
    import torch

    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    llm = load(path, n_ctx=max(int(blocks.shape[1]), n_prompt + greedy_tokens) + 8)
    try:
        meta = dict(llm.metadata)
        # ---- tokenization on the torture set
        differ = []
        for text in torture:
            ours = tokenizer(text, add_special_tokens=False)["input_ids"]
            theirs = tokenize(llm, text)
            if ours != theirs:
                differ.append(text[:40])
        # ---- logits and perplexity on the held-out blocks
        sq_err = sq_dev = nll = 0.0
        same = n_pos = 0
        for i in range(blocks.shape[0]):
            ids = blocks[i].tolist()
            a = full_logits[i].numpy().astype(np.float64)
            b = logits(llm, ids).astype(np.float64)
            sq_err += float(((a - b) ** 2).sum())
            sq_dev += float(((a - a.mean(-1, keepdims=True)) ** 2).sum())
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            n_pos += len(ids)
            logp = torch.log_softmax(torch.from_numpy(b[:-1]), -1)
            nll -= float(logp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
        n_pred = blocks.shape[0] * (blocks.shape[1] - 1)
        full_nll = float(torch.nn.functional.cross_entropy(  # mean, in float64: exp() of a float32 loss overflows
            full_logits[:, :-1].double().reshape(-1, full_logits.shape[-1]), blocks[:, 1:].reshape(-1)))
        full_ppl, ppl = math.exp(full_nll), math.exp(nll / n_pred)
        # ---- greedy generation from a chat prompt
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if tokenize(llm, prompt, special=True) != prompt_ids:
            differ.append("chat prompt (special tokens)")
        cpp, tok_s = greedy(llm, prompt_ids, greedy_tokens)
        hf = hf_greedy(model, prompt_ids, greedy_tokens)
    finally:
        llm.close() if hasattr(llm, "close") else None
    return {
        "runtime": version(),
        "pre_tokenizer": meta.get("tokenizer.ggml.pre"),
        "chat_template_sha256": hashlib.sha256(meta["tokenizer.chat_template"].encode()).hexdigest()
        if meta.get("tokenizer.chat_template") else None,
        "tokenization_equal": len(torture) + 1 - len(differ), "tokenization_strings": len(torture) + 1,
        "tokenization_differs": differ,
        "logit_rel_rmse": (sq_err / max(sq_dev, 1e-12)) ** 0.5, "argmax_agreement": same / max(1, n_pos),
        "perplexity": ppl, "perplexity_full": full_ppl, "perplexity_delta": ppl - full_ppl,
        "heldout_tokens": int(blocks.numel()),
        "greedy_tokens": greedy_tokens, "greedy_equal": cpp == hf,
        "greedy_first_difference": next((i for i, (x, y) in enumerate(zip(cpp, hf)) if x != y), None),
        "decode_tokens_per_s": tok_s,
    }
