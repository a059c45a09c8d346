"""Serving: the ecosystem's inference server behind a small router that routes, logs and counts.

hfpipe does not generate text itself. Each exported variant (``full`` = ``deploy/export``, ``int8``/``int4`` =
``export/quantized/<scheme>``) gets one backend process of the chosen engine: ``transformers serve`` (OpenAI-compatible,
CPU or GPU), ``vllm serve`` or TGI's ``text-generation-launcher`` (GPU). In front of them one router endpoint:

- ``POST /v1/chat/completions`` and ``/v1/completions``: choose a variant by the recipe's rule (``weighted`` split,
  a ``header`` naming the variant, or request ``size``), forward the body unchanged (streaming passes through), and
  log the choice as one JSON line (``route.jsonl``) and in the ``x-hfpipe-variant`` response header;
- ``GET /metrics``: Prometheus text (prometheus_client): requests by variant and status, latency and time-to-first-byte
  histograms, prompt/completion tokens, tokens/s per request, errors by kind, requests in flight, routing decisions;
- ``GET /v1/models`` (the variants) and ``GET /health`` (every backend healthy).

Numbers (ports, weights, timeouts, batching) come from the recipe's ``serve:`` section (``hfpipe/stages/serve/__init__.py``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from hfpipe.errors import HfpipeError

VARIANT_HEADER = "x-hfpipe-variant"
ROUTE_REASON_HEADER = "x-hfpipe-route"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKENS_PER_S_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


# ----------------------------------------------------------------------------------------------------------------------
# Variants and backend command lines

def variant_folder(variant: str) -> Path:
    """A variant's folder relative to the export (= the Hub repository, the model card's folder): ``full`` is the
    export itself, any other name a quantized variant the deploy stage wrote."""
    return Path(".") if variant == "full" else Path("quantized") / variant


def variant_dirs(export: Path, variants: list[str]) -> dict[str, Path]:
    """Folder of each variant under ``export``; one line naming the variant when the deploy stage did not write it."""
    out = {}
    for v in variants:
        folder = export / variant_folder(v)
        if not (folder / "config.json").is_file():
            have = ["full"] + sorted(p.name for p in (export / "quantized").glob("*") if p.is_dir())
            raise HfpipeError(f"serve.variants: '{v}' was not exported by the deploy stage ({folder} has no "
                              f"config.json); exported variants: {', '.join(have)} (add it to deploy.quantize)", 2)
        out[v] = folder
    return out


def backend_argv(engine: str, model_dir: Path, host: str, port: int, c, served_name: str) -> list[str]:
    """The command line that starts one engine on one variant folder (``c`` = the serve stage's Config)."""
    if engine == "transformers":
        argv = ["transformers", "serve", str(model_dir), "--host", host, "--port", str(port),
                "--device", c.device, "--dtype", c.dtype, "--log-level", "warning"]
        if c.continuous_batching:
            argv.append("--continuous-batching")
            for flag, value in (("--cb-block-size", c.cb_block_size), ("--cb-num-blocks", c.cb_num_blocks),
                                ("--cb-max-batch-tokens", c.cb_max_batch_tokens)):
                if value is not None:
                    argv += [flag, str(value)]
        if c.compile:
            argv.append("--compile")
        return argv
    if engine == "vllm":
        argv = ["vllm", "serve", str(model_dir), "--host", host, "--port", str(port), "--served-model-name",
                served_name, "--dtype", c.dtype, "--max-num-seqs", str(c.max_num_seqs),
                "--generation-config", "auto",  # EOS (end of turn) and defaults from the export's generation_config.json
                "--chat-template", str(Path(model_dir) / "chat_template.jinja"),  # the tokenizer stage's (sha256 checked)
                "--enable-prefix-caching" if c.prefix_caching else "--no-enable-prefix-caching"]
        if c.max_batch_tokens is not None:
            argv += ["--max-num-batched-tokens", str(c.max_batch_tokens)]
        if not c.compile:
            argv.append("--enforce-eager")
        return argv
    if engine == "tgi":
        argv = ["text-generation-launcher", "--model-id", str(model_dir), "--hostname", host, "--port", str(port),
                "--max-concurrent-requests", str(c.max_num_seqs)]
        if c.max_batch_tokens is not None:
            argv += ["--max-batch-total-tokens", str(c.max_batch_tokens)]
        return argv
    raise HfpipeError(f"serve.engine: unknown engine '{engine}'", 2)


def cpu_threads(c, n_backends: int) -> int:
    """CPU threads per backend: the recipe's, else this machine's cores shared out between the backends. torch's
    default (every core in every backend) oversubscribes: measured on 2 cores with 2 backends, a 16-token request
    cost the backend 264-936 ms of CPU instead of 36-45 ms (benchmarks/bench_serve.py)."""
    return c.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, n_backends))


def backend_env(engine: str, c, n_backends: int = 1) -> dict[str, str]:
    """Extra environment for a backend: CPU threads, no CLI update check; TGI's prefix cache is an environment
    switch."""
    threads = str(cpu_threads(c, n_backends))
    env = {"HF_HUB_DISABLE_UPDATE_CHECK": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    if engine == "tgi":
        env["PREFIX_CACHING"] = "1" if c.prefix_caching else "0"
    return env


def tgi_docker_command(model_dir: Path, port: int, c) -> str:
    """The same TGI server as a container (how most GPU users run it)."""
    env = " ".join(f"-e {k}={v}" for k, v in backend_env("tgi", c).items() if k == "PREFIX_CACHING")
    inner = backend_argv("tgi", Path("/model"), "0.0.0.0", 80, c, "")[1:]  # the image's entrypoint is the launcher
    # docker needs an absolute path to mount: a relative folder is taken from where the command is run
    mount = shlex.quote(str(model_dir)) if model_dir.is_absolute() else \
        '"$PWD"' if str(model_dir) == "." else f'"$PWD/{model_dir}"'
    return (f"docker run --gpus all --shm-size 1g -p {port}:80 {env} -v {mount}:/model "
            f"ghcr.io/huggingface/text-generation-inference:latest {' '.join(shlex.quote(a) for a in inner)}")


def engine_available(engine: str) -> str | None:
    """None if the engine can start here, else why not (one line)."""
    import importlib.util
    import shutil

    if engine == "transformers":
        from transformers.utils.import_utils import is_serve_available

        return None if is_serve_available() else \
            "transformers serve needs fastapi, uvicorn and openai: pip install 'transformers[serving]'"
    if engine == "vllm":
        return None if importlib.util.find_spec("vllm") else "vllm is not installed (a CUDA GPU and `pip install vllm`)"
    if engine == "tgi":
        return None if shutil.which("text-generation-launcher") else \
            "text-generation-launcher is not on PATH (run TGI's container instead: see `hfpipe serve --print-commands`)"
    return f"unknown engine '{engine}'"


def _launch_argv(argv: list[str]) -> list[str]:
    """Run the transformers CLI with this interpreter (the venv's), whatever is on PATH."""
    if argv[0] == "transformers":
        return [sys.executable, "-m", "transformers.cli.transformers", *argv[1:]]
    return argv


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Backend processes

@dataclass
class Backend:
    variant: str
    argv: list[str]
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    cwd: Path | None = None  # the engine runs here, its model folder given relative to it (no absolute path in logs)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_backends(backends: list[Backend], env_extra: dict[str, str], timeout_s: float) -> None:
    """Start every backend in its own process group and wait until each answers /health (or fails: one line)."""
    import httpx

    env = {**os.environ, **env_extra}
    for b in backends:
        b.log.parent.mkdir(parents=True, exist_ok=True)
        with open(b.log, "ab") as log:
            b.proc = subprocess.Popen(_launch_argv(b.argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                                      stdin=subprocess.DEVNULL, start_new_session=True, cwd=b.cwd)
    deadline = time.monotonic() + timeout_s
    pending = list(backends)
    while pending:
        for b in list(pending):
            if b.proc.poll() is not None:
                stop_backends(backends)
                raise HfpipeError(f"serve: the {b.variant} backend exited with code {b.proc.returncode} before it "
                                  f"was ready: {last_line(b.log)} (full log: {b.log})", 1)
            try:
                if httpx.get(f"{b.url}/health", timeout=2).status_code == 200:
                    pending.remove(b)
            except httpx.HTTPError:
                pass
        if pending and time.monotonic() > deadline:
            stop_backends(backends)
            raise HfpipeError(f"serve: the {pending[0].variant} backend did not answer {pending[0].url}/health within "
                              f"{timeout_s:g} s (serve.start_timeout_s; log: {pending[0].log})", 1)
        if pending:
            time.sleep(0.25)


def stop_backends(backends: list[Backend], grace_s: float = 10.0) -> None:
    """SIGTERM each backend's process group, then SIGKILL whatever is left after ``grace_s``."""
    live = [b for b in backends if b.proc is not None and b.proc.poll() is None]
    for b in live:
        try:
            os.killpg(b.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for b in live:
        try:
            b.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(b.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            b.proc.wait()


def last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


# ----------------------------------------------------------------------------------------------------------------------
# Routing rules

@dataclass
class RouteRule:
    """The recipe's ``serve.route``, resolved: which variant a request goes to, and why."""

    rule: str  # weighted | header | size
    variants: list[str]
    weights: dict[str, float] = field(default_factory=dict)
    header: str = VARIANT_HEADER
    default: str | None = None
    size_threshold_tokens: int = 0
    small: str | None = None
    large: str | None = None
    seed: int = 0

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    def expected_shares(self) -> dict[str, float] | None:
        """The split the rule promises when requests carry no header (weighted rule only)."""
        if self.rule != "weighted":
            return None
        total = sum(self.weights.values())
        return {v: self.weights.get(v, 0.0) / total for v in self.variants}

    def choose(self, headers: dict[str, str], request_tokens: int) -> tuple[str, str]:
        """(variant, reason). A header naming a served variant wins under the header rule."""
        if self.rule == "header":
            asked = headers.get(self.header.lower())
            if asked in self.variants:
                return asked, f"header {self.header}={asked}"
            return self.default, f"no valid {self.header} header: default"
        if self.rule == "size":
            if request_tokens <= self.size_threshold_tokens:
                return self.small, f"{request_tokens} <= {self.size_threshold_tokens} request tokens"
            return self.large, f"{request_tokens} > {self.size_threshold_tokens} request tokens"
        with self._lock:  # weighted: a seeded draw, so a run's split is reproducible
            variant = self._rng.choices(self.variants, weights=[self.weights.get(v, 0.0) for v in self.variants])[0]
        return variant, "weighted draw"


def request_tokens(body: dict, count) -> int:
    """Size of a request: tokens of its message contents (or prompt) plus the tokens it asks for."""
    texts = []
    for m in body.get("messages") or []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            texts.append(c)
        elif isinstance(c, list):
            texts += [p.get("text", "") for p in c if isinstance(p, dict)]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        texts.append(prompt)
    asked = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return sum(count(t) for t in texts) + (int(asked) if isinstance(asked, (int, float)) else 0)


# ----------------------------------------------------------------------------------------------------------------------
# The router (Starlette app)

class Metrics:
    """Prometheus metrics of one router, in its own registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("hfpipe_requests", "Requests answered, by variant and HTTP status",
                                ["variant", "status"], registry=r)
        self.latency = Histogram("hfpipe_request_duration_seconds", "Request latency (to the last byte), by variant",
                                 ["variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("hfpipe_time_to_first_byte_seconds", "Time to the first response byte, by variant "
                              "(the first token of a streamed answer)", ["variant"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("hfpipe_prompt_tokens", "Prompt tokens (backend usage)", ["variant"], registry=r)
        self.completion_tokens = Counter("hfpipe_completion_tokens", "Generated tokens (backend usage, or streamed "
                                         "chunks)", ["variant"], registry=r)
        self.tokens_per_s = Histogram("hfpipe_completion_tokens_per_second", "Generated tokens per second of each "
                                      "request", ["variant"], buckets=TOKENS_PER_S_BUCKETS, registry=r)
        self.errors = Counter("hfpipe_errors", "Failed requests, by variant and kind", ["variant", "kind"], registry=r)
        self.in_flight = Gauge("hfpipe_requests_in_flight", "Requests being answered", ["variant"], registry=r)
        self.routes = Counter("hfpipe_route_decisions", "Routing decisions, by variant and rule", ["variant", "rule"],
                              registry=r)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def build_router(backends: dict[str, str], rule: RouteRule, count_tokens, route_log: Path | None,
                 request_timeout_s: float, served_name: str):
    """The router app: ``backends`` = {variant: base URL}; ``count_tokens(text) -> int`` sizes requests."""
    import httpx
    from prometheus_client import CONTENT_TYPE_LATEST
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    metrics = Metrics()
    log_lock = threading.Lock()
    # one handle for the router's life, a line per decision (opening the file per request cost ~0.7 ms, measured)
    log_file = open(route_log, "a", encoding="utf-8", buffering=1) if route_log is not None else None
    client = httpx.AsyncClient(timeout=httpx.Timeout(request_timeout_s, connect=5.0),
                               limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def log_route(entry: dict) -> None:
        if log_file is not None:
            with log_lock:
                log_file.write(json.dumps(entry) + "\n")

    def error(status: int, message: str, kind: str, variant: str = "none") -> JSONResponse:
        metrics.errors.labels(variant, kind).inc()
        metrics.requests.labels(variant, str(status)).inc()
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    async def forward(request: Request):
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            return error(400, f"request body is not a JSON object: {e}", "bad_request")
        size = request_tokens(body, count_tokens)
        variant, reason = rule.choose({k.lower(): v for k, v in request.headers.items()}, size)
        metrics.routes.labels(variant, rule.rule).inc()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        body.pop("model", None)  # each backend serves exactly one variant
        stream = bool(body.get("stream"))
        t0 = time.perf_counter()
        entry = {"time": time.time(), "request_id": request_id, "path": request.url.path, "variant": variant,
                 "rule": rule.rule, "reason": reason, "request_tokens": size, "stream": stream}
        headers = {VARIANT_HEADER: variant, ROUTE_REASON_HEADER: reason, "x-request-id": request_id}
        metrics.in_flight.labels(variant).inc()
        try:
            upstream = await client.send(
                client.build_request("POST", backends[variant] + request.url.path, json=body,
                                     headers={"x-request-id": request_id}), stream=True)
        except httpx.HTTPError as e:
            metrics.in_flight.labels(variant).dec()
            kind = "timeout" if isinstance(e, httpx.TimeoutException) else "backend_unreachable"
            log_route({**entry, "status": 502, "error": kind, "latency_s": time.perf_counter() - t0})
            return error(502, f"backend {variant} failed: {type(e).__name__}", kind, variant)

        state = {"first": None, "chunks": 0, "usage": None, "buf": b""}

        async def body_iter():
            try:
                async for chunk in upstream.aiter_raw():
                    if state["first"] is None:
                        state["first"] = time.perf_counter() - t0
                    if stream:
                        state["chunks"] += chunk.count(b"data: {")
                    state["buf"] += chunk if len(state["buf"]) < 1 << 20 else b""
                    yield chunk
            finally:
                await upstream.aclose()

        async def done():
            latency = time.perf_counter() - t0
            metrics.in_flight.labels(variant).dec()
            status = upstream.status_code
            metrics.requests.labels(variant, str(status)).inc()
            metrics.latency.labels(variant).observe(latency)
            if state["first"] is not None:
                metrics.ttfb.labels(variant).observe(state["first"])
            usage, finish = _usage(state["buf"], stream)
            completion = usage.get("completion_tokens") if usage else (state["chunks"] or None)
            if status >= 400:
                metrics.errors.labels(variant, f"http_{status}").inc()
            if usage and usage.get("prompt_tokens"):
                metrics.prompt_tokens.labels(variant).inc(usage["prompt_tokens"])
            if completion:
                metrics.completion_tokens.labels(variant).inc(completion)
                metrics.tokens_per_s.labels(variant).observe(completion / max(latency, 1e-9))
            log_route({**entry, "status": status, "latency_s": round(latency, 6),
                       "ttfb_s": round(state["first"], 6) if state["first"] is not None else None,
                       "completion_tokens": completion, "finish_reason": finish})

        passthrough = {k: v for k, v in upstream.headers.items()
                       if k.lower() in ("content-type", "cache-control")}
        return StreamingResponse(body_iter(), status_code=upstream.status_code, headers={**passthrough, **headers},
                                 background=BackgroundTask(done))

    async def models(_request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": served_name, "object": "model", "owned_by": "hfpipe", "variants": list(backends)}]})

    async def health(_request: Request):
        bad = []
        for variant, url in backends.items():
            try:
                if (await client.get(f"{url}/health", timeout=5)).status_code != 200:
                    bad.append(variant)
            except httpx.HTTPError:
                bad.append(variant)
        return JSONResponse({"status": "unhealthy" if bad else "ok", "unhealthy": bad}, status_code=503 if bad else 200)

    async def prometheus(_request: Request):
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()
        if log_file is not None:
            log_file.close()

    app = Starlette(routes=[Route("/v1/chat/completions", forward, methods=["POST"]),
                            Route("/v1/completions", forward, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"]),
                            Route("/metrics", prometheus, methods=["GET"])],
                    lifespan=lifespan)
    app.state.metrics = metrics
    return app


def _usage(buf: bytes, stream: bool) -> tuple[dict | None, str | None]:
    """(usage, finish_reason) from a backend's JSON answer or its server-sent events."""
    try:
        if not stream:
            data = json.loads(buf)
            choices = data.get("choices") or [{}]
            return data.get("usage"), choices[0].get("finish_reason")
        usage, finish = None, None
        for line in buf.decode("utf-8", "replace").splitlines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                usage = event.get("usage") or usage
                for ch in event.get("choices") or []:
                    finish = ch.get("finish_reason") or finish
        return usage, finish
    except (ValueError, AttributeError, TypeError):
        return None, None


# ----------------------------------------------------------------------------------------------------------------------
# Running the router

class RouterServer:
    """uvicorn serving the router app, in a background thread (``start``/``stop``) or in the foreground (``run``)."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="on"))
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> None:
        self.thread = threading.Thread(target=self.server.run, name="hfpipe-router", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise HfpipeError(f"serve: the router could not listen on {self.url} (port in use? set serve.port)", 1)
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)

    def run(self) -> None:
        self.server.run()


def check_url_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if not is_loopback(host):
        raise HfpipeError(f"loadtest: {url} is not a loopback address; the load test only targets this machine "
                          f"(127.0.0.1, ::1 or localhost)", 2)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {sample name{labels}: value} (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


class Stack:
    """Backends (one per variant) + the router, as a context manager: everything is stopped on exit, even on error.

    ``folders`` = {variant: model folder}; ``c`` = the serve stage's Config; logs go to ``log_dir``.
    """

    def __init__(self, folders: dict[str, Path], c, log_dir: Path, rule: RouteRule, name: str, *, host: str,
                 port: int):
        self.c, self.rule, self.name, self.host, self.port = c, rule, name, host, port
        self.log_dir = Path(log_dir)
        # the engines run in the folder above the variants' folders, which they name relative to it: what they log
        # (the model path, among others) names no absolute path of this machine
        here = Path(os.path.commonpath([Path(f).resolve() for f in folders.values()])).parent
        self.backends = [Backend(v, [], free_port(), self.log_dir / f"backend-{v}.log", cwd=here) for v in folders]
        for b in self.backends:
            b.argv = backend_argv(c.engine, Path(os.path.relpath(Path(folders[b.variant]).resolve(), here)),
                                  "127.0.0.1", b.port, c, name)
        self.folders = folders
        self.router: RouterServer | None = None

    @property
    def url(self) -> str:
        return self.router.url

    def __enter__(self) -> "Stack":
        from tokenizers import Tokenizer

        start_backends(self.backends, backend_env(self.c.engine, self.c, len(self.backends)), self.c.start_timeout_s)
        try:
            tok_file = next(iter(self.folders.values())) / "tokenizer.json"
            tok = Tokenizer.from_file(str(tok_file)) if tok_file.is_file() else None
            count = (lambda t: len(tok.encode(t, add_special_tokens=False).ids)) if tok else (lambda t: len(t.split()))
            app = build_router({b.variant: b.url for b in self.backends}, self.rule, count,
                               self.log_dir / "route.jsonl", self.c.loadtest.request_timeout_s, self.name)
            self.router = RouterServer(app, self.host, self.port)
            self.router.start()
        except BaseException:
            stop_backends(self.backends)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.router is not None:
                self.router.stop()
        finally:
            stop_backends(self.backends)
