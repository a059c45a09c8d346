"""serve: put the exported model behind an existing inference server, route between its variants, load-test it.

Run just this stage (the stages it reads must be done; add --force serve to redo it):

    hfpipe run recipes/tiny.yaml --only serve

Reads the deploy stage's export. Starts one backend per variant in ``variants`` (``full`` = the export, ``int8``/...
= ``export/quantized/<scheme>``) with the chosen engine (``transformers serve`` here; ``vllm`` / ``tgi`` on GPU
machines) on loopback ports, and the hfpipe router in front of them (``hfpipe/stages/serve/router.py``: routing rule, one JSON line
per decision in ``route.jsonl``, Prometheus ``/metrics``). Then:

1. checks the served model against the card: the export's chat template and end-of-turn token; each variant, asked
   with the end-of-turn token pushed to the top (``logit_bias``), must stop right there with ``finish_reason: stop``;
2. runs the bounded load test (``hfpipe/stages/serve/loadtest.py``) through the router: p50/p95 latency, requests/s, tokens/s;
3. checks the router's split against its rule (weighted rule: every share within ``route.split_tolerance``);
4. scrapes ``/metrics`` (``metrics.prom``) and checks its request count against the load test's;
5. stops everything. ``loadtest.json`` and ``serve.json`` (the command lines for transformers, vLLM and TGI) go into
   the model card beside the eval stage's in-process latency.

``hfpipe serve RECIPE`` starts the same stack in the foreground; ``hfpipe loadtest RECIPE`` runs this stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from hfpipe.errors import HfpipeError
from hfpipe.stages import StageConfig, progress, resolve_path

OUTPUTS = ()  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("serve.json",)
READS = ("deploy",)
CARD = {"name": "Serving: transformers serve (vLLM / TGI on GPUs) behind the hfpipe router, Prometheus metrics, "
                "bounded load test", "paper": None, "citation": None}


SERVE, LOADTEST = "serve.json", "loadtest.json"  # command lines and template check; the load test figures

class Route(StageConfig):
    rule: Literal["weighted", "header", "size"] = Field(
        "weighted", description="how the router picks a variant: weighted = seeded random split by `weights`; "
        "header = the variant named in the `header` request header (else `default`); size = requests of at most "
        "`size_threshold_tokens` (prompt tokens + max_tokens) go to `small`, larger ones to `large`")
    weights: dict[str, float] = Field({}, description="weighted rule: variant -> relative weight (default: equal)")
    header: str = Field("x-hfpipe-variant", pattern=r"^[A-Za-z0-9-]+$", description="header rule: request header "
                        "that names the variant")
    default: str | None = Field(None, description="header rule: variant for requests without a valid header "
                                "(default: the first variant)")
    size_threshold_tokens: int = Field(256, ge=1, description="size rule: largest request (tokens) sent to `small`")
    small: str | None = Field(None, description="size rule: variant for small requests (default: the last variant)")
    large: str | None = Field(None, description="size rule: variant for large requests (default: the first variant)")
    split_tolerance: float = Field(0.15, gt=0, le=1, description="weighted rule: largest allowed |observed share - "
                                   "weight share| of any variant over the load test, else the stage fails (with 48 "
                                   "requests split 50/50 one standard deviation is 0.072)")


class LoadTest(StageConfig):
    requests: int = Field(48, ge=1, le=100_000, description="requests sent at most")
    concurrency: int = Field(4, ge=1, le=1024, description="requests in flight at once")
    max_seconds: float = Field(120, gt=0, le=3600, description="no new request after this many seconds")
    max_tokens: int = Field(16, ge=1, le=8192, description="max_tokens of each chat request (greedy)")
    stream: bool = Field(False, description="stream the answers (server-sent events) and measure time to first token")
    prompts: str | None = Field(None, description="chat jsonl ({messages: [...]}) whose user turns are the prompts "
                                "(recipe-relative); default: the bundled hfpipe/datasets/sft_chat_eval.jsonl")
    request_timeout_s: float = Field(60, gt=0, le=3600, description="per-request timeout; a timeout counts as an "
                                     "error")
    max_error_rate: float = Field(0.0, ge=0, le=1, description="largest share of failed requests before the stage "
                                  "fails")


class Config(StageConfig):
    engine: Literal["transformers", "vllm", "tgi"] = Field(
        "transformers", description="inference server: transformers serve (CPU or GPU); vllm or tgi (CUDA GPU). The "
        "stage runs it here; command lines for the others are rendered into serve.json and the card")
    variants: list[str] = Field(["full"], min_length=1, description="exported variants to serve: full (the export) "
                                "and/or quantized schemes from deploy.quantize (int8, int4, ...)")
    device: str = Field("auto", description="transformers serve --device (auto, cpu, cuda:0)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="weights dtype at load")
    continuous_batching: bool = Field(False, description="transformers serve: continuous batching with paged "
                                      "attention (KV blocks of requests sharing a prefix are shared: prefix cache)")
    cb_block_size: int | None = Field(None, ge=4, description="continuous batching: KV cache block size (tokens)")
    cb_num_blocks: int | None = Field(None, ge=1, description="continuous batching: KV cache blocks (default: "
                                      "sized from free memory; required on CPU, where that means most of the RAM)")
    cb_max_batch_tokens: int | None = Field(None, ge=1, description="continuous batching: tokens per batch at most")
    cpu_threads: int | None = Field(None, ge=1, description="OMP/MKL threads per backend process (default: this "
                                    "machine's cores divided by the number of variants)")
    compile: bool = Field(False, description="torch.compile the model (transformers); vLLM: CUDA graphs instead of "
                          "--enforce-eager")
    prefix_caching: bool = Field(True, description="vLLM --enable-prefix-caching / TGI PREFIX_CACHING")
    max_num_seqs: int = Field(32, ge=1, description="vLLM --max-num-seqs / TGI --max-concurrent-requests")
    max_batch_tokens: int | None = Field(None, ge=1, description="vLLM --max-num-batched-tokens / TGI "
                                         "--max-batch-total-tokens")
    host: str = Field("127.0.0.1", description="`hfpipe serve` listen address of the router (loopback by default); "
                      "the stage itself always listens on 127.0.0.1")
    port: int = Field(8000, ge=1, le=65535, description="`hfpipe serve` router port; backends take free loopback "
                      "ports (the stage takes free ports for everything)")
    start_timeout_s: float = Field(180, gt=0, le=3600, description="seconds for each backend to load and answer "
                                   "/health")
    eos_check: bool = Field(True, description="ask each variant with the end-of-turn token pushed to the top and "
                            "require it to stop there (finish_reason stop)")
    route: Route = Route()
    loadtest: LoadTest = LoadTest()

    @model_validator(mode="after")
    def _route_names_served_variants(self):
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants: duplicate names in {self.variants}")
        r = self.route
        named = {"route.weights": list(r.weights), "route.default": [r.default] if r.default else [],
                 "route.small": [r.small] if r.small else [], "route.large": [r.large] if r.large else []}
        for key, names in named.items():
            stray = [n for n in names if n not in self.variants]
            if stray:
                raise ValueError(f"{key}: {stray} not in serve.variants {self.variants}")
        if r.weights and (any(w < 0 for w in r.weights.values()) or sum(r.weights.values()) <= 0):
            raise ValueError("route.weights: weights must be >= 0 with a positive sum")
        if self.engine == "transformers" and self.continuous_batching and self.eos_check:
            # Seen with transformers 5.24: after one request with logit_bias, every later request stopped at once.
            raise ValueError("eos_check: transformers serve's continuous batching applies the first request's logits "
                             "processors (logit_bias) to every later request; set eos_check: false with "
                             "continuous_batching")
        if self.engine == "transformers" and self.continuous_batching and self.device == "cpu" and \
                self.cb_num_blocks is None:
            # Measured: a 1.5M-parameter model's backend grew to 14.5 GB and its first request took 20 s.
            raise ValueError("cb_num_blocks: set it with continuous_batching on CPU; transformers otherwise sizes "
                             "the KV cache from free RAM (64 blocks took 1.3 GB for the tiny model)")
        return self


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    from hfpipe.stages.serve.loadtest import DEFAULT_PROMPTS

    return [resolve_path(config.loadtest.prompts, recipe_dir) if config.loadtest.prompts
            else DEFAULT_PROMPTS]


def route_rule(config: Config, seed: int, variants: list[str] | None = None):
    """The recipe's routing rule over ``variants`` (all of them by default; one variant = always that one)."""
    from hfpipe.stages.serve.router import RouteRule

    vs = variants or list(config.variants)
    r = config.route
    if len(vs) == 1:
        return RouteRule(rule="weighted", variants=vs, weights={vs[0]: 1.0}, seed=seed)
    return RouteRule(rule=r.rule, variants=vs, weights={v: r.weights.get(v, 0.0) for v in vs} if r.weights
                     else {v: 1.0 for v in vs}, header=r.header, default=r.default or vs[0],
                     size_threshold_tokens=r.size_threshold_tokens, small=r.small or vs[-1],
                     large=r.large or vs[0], seed=seed)


def commands(config: Config, folders: dict[str, Path], name: str) -> dict:
    """Per variant: the command line of each engine (the chosen one runs; the others are for GPU machines)."""
    from hfpipe.stages.serve.router import backend_argv, tgi_docker_command

    out = {}
    for i, (variant, folder) in enumerate(folders.items()):
        port = config.port + 1 + i
        out[variant] = {
            "transformers": shlex.join(backend_argv("transformers", folder, "127.0.0.1", port, config, name)),
            "vllm": shlex.join(backend_argv("vllm", folder, "127.0.0.1", port, config, name)),
            "tgi": tgi_docker_command(folder, port, config)}
    return out


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the load test's answers, median latency and throughput."""
    return (f"{metrics['requests_ok']} requests ok, {metrics['errors']} errors, p50 {metrics['latency_p50_s']:.2f}s, "
            f"{metrics['requests_per_s']:.1f} requests/s")


def describe(config: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the engine, its batching/caching switches and the command lines."""
    from hfpipe.stages.serve.router import variant_folder

    from hfpipe.stages.deploy import EXPORT

    export = Path("runs") / recipe.name / "deploy-<fingerprint>" / EXPORT
    cmds = commands(config, {v: export / variant_folder(v) for v in config.variants}, recipe.name)
    front = f"hfpipe serve {recipe.path or recipe.name} -> http://{config.host}:{config.port}/v1 (+ /metrics)"
    return {"engine": {"server": config.engine, "variants": list(config.variants), "route": config.route.rule,
                       "continuous_batching": config.continuous_batching, "prefix_caching": config.prefix_caching,
                       "router": front,
                       **{f"{variant} ({engine})": cmd for variant, c in cmds.items() for engine, cmd in c.items()}},
            "expected": {"loadtest_requests": config.loadtest.requests,
                         "loadtest_concurrency": config.loadtest.concurrency}}


def export_checks(export: Path) -> dict:
    """What the card says the server must use: the chat template (sha256) and the end-of-turn token ids."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(export)
    gen = GenerationConfig.from_pretrained(export)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    return {"chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
            "eos_token_ids": [i for i in eos if isinstance(i, int)],
            "eos_tokens": [tok.convert_ids_to_tokens(i) for i in eos if isinstance(i, int)]}


def _eos_probe(backend, promised: dict, timeout_s: float) -> dict:
    """Ask one backend with the end-of-turn token pushed to the top: it must stop right there (finish_reason stop)."""
    import httpx

    from hfpipe.stages.serve.router import last_line

    try:
        r = httpx.post(f"{backend.url}/v1/chat/completions", timeout=timeout_s, json={
            "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0.0,
            "logit_bias": {str(promised["eos_token_ids"][0]): 100.0}})
        answer = r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError) as e:
        raise HfpipeError(f"serve: the {backend.variant} backend failed a chat request ({type(e).__name__}): "
                          f"{last_line(backend.log)} (log: {backend.log})", 1)
    choice = (answer.get("choices") or [{}])[0]
    got = {"status": r.status_code, "finish_reason": choice.get("finish_reason"),
           "completion_tokens": (answer.get("usage") or {}).get("completion_tokens"),
           "content": (choice.get("message") or {}).get("content")}
    if got["finish_reason"] != "stop" or got["completion_tokens"] not in (0, 1) or got["content"]:
        raise HfpipeError(f"serve: the {backend.variant} variant did not stop at the end-of-turn token "
                          f"{promised['eos_tokens'][0]!r} (got {got}); check the export's generation_config.json", 1)
    return got


def run(config: Config, inputs, out_dir: Path) -> dict:
    import httpx

    from hfpipe.posttrain.templates import check_template
    from hfpipe.stages.serve import loadtest, router

    from hfpipe.stages.deploy import EXPORT

    export = inputs.upstream["deploy"] / EXPORT
    why = router.engine_available(config.engine)
    if why:
        raise HfpipeError(f"serve.engine: {config.engine} cannot start on this machine: {why}; the stage runs the "
                          f"server here (`hfpipe run --dry-run` prints every engine's command line)", 2)
    folders = router.variant_dirs(export, config.variants)
    prompts = inputs.path(config.loadtest.prompts) if config.loadtest.prompts else None
    loadtest.load_prompts(prompts or loadtest.DEFAULT_PROMPTS, 1)  # a bad prompts file fails before any server starts

    # ---------------------------------------------------------------- what the card promises: template, end of turn
    promised = export_checks(export)
    for variant, folder in folders.items():  # one chat-template contract: what each engine serves, vLLM's file included
        served = folder / "chat_template.jinja"
        check_template("serve", inputs, served.read_text(encoding="utf-8") if served.is_file() else None, out_dir,
                       what=f"variant {variant}'s {served.name} (what transformers serve and vLLM --chat-template use)")
    if not promised["eos_token_ids"]:
        raise HfpipeError(f"serve: {export}/generation_config.json has no eos_token_id; re-run deploy", 1)
    here = {v: Path(os.path.relpath(p, out_dir.parent)) for v, p in folders.items()}  # no machine's absolute path
    (out_dir / SERVE).write_text(json.dumps(
        {"engine": config.engine, "variants": {v: str(p) for v, p in here.items()},
         "commands": commands(config, {v: router.variant_folder(v) for v in config.variants}, inputs.recipe_name),
         "local_commands": commands(config, here, inputs.recipe_name), "local_paths_relative_to": "the run folder "
         f"(runs/{inputs.recipe_name}/)", **promised}, indent=1))

    rule = route_rule(config, inputs.seed)
    progress(f"starting {config.engine} serve for {', '.join(config.variants)}")
    with router.Stack(folders, config, out_dir, rule, inputs.recipe_name, host="127.0.0.1",
                       port=router.free_port()) as stack:
        # ------------------------------------------------------------ each variant stops at end of turn
        eos = {}
        if config.eos_check:
            progress("checking that every variant stops at end of turn")
            for b in stack.backends:
                eos[b.variant] = _eos_probe(b, promised, config.loadtest.request_timeout_s)

        # ------------------------------------------------------------ the bounded load test, through the router
        lt = config.loadtest
        progress(f"load test, {lt.concurrency} at a time", total=lt.requests, unit="requests")
        result = loadtest.run_loadtest(stack.url, requests=lt.requests, concurrency=lt.concurrency,
                                       max_seconds=lt.max_seconds, max_tokens=lt.max_tokens, prompts_file=prompts,
                                       stream=lt.stream, timeout_s=lt.request_timeout_s)
        metrics_text = httpx.get(f"{stack.url}/metrics", timeout=10).text
        scraped = router.parse_metrics(metrics_text)

    # ---------------------------------------------------------------- checks: errors, split, metrics agree
    records = result.pop("_records")
    (out_dir / "metrics.prom").write_text(metrics_text)
    with open(out_dir / "requests.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    if result["requests_sent"] == 0:
        raise HfpipeError(f"serve: the load test sent no request within serve.loadtest.max_seconds="
                          f"{lt.max_seconds:g}", 1)
    error_rate = result["errors"] / result["requests_sent"]
    split = loadtest.split_check(result["variant_counts"], rule.expected_shares(), config.route.split_tolerance)
    answered = sum(v for k, v in scraped.items() if k.startswith("hfpipe_requests_total{") and 'status="200"' in k)
    summary = {**result, "error_rate": error_rate, "split": split, "eos_check": eos, "route_rule": config.route.rule,
               "engine": config.engine, "variants": list(config.variants),
               "continuous_batching": config.continuous_batching,
               "metrics": {"requests_200": answered, "completion_tokens": sum(
                   v for k, v in scraped.items() if k.startswith("hfpipe_completion_tokens_total"))}}
    (out_dir / LOADTEST).write_text(json.dumps(summary, indent=1))
    if error_rate > lt.max_error_rate:
        raise HfpipeError(f"serve: {result['errors']} of {result['requests_sent']} load-test requests failed "
                          f"(e.g. {result['error_examples'][:1]}); serve.loadtest.max_error_rate = "
                          f"{lt.max_error_rate:g} (details: {out_dir}/requests.jsonl)", 1)
    if split is not None and not split["within_tolerance"]:
        raise HfpipeError(f"serve: the router's split {split['observed']} is off its weights {split['expected']} by "
                          f"{split['max_abs_deviation']:.3f} > serve.route.split_tolerance = "
                          f"{config.route.split_tolerance:g}", 1)
    if answered != result["requests_ok"]:
        raise HfpipeError(f"serve: /metrics counted {answered:g} answered requests, the load test "
                          f"{result['requests_ok']}", 1)
    return {"requests_ok": result["requests_ok"], "errors": result["errors"],
            "latency_p50_s": result["latency_p50_s"], "latency_p95_s": result["latency_p95_s"],
            "requests_per_s": result["requests_per_s"], "completion_tokens_per_s": result["completion_tokens_per_s"],
            "variant_counts": result["variant_counts"],
            **({"split_max_abs_deviation": split["max_abs_deviation"]} if split else {})}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card: the load test (loadtest.json) and command lines (serve.json), beside the eval stage's
    in-process latency at batch size 1."""
    from hfpipe.card import fmt, read_json
    from hfpipe.stages.eval.results import read_results

    eval_results = read_results(stages["eval"]) if "eval" in stages else None
    lt, sv = read_json(folder / LOADTEST), read_json(folder / SERVE)
    if not isinstance(lt, dict):
        return {}
    sv = sv if isinstance(sv, dict) else {}
    rows = [("requests (ok / sent / planned)", f"{lt.get('requests_ok')} / {lt.get('requests_sent')} / "
             f"{lt.get('requests_planned')}"), ("concurrency", lt.get("concurrency")),
            ("max_tokens per request", lt.get("max_tokens")), ("streamed", lt.get("stream")),
            ("latency p50 (s)", lt.get("latency_p50_s")), ("latency p95 (s)", lt.get("latency_p95_s")),
            ("time to first token p50 / p95 (s)", f"{fmt(lt['ttft_p50_s'])} / {fmt(lt['ttft_p95_s'])}"
             if lt.get("ttft_p50_s") is not None else "not streamed"),
            ("requests/s", lt.get("requests_per_s")), ("generated tokens/s", lt.get("completion_tokens_per_s")),
            ("errors", lt.get("errors")), ("finish reasons", lt.get("finish_reasons")),
            ("answers per variant", lt.get("variant_counts")), ("wall (s)", lt.get("wall_s"))]
    lat = (eval_results or {}).get("latency") if isinstance(eval_results, dict) else None
    b1 = ((lat or {}).get("batch_sizes") or {}).get("1") if isinstance(lat, dict) else None
    if isinstance(b1, dict) and b1.get("latency_p50_s") is not None:
        rows.append((f"eval stage, in-process generate, batch 1, {lat.get('new_tokens')} new tokens: latency p50 / "
                     f"p95 (s)", f"{fmt(b1['latency_p50_s'])} / {fmt(b1.get('latency_p95_s'))}"))
    split = lt.get("split") if isinstance(lt.get("split"), dict) else None
    eos = lt.get("eos_check") if isinstance(lt.get("eos_check"), dict) else {}
    serving = {"engine": fmt(lt.get("engine") or sv.get("engine") or "?"), "rule": fmt(lt.get("route_rule") or "?"),
               "variants": [fmt(v) for v in lt.get("variants") or []], "cb": bool(lt.get("continuous_batching")),
               "rows": [(fmt(k), fmt(v)) for k, v in rows],
               "split": {k: fmt(split.get(k)) for k in ("expected", "observed", "max_abs_deviation", "tolerance",
                                                         "within_tolerance", "n")} if split else None,
               "eos": [(fmt(v), fmt(e.get("finish_reason")), fmt(e.get("completion_tokens"))) for v, e in eos.items()
                       if isinstance(e, dict)],
               "eos_tokens": fmt(sv.get("eos_tokens") or ""), "template_sha": fmt(sv.get("chat_template_sha256") or ""),
               "commands": [(fmt(v), c) for v, c in (sv.get("commands") or {}).items() if isinstance(c, dict)]}
    return {"card": {"serving": serving}}
