"""``hfpipe loadtest``: a short, bounded load test of an OpenAI-compatible endpoint on this machine.

Sends at most ``requests`` chat requests, ``concurrency`` at a time, and issues no new request after ``max_seconds``
(those in flight finish or time out). Prompts are the user turns of a chat jsonl (default: the bundled held-out chat
set). Loopback only: the URL must be 127.0.0.0/8, ::1 or localhost. Reports latency p50/p95 (and time to the first
streamed chunk with ``stream``), requests/s, generated tokens/s, errors, finish reasons and, behind the hfpipe router,
the share of requests each variant answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from hfpipe.errors import HfpipeError
from hfpipe.resources import DATASETS, package_file
from hfpipe.stages import progress
from hfpipe.stages.serve.router import VARIANT_HEADER, check_url_loopback

DEFAULT_PROMPTS = package_file(DATASETS, "sft_chat_eval.jsonl")


def load_prompts(path: Path, limit: int) -> list[list[dict]]:
    """Each line's messages up to (not including) its last assistant turn."""
    prompts = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise HfpipeError(f"loadtest: cannot read prompts {path}: {e.strerror}", 2)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            while messages and messages[-1]["role"] == "assistant":
                messages = messages[:-1]
            if not messages or not all(isinstance(m["content"], str) for m in messages):
                raise ValueError("no user turn")
        except (ValueError, KeyError, TypeError) as e:
            raise HfpipeError(f"loadtest: {path}:{n}: not a chat line with messages[role, content] ({e})", 2)
        prompts.append(messages)
        if len(prompts) >= limit:
            break
    if not prompts:
        raise HfpipeError(f"loadtest: {path} has no prompts", 2)
    return prompts


def _percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method)."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


async def _one(client, url: str, body: dict, headers: dict, stream: bool) -> dict:
    t0 = time.perf_counter()
    rec = {"ok": False, "status": None, "latency_s": None, "ttft_s": None, "completion_tokens": 0,
           "finish_reason": None, "variant": None, "error": None, "content": None}
    try:
        async with client.stream("POST", url, json={**body, "stream": stream}, headers=headers) as r:
            rec["status"], rec["variant"] = r.status_code, r.headers.get(VARIANT_HEADER)
            if stream:
                pieces = []
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    for ch in event.get("choices") or []:
                        delta = (ch.get("delta") or {}).get("content")
                        if delta:
                            if rec["ttft_s"] is None:
                                rec["ttft_s"] = time.perf_counter() - t0
                            pieces.append(delta)
                            rec["completion_tokens"] += 1
                        rec["finish_reason"] = ch.get("finish_reason") or rec["finish_reason"]
                    if event.get("usage"):
                        rec["completion_tokens"] = event["usage"].get("completion_tokens", rec["completion_tokens"])
                rec["content"] = "".join(pieces)
            else:
                data = json.loads(await r.aread())
                if r.status_code == 200:
                    choice = data["choices"][0]
                    rec["content"] = choice["message"].get("content")
                    rec["finish_reason"] = choice.get("finish_reason")
                    rec["completion_tokens"] = (data.get("usage") or {}).get("completion_tokens", 0)
                else:
                    rec["error"] = str(data.get("error") or data.get("detail") or data)[:200]
        rec["ok"] = rec["status"] == 200 and rec["finish_reason"] in ("stop", "length")
    except Exception as e:  # noqa: BLE001 -- every failure is counted, none stops the test
        rec["error"] = f"{type(e).__name__}: {e}"[:200]
    rec["latency_s"] = time.perf_counter() - t0
    return rec


async def _run(url: str, prompts: list[list[dict]], requests: int, concurrency: int, max_seconds: float,
               max_tokens: int, stream: bool, timeout_s: float, headers: dict) -> tuple[list[dict], float]:
    import httpx

    endpoint = url.rstrip("/") + "/v1/chat/completions"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    records: list[dict] = []
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    async def worker(client):
        while time.perf_counter() < deadline:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {"messages": prompts[i % len(prompts)], "max_tokens": max_tokens, "temperature": 0.0}
            records.append(await _one(client, endpoint, body, headers, stream))
            progress(advance=1)

    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return records, time.perf_counter() - t0


def run_loadtest(url: str, *, requests: int, concurrency: int, max_seconds: float, max_tokens: int,
                 prompts_file: Path | None = None, stream: bool = False, timeout_s: float = 60.0,
                 headers: dict | None = None) -> dict:
    """Run the load test against ``url`` (loopback only) and return its figures."""
    check_url_loopback(url)
    prompts = load_prompts(prompts_file or DEFAULT_PROMPTS, max(requests, 1))
    records, wall = asyncio.run(_run(url, prompts, requests, concurrency, max_seconds, max_tokens, stream,
                                     timeout_s, headers or {}))
    ok = [r for r in records if r["ok"]]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    tokens = sum(r["completion_tokens"] for r in ok)
    finish: dict[str, int] = {}
    variants: dict[str, int] = {}
    for r in ok:
        finish[r["finish_reason"]] = finish.get(r["finish_reason"], 0) + 1
        if r["variant"]:
            variants[r["variant"]] = variants.get(r["variant"], 0) + 1
    errors = [r for r in records if not r["ok"]]
    return {
        "url": url, "requests_planned": requests, "requests_sent": len(records), "requests_ok": len(ok),
        "errors": len(errors), "error_examples": sorted({str(r["error"] or r["status"]) for r in errors})[:3],
        "concurrency": concurrency, "max_tokens": max_tokens, "stream": stream, "max_seconds": max_seconds,
        "wall_s": round(wall, 3), "stopped_by_time": len(records) < requests,
        "latency_p50_s": _percentile(lat, 0.5), "latency_p95_s": _percentile(lat, 0.95),
        "latency_mean_s": sum(lat) / len(lat) if lat else None, "latency_max_s": max(lat) if lat else None,
        "ttft_p50_s": _percentile(ttft, 0.5), "ttft_p95_s": _percentile(ttft, 0.95),
        "requests_per_s": len(ok) / wall if wall > 0 else None,
        "completion_tokens": tokens, "completion_tokens_per_s": tokens / wall if wall > 0 else None,
        "finish_reasons": finish, "variant_counts": variants,
        "examples": [{"variant": r["variant"], "finish_reason": r["finish_reason"],
                      "completion_tokens": r["completion_tokens"], "content": (r["content"] or "")[:120]}
                     for r in ok[:3]],
        "_records": records,
    }


def split_check(counts: dict[str, int], expected: dict[str, float] | None, tolerance: float) -> dict | None:
    """Observed share of each variant against the weighted rule's shares: max |observed - expected| <= tolerance."""
    if not expected:
        return None
    n = sum(counts.values())
    if n == 0:
        return {"expected": expected, "observed": {}, "max_abs_deviation": None, "tolerance": tolerance,
                "within_tolerance": False, "n": 0}
    observed = {v: counts.get(v, 0) / n for v in expected}
    dev = max(abs(observed[v] - expected[v]) for v in expected)
    return {"expected": expected, "observed": observed, "max_abs_deviation": dev, "tolerance": tolerance,
            "within_tolerance": dev <= tolerance, "n": n}
