"""Latency and cost of the eval stage's model: prefill and decode throughput, per-request latency percentiles at
several batch sizes, peak memory, and cost per million tokens from a price per hour.

Method, per batch size B (``repeats`` timed runs after one untimed warm-up):
- prefill: one forward pass over B prompts of ``prompt_tokens`` tokens (real held-out text) -> B*P / seconds;
- request: ``model.generate`` of exactly ``new_tokens`` greedy tokens for the same batch (prefill + decode); every
  request in the batch finishes with the batch, so its latency is the batch's wall time; p50/p95 over the repeats
  (nearest rank);
- decode: B*N / (request time - prefill time).
Cost per million tokens = price_per_hour / 3600 / (tokens per second) * 1e6, for generated (decode) and prompt
(prefill) tokens at the batch size with the best decode throughput. Peak memory: CUDA max allocated on a GPU,
else the process's peak resident set size (includes everything the process loaded before).
"""

from __future__ import annotations

import math
import time


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def measure(model, tokenizer, text: str, *, batch_sizes: list[int], prompt_tokens: int, new_tokens: int,
            repeats: int, price_per_hour: float | None) -> dict:
    import resource

    import torch

    device = next(model.parameters()).device
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < prompt_tokens + max(batch_sizes):
        raise ValueError(f"latency text has {len(ids)} tokens, need {prompt_tokens + max(batch_sizes)}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = {}
    for b in batch_sizes:
        batch = torch.tensor([ids[i:i + prompt_tokens] for i in range(b)], device=device)  # b different prompts
        mask = torch.ones_like(batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        gen = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=pad)
        prefill, request = [], []
        with torch.inference_mode():
            model(batch, attention_mask=mask)
            model.generate(batch, **gen)  # warm-up
            for _ in range(repeats):
                sync(); t0 = time.perf_counter()
                model(batch, attention_mask=mask)
                sync(); t1 = time.perf_counter()
                out = model.generate(batch, **gen)
                sync(); t2 = time.perf_counter()
                prefill.append(t1 - t0)
                request.append(t2 - t1)
        assert out.shape[1] == prompt_tokens + new_tokens, out.shape
        p_med, r_med = _percentile(prefill, 50), _percentile(request, 50)
        rows[b] = {"prefill_tokens_per_s": b * prompt_tokens / p_med,
                   "decode_tokens_per_s": b * new_tokens / max(r_med - p_med, 1e-9),
                   "latency_p50_s": r_med, "latency_p95_s": _percentile(request, 95)}
    if device.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:
        peak_mb, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
    best = max(rows, key=lambda b: rows[b]["decode_tokens_per_s"])
    cost = None
    if price_per_hour is not None:
        cost = {"price_per_hour": price_per_hour, "at_batch_size": best,
                "per_million_output_tokens": price_per_hour / 3600 / rows[best]["decode_tokens_per_s"] * 1e6,
                "per_million_input_tokens": price_per_hour / 3600 / rows[best]["prefill_tokens_per_s"] * 1e6}
    return {"device": str(device), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
            "batch_sizes": {str(b): r for b, r in rows.items()}, "peak_memory_mb": peak_mb,
            "peak_memory_kind": peak_kind, "cost": cost}
