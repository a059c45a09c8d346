"""Serve stage: the hfpipe router's overhead over `transformers serve` direct, and continuous batching on CPU, side by
side in one run.

Model: a random Llama of the tiny recipe's shape (128 wide, 4 layers, vocab 4096, 256 positions; bench_eval's
``build_model``) exported by the real deploy stage (``export/``, no quantized variants). Backends: ``transformers
serve --device cpu`` started by ``serving.Stack`` exactly as the serve stage starts them, with --threads torch/OpenMP
threads each (default 1: on a loaded 2-core machine the default 2 threads oversubscribe, and each request then costs
6-20x the backend CPU time and the throughput swings 10x between runs); the router (Starlette + uvicorn in a thread of
this process, httpx to the backend, Prometheus metrics, route.jsonl) in front.

1. Router overhead (target). One Stack with variant ``full``; the same load test (``hfpipe.stages.serve.loadtest.run_loadtest``:
   --requests chat requests from the bundled held-out chat set, --concurrency in flight, --max-tokens, greedy, not
   streamed) alternately against the backend's own URL (direct) and the router's URL, through bench.paired (the
   protocol of README.md: a warm-up of each, --reps alternated pairs). Both sides must answer every request with zero
   errors and the same completion tokens (greedy: the same work). Target: the median of the paired ratios (router
   requests/s over direct, wall) >= 0.95. Also: p50 latency overhead in ms (median p50 of each side), the router's CPU time
   per request (this process's CPU time through the router minus direct, median runs: the client is in this process
   on both sides) and the backend's CPU time per request on each side (from /proc).
2. Continuous batching (figure only). A second Stack on the same export with ``continuous_batching: true`` (and
   ``eos_check: false``, which CB requires) and ``cb_num_blocks`` = --cb-num-blocks (default 64: the stage default
   sizes the KV cache from free RAM on CPU, ~14 GB resident here and a ~20 s first request); one warm-up, then the same
   load test through the router once (no new request after --cb-max-seconds); requests/s and p50/p95 beside the
   non-CB router's, CB / the median non-CB router run. An error (start or load test) is recorded as a figure instead of
   failing the bench.

The load-test client runs in this process next to the router (as in the serve stage), so they share the GIL; the
direct side has the same client. Load average (1 min) is recorded before, between and after; these machines are
shared, so only the ratio measured together means anything.

Run: .venv/bin/python benchmarks/bench_serve.py [--requests 48] [--concurrency 4] [--max-tokens 16] [--reps 8]
     (quick smoke run: --reps 1 --no-write; --no-cb skips part 2)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from bench import REPO, paired, target, write_result  # noqa: E402  (first: repo on sys.path, Hub offline)

SEED = 1234


T0 = time.perf_counter()


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def build_model(root: Path) -> Path:
    """The tiny recipe's model shape, random weights, a byte-level BPE tokenizer trained on stdlib text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from hfpipe.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, default_chat_template, save_model

    lib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8") for p in sorted(lib.glob("*.py"))[:60]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIAL_TOKENS,
                                                       show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                        pad_token=PAD_TOKEN, chat_template=default_chat_template())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return save_model(LlamaForCausalLM(config), tokenizer, root / "pretrain" / "model")


def export_model(root: Path) -> Path:
    """The deploy stage's real export of the tiny random model (no quantized variants, one latency repeat)."""
    from hfpipe.stages import Inputs, deploy

    model_dir = build_model(root)
    out = root / "deploy"
    out.mkdir()
    inputs = Inputs(recipe_name="bench", seed=SEED, recipe_dir=REPO / "recipes",
                    upstream={"pretrain": model_dir.parent}, model_stage="pretrain", fingerprint="0" * 64,
                    recipe_yaml="name: bench\nseed: 1234\npretrain: {max_steps: 2}\ndeploy: {}\n")
    deploy.run(deploy.Config(latency_repeats=1), inputs, out)
    return out / "export"


def serve_config(args, continuous_batching: bool):
    from hfpipe.stages import serve

    return serve.Config(variants=["full"], device="cpu", continuous_batching=continuous_batching, eos_check=False,
                        cpu_threads=args.threads or None,
                        cb_num_blocks=(args.cb_num_blocks or None) if continuous_batching else None,
                        loadtest={"requests": args.requests, "concurrency": args.concurrency,
                                  "max_tokens": args.max_tokens, "request_timeout_s": args.timeout})


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def proc_rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux /proc; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load(url: str, args, requests: int | None = None, max_seconds: float = 600.0,
         backend_pid: int | None = None) -> dict:
    """One load test; adds this process's CPU time (client, + router when it is in the path) and the backend's."""
    from hfpipe.stages.serve.loadtest import run_loadtest

    cpu0, backend0 = time.process_time(), proc_cpu_s(backend_pid) if backend_pid else None
    r = run_loadtest(url, requests=requests or args.requests, concurrency=args.concurrency, max_seconds=max_seconds,
                     max_tokens=args.max_tokens, timeout_s=args.timeout)
    r.pop("_records")
    r["bench_process_cpu_s"] = time.process_time() - cpu0
    backend1 = proc_cpu_s(backend_pid) if backend_pid else None
    r["backend_cpu_s"] = backend1 - backend0 if backend0 is not None and backend1 is not None else None
    return r


def summary(r: dict) -> dict:
    keys = ("requests_sent", "requests_ok", "errors", "completion_tokens", "wall_s", "requests_per_s",
            "completion_tokens_per_s", "latency_p50_s", "latency_p95_s", "stopped_by_time", "bench_process_cpu_s",
            "backend_cpu_s")
    out = {k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keys}
    if r["errors"]:
        out["error_examples"] = r["error_examples"]
    return out


def router_vs_direct(export: Path, root: Path, args) -> tuple[dict, dict[str, list[dict]]]:
    """Part 1: one Stack, the same load test direct and through the router, alternated after a warm-up of each."""
    from hfpipe.stages.serve import router as serving
    from hfpipe.stages import serve

    config = serve_config(args, continuous_batching=False)
    t0 = time.perf_counter()
    with serving.Stack(serving.variant_dirs(export, config.variants), config, root / "logs-plain",
                       serve.route_rule(config, SEED), "bench", host="127.0.0.1", port=serving.free_port()) as stack:
        start_s = time.perf_counter() - t0
        log(f"stack up in {start_s:.1f}s")
        urls = {"direct": stack.backends[0].url, "router": stack.url}
        runs: dict[str, list[dict]] = {"direct": [], "router": []}

        def side(name: str):
            def run(rep: int) -> float:
                r = load(urls[name], args, backend_pid=stack.backends[0].proc.pid)
                if rep >= 0:  # rep -1: the protocol's warm-up
                    runs[name].append(summary(r))
                log(f"rep {rep} {name}: {r['requests_ok']}/{r['requests_sent']} ok, {r['requests_per_s']:.2f} req/s, "
                    f"p50 {r['latency_p50_s']:.3f}s p95 {r['latency_p95_s']:.3f}s, load {load1()}")
                return r["requests_ok"]
            return run

        result = paired("serve", {"router": side("router"), "direct": side("direct")}, reference="direct",
                        reps=args.reps)
        rss = proc_rss_mb(stack.backends[0].proc.pid)
    return {"stack_start_s": round(start_s, 2), "backend_rss_mb": rss, "ratio": result["ratios"]["router"]}, runs


def continuous_batching(export: Path, root: Path, args) -> dict:
    """Part 2: the same load test through the router of a continuous-batching Stack (errors become a figure)."""
    from hfpipe.stages.serve import router as serving
    from hfpipe.stages import serve

    config = serve_config(args, continuous_batching=True)
    t0 = time.perf_counter()
    try:
        with serving.Stack(serving.variant_dirs(export, config.variants), config, root / "logs-cb",
                           serve.route_rule(config, SEED), "bench", host="127.0.0.1",
                           port=serving.free_port()) as stack:
            start_s = time.perf_counter() - t0
            log(f"cb stack up in {start_s:.1f}s")
            warm = load(stack.url, args, requests=args.warmup, max_seconds=args.cb_max_seconds)
            log(f"cb warm-up: {warm['requests_ok']}/{warm['requests_sent']} ok")
            r = load(stack.url, args, max_seconds=args.cb_max_seconds)
            rss = proc_rss_mb(stack.backends[0].proc.pid)
    except Exception as e:  # noqa: BLE001 -- recorded, the router-overhead part still counts
        return {"error": f"{type(e).__name__}: {e}"[:400]}
    out = {"stack_start_s": round(start_s, 2), "backend_rss_mb": rss, "warmup": summary(warm), "run": summary(r)}
    log(f"cb: {r['requests_ok']}/{r['requests_sent']} ok, {r['requests_per_s'] or 0:.2f} req/s, "
          f"p50 {r['latency_p50_s'] or 0:.3f}s p95 {r['latency_p95_s'] or 0:.3f}s, load {load1()}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=48, help="requests per load test")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of each request (greedy)")
    parser.add_argument("--warmup", type=int, default=8, help="requests of each side's warm-up load test")
    parser.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 8)),
                        help="alternated timed load tests of each side (direct, router) after a warm-up of each")
    parser.add_argument("--timeout", type=float, default=120, help="per-request timeout (s)")
    parser.add_argument("--cb-max-seconds", type=float, default=60,
                        help="continuous batching: no new request after this many seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of each backend (serve.cpu_threads; "
                        "1: no OpenMP oversubscription when other jobs load the machine; 0: the stage default, "
                        "cores / backends)")
    parser.add_argument("--cb-num-blocks", type=int, default=64,
                        help="continuous batching: KV cache blocks (serve.cb_num_blocks, required on CPU: transformers' "
                        "default sizes the cache from free RAM, ~14 GB resident and a ~20 s first request here)")
    parser.add_argument("--no-cb", action="store_true", help="skip the continuous-batching part")
    parser.add_argument("--no-write", action="store_true", help="print the figures, write no results/ file")
    args = parser.parse_args()

    load_before = load1()
    root = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        t = time.perf_counter()
        export = export_model(root)
        export_s = time.perf_counter() - t
        log(f"export in {export_s:.1f}s")

        # ---- 1: router vs direct, one stack, alternated ----
        plain, runs = router_vs_direct(export, root, args)
        load_between = load1()
        log("stack stopped")
        for side, rs in runs.items():
            bad = [r for r in rs if r["errors"] or r["requests_ok"] != args.requests]
            assert not bad, f"{side}: failed requests {bad}"
        tokens = {side: {r["completion_tokens"] for r in rs} for side, rs in runs.items()}
        assert len(tokens["direct"] | tokens["router"]) == 1, f"different completion tokens (not the same work): " \
            f"{tokens}"
        median = {side: statistics.median(r["requests_per_s"] for r in rs) for side, rs in runs.items()}
        p50 = {side: statistics.median(r["latency_p50_s"] for r in rs) for side, rs in runs.items()}
        p95 = {side: statistics.median(r["latency_p95_s"] for r in rs) for side, rs in runs.items()}
        ratio = plain["ratio"]  # median of paired ratios (bench.paired): the figure the target is checked on
        cpu = {side: statistics.median(r["bench_process_cpu_s"] for r in rs) for side, rs in runs.items()}
        backend_cpu = {side: statistics.median(r["backend_cpu_s"] for r in rs) if all(
            r["backend_cpu_s"] is not None for r in rs) else None for side, rs in runs.items()}

        # ---- 2: continuous batching through the router ----
        cb = {"skipped": "--no-cb"} if args.no_cb else continuous_batching(export, root, args)
        if not args.no_cb:
            log("cb stack stopped")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    figures = {
        "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "reps": args.reps, "warmup_requests": args.warmup, "completion_tokens_per_run": tokens["router"].pop(),
        "router_requests_per_s_median": round(median["router"], 3),
        "direct_requests_per_s_median": round(median["direct"], 3),
        "router_over_direct_requests_per_s": ratio["wall"], "router_over_direct_cpu": ratio["cpu"],
        "ratio_of_medians": round(median["router"] / median["direct"], 4),
        "router_latency_p50_s": round(p50["router"], 4), "direct_latency_p50_s": round(p50["direct"], 4),
        "router_p50_overhead_ms": round(1000 * (p50["router"] - p50["direct"]), 1),
        "router_latency_p95_s": round(p95["router"], 4), "direct_latency_p95_s": round(p95["direct"], 4),
        "router_cpu_ms_per_request": round(1000 * (cpu["router"] - cpu["direct"]) / args.requests, 2),
        "client_cpu_ms_per_request": round(1000 * cpu["direct"] / args.requests, 2),
        **{f"backend_cpu_ms_per_request_{side}": round(1000 * v / args.requests, 2) if v is not None else None
           for side, v in backend_cpu.items()},
        "stack_start_s": plain["stack_start_s"], "deploy_export_s": round(export_s, 2),
        "backend_rss_mb": plain["backend_rss_mb"],
        "backend_threads": args.threads or f"stage default ({os.cpu_count()} cores / 1 backend)",
    }
    if "run" in cb:
        r = cb["run"]
        figures.update({
            "cb_router_requests_per_s": r["requests_per_s"], "cb_latency_p50_s": r["latency_p50_s"],
            "cb_latency_p95_s": r["latency_p95_s"], "cb_requests_sent": r["requests_sent"],
            "cb_requests_ok": r["requests_ok"], "cb_errors": r["errors"], "cb_stopped_by_time": r["stopped_by_time"],
            "cb_over_noncb_requests_per_s": round(r["requests_per_s"] / median["router"], 4)
            if r["requests_per_s"] else None,
            "cb_stack_start_s": cb["stack_start_s"], "cb_warmup_wall_s": cb["warmup"]["wall_s"],
            "cb_backend_rss_mb": cb["backend_rss_mb"], "cb_num_blocks": args.cb_num_blocks or "stage default (sized "
            "from free RAM)"})
        if r.get("error_examples"):
            figures["cb_error_examples"] = r["error_examples"]
    else:
        figures["cb_error" if "error" in cb else "cb_skipped"] = cb.get("error") or cb.get("skipped")
    figures.update({"runs": runs, "cb_runs": cb if "run" in cb else None, "cpu_count": os.cpu_count(),
                    "load_avg_1min_before": load_before, "load_avg_1min_between": load_between,
                    "load_avg_1min_after": load1(), "total_wall_s": round(time.perf_counter() - T0, 1)})
    targets = [target("router vs direct transformers serve requests/s (median of paired ratios)", ratio["wall"], ">=",
                      0.95)]
    print(json.dumps({"figures": {k: v for k, v in figures.items() if k not in ("runs", "cb_runs")},
                      "targets": targets}, indent=2))
    if not args.no_write:
        write_result("serve", figures, targets, NOTES)


NOTES = ("Tiny random Llama (tiny recipe shape) exported by the deploy stage; transformers serve --device cpu started "
         "by serving.Stack as the serve stage does, 1 torch/OpenMP thread per backend (--threads); the same "
         "hfpipe.stages.serve.loadtest (bundled held-out chat prompts, greedy, not streamed) direct to the backend and through the "
         "router, alternated in one stack after a warm-up of each; ratio = median of the paired ratios of requests/s "
         "(bench.paired), p50 overhead = median p50 of each side, router CPU = this process's "
         "CPU time through the router minus direct (the client is in this process on both sides). Every request "
         "answered, zero errors and equal completion tokens checked. Continuous batching: a second stack (eos_check "
         "off, as CB requires; cb_num_blocks 64 because the default sizes the KV cache from free RAM), one warm-up and "
         "one run through the router, ratio against the median non-CB router run; figure only. The load-test client "
         "shares this process (and its GIL) with the router.")


if __name__ == "__main__":
    main()
