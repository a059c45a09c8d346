"""serve: `transformers serve` behind the hfpipe router on a tiny exported model (full + torchao int8).

Real servers on loopback ports, real OpenAI client, real Prometheus text. Each server start costs a few seconds.
Run: .venv/bin/python -m pytest tests/test_stage_serve.py -q
"""

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from conftest import deploy_variant
from hfpipe.stages.serve import router as serving
from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, serve

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is AI?", "Tell me a joke.", "Who are you?", "What is the capital of France?", "Hello!",
             "Do you like music?"]


@pytest.fixture(scope="module")
def deploy_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The deploy stage's real output on the tiny model: export/ and export/quantized/int8/."""
    return deploy_variant(tiny_model_dir, tmp_path_factory.mktemp("deploy"), "int8", parity_max_tokens=256,
                          parity_task_limit=8, latency_repeats=1)


def _inputs(deploy_dir: Path) -> Inputs:
    return Inputs(recipe_name="test", seed=0, recipe_dir=REPO / "recipes", upstream={"deploy": deploy_dir},
                  fingerprint="1" * 64)


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_concurrent_openai_chat_through_the_router_stops_at_eos_and_is_counted(deploy_dir, tmp_path):
    """The issue's test: start, concurrent OpenAI-style chat requests, well-formed answers that stop at EOS,
    the metrics endpoint, stop."""
    from openai import OpenAI

    config = serve.Config(variants=["full", "int8"], device="cpu", route={"rule": "header"})
    export = deploy_dir / "export"
    facts = serve.export_checks(export)
    eos_id = facts["eos_token_ids"][0]
    with serving.Stack(serving.variant_dirs(export, config.variants), config, tmp_path, serve.route_rule(config, 0),
                       "test", host="127.0.0.1", port=serving.free_port()) as stack:
        client = OpenAI(base_url=f"{stack.url}/v1", api_key="not-needed", max_retries=0, timeout=60)

        def ask(i):
            extra = {"x-hfpipe-variant": "int8"} if i % 3 == 0 else {}
            raw = client.chat.completions.with_raw_response.create(
                model="test", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], max_tokens=8,
                temperature=0.0, extra_headers=extra)
            return raw.headers.get("x-hfpipe-variant"), raw.parse()

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, range(12)))
        for i, (variant, a) in enumerate(answers):
            choice = a.choices[0]
            assert variant == ("int8" if i % 3 == 0 else "full")
            assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
            assert choice.message.role == "assistant" and "<|im_end|>" not in choice.message.content
            assert 1 <= a.usage.completion_tokens <= 8 and a.usage.prompt_tokens > 0

        # end of turn pushed to the top: generation stops right there, through the router, on both variants
        for variant in ("full", "int8"):
            a = client.chat.completions.create(model="test", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8, temperature=0.0, logit_bias={str(eos_id): 100.0},
                                               extra_headers={"x-hfpipe-variant": variant})
            assert a.choices[0].finish_reason == "stop" and a.choices[0].message.content == ""
            assert a.usage.completion_tokens <= 1

        # streaming passes through the router
        stream = client.chat.completions.create(model="test", messages=[{"role": "user", "content": "Hello!"}],
                                                max_tokens=4, temperature=0.0, stream=True)
        chunks = list(stream)
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) <= 4

        m = serving.parse_metrics(httpx.get(f"{stack.url}/metrics").text)
        assert httpx.get(f"{stack.url}/health").json() == {"status": "ok", "unhealthy": []}
        threads = max(1, (os.cpu_count() or 1) // 2)  # the cores shared out between the two backends
        for b in stack.backends:
            env = Path(f"/proc/{b.proc.pid}/environ").read_bytes().split(b"\0")
            assert f"OMP_NUM_THREADS={threads}".encode() in env
        ports = [b.port for b in stack.backends] + [stack.port]
        procs = [b.proc for b in stack.backends]

    assert m['hfpipe_requests_total{status="200",variant="int8"}'] == 4 + 1
    assert m['hfpipe_requests_total{status="200",variant="full"}'] == 8 + 1 + 1
    assert m['hfpipe_route_decisions_total{rule="header",variant="int8"}'] == 5
    assert m['hfpipe_request_duration_seconds_count{variant="full"}'] == 10
    assert m['hfpipe_completion_tokens_total{variant="full"}'] >= 8  # usage reported by the backend
    assert m['hfpipe_requests_in_flight{variant="full"}'] == 0
    log = [json.loads(line) for line in (tmp_path / "route.jsonl").read_text().splitlines()]
    assert len(log) == 15 and {e["reason"] for e in log} == {"header x-hfpipe-variant=int8",
                                                              "header x-hfpipe-variant=full",
                                                              "no valid x-hfpipe-variant header: default"}
    assert all(e["status"] == 200 and e["latency_s"] > 0 for e in log)
    # stopped: every process gone, every port closed
    assert all(p.poll() is not None for p in procs) and all(_port_closed(p) for p in ports)


def test_stage_load_test_split_metrics_and_card(deploy_dir, tmp_path):
    from hfpipe.card import build_card

    config = serve.Config(variants=["full", "int8"], device="cpu",
                          route={"rule": "weighted", "weights": {"full": 3, "int8": 1}, "split_tolerance": 0.2},
                          loadtest={"requests": 32, "concurrency": 4, "max_tokens": 8})
    out = tmp_path / "serve"
    out.mkdir()
    metrics = serve.run(config, _inputs(deploy_dir), out)

    lt = json.loads((out / "loadtest.json").read_text())
    assert lt["requests_sent"] == lt["requests_ok"] == 32 and lt["errors"] == 0
    assert 0 < lt["latency_p50_s"] <= lt["latency_p95_s"] <= lt["latency_max_s"]
    assert lt["requests_per_s"] > 0 and lt["completion_tokens_per_s"] > 0
    assert sum(lt["finish_reasons"].values()) == 32 and set(lt["finish_reasons"]) <= {"stop", "length"}
    assert sum(lt["variant_counts"].values()) == 32
    split = lt["split"]
    assert split["expected"] == {"full": 0.75, "int8": 0.25} and split["within_tolerance"]
    assert split["max_abs_deviation"] == pytest.approx(abs(lt["variant_counts"]["full"] / 32 - 0.75))
    assert {v: e["finish_reason"] for v, e in lt["eos_check"].items()} == {"full": "stop", "int8": "stop"}
    assert lt["metrics"]["requests_200"] == 32 and metrics["latency_p50_s"] == lt["latency_p50_s"]
    prom = serving.parse_metrics((out / "metrics.prom").read_text())
    assert {v: prom[f'hfpipe_requests_total{{status="200",variant="{v}"}}'] for v in ("full", "int8")} == \
        lt["variant_counts"]
    assert len((out / "route.jsonl").read_text().splitlines()) == 32
    sv = json.loads((out / "serve.json").read_text())
    assert sv["commands"]["int8"]["vllm"].startswith("vllm serve quantized/int8 ")
    assert "--enable-prefix-caching" in sv["commands"]["full"]["vllm"]
    assert "text-generation-inference" in sv["commands"]["full"]["tgi"]

    card = str(build_card("test", "name: test\n", {"deploy": deploy_dir, "serve": out}))
    serving_section = card.split("## Serving", 1)[1].split("\n## ", 1)[0]
    assert f"| latency p50 (s) | {lt['latency_p50_s']:.4f}".rstrip("0") in serving_section
    assert "| requests (ok / sent / planned) | 32 / 32 / 32 |" in serving_section
    assert "Router split against its rule over 32 requests" in serving_section
    assert "vllm serve . --host" in serving_section


def test_route_rules():
    from hfpipe.stages.serve.router import RouteRule, request_tokens

    rule = RouteRule(rule="weighted", variants=["full", "int8"], weights={"full": 3, "int8": 1}, seed=1)
    counts = {"full": 0, "int8": 0}
    for _ in range(20_000):
        counts[rule.choose({}, 10)[0]] += 1
    assert abs(counts["int8"] / 20_000 - 0.25) < 0.01
    again = RouteRule(rule="weighted", variants=["full", "int8"], weights={"full": 3, "int8": 1}, seed=1)
    first = RouteRule(rule="weighted", variants=["full", "int8"], weights={"full": 3, "int8": 1}, seed=1)
    assert [again.choose({}, 0)[0] for _ in range(50)] == [first.choose({}, 0)[0] for _ in range(50)]

    size = RouteRule(rule="size", variants=["full", "int8"], size_threshold_tokens=20, small="int8", large="full")
    count = lambda t: len(t.split())  # noqa: E731
    short = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 10}
    long = {"messages": [{"role": "user", "content": "word " * 30}], "max_tokens": 10}
    assert request_tokens(short, count) == 13 and request_tokens(long, count) == 40
    assert size.choose({}, 13)[0] == "int8" and size.choose({}, 40)[0] == "full"
    header = RouteRule(rule="header", variants=["full", "int8"], default="full")
    assert header.choose({"x-hfpipe-variant": "int8"}, 0)[0] == "int8"
    assert header.choose({"x-hfpipe-variant": "nope"}, 0)[0] == "full"


def test_bad_serve_settings_are_one_line_errors(deploy_dir, tmp_path):
    with pytest.raises(ValidationError, match=r"route.weights: \['int4'\] not in serve.variants"):
        serve.Config(variants=["full"], route={"weights": {"int4": 1}})
    with pytest.raises(ValidationError, match="eos_check: false with continuous_batching"):
        serve.Config(continuous_batching=True)
    with pytest.raises(ValidationError, match="cb_num_blocks: set it with continuous_batching on CPU"):
        serve.Config(continuous_batching=True, eos_check=False, device="cpu")
    with pytest.raises(HfpipeError, match=r"'int4' was not exported by the deploy stage .*\(add it to deploy.quantize\)"):
        serve.run(serve.Config(variants=["full", "int4"]), _inputs(deploy_dir), tmp_path)
    with pytest.raises(HfpipeError, match="not a loopback address") as e:
        serving.check_url_loopback("http://10.1.2.3:8000")
    assert e.value.exit_code == 2
    serving.check_url_loopback("http://[::1]:8000")
    serving.check_url_loopback("http://localhost:8000")
    if serving.engine_available("vllm") is None:
        pytest.skip("vllm is installed here")
    with pytest.raises(HfpipeError, match="vllm cannot start on this machine: vllm is not installed") as e:
        serve.run(serve.Config(engine="vllm"), _inputs(deploy_dir), tmp_path)
    assert e.value.exit_code == 2


def test_a_backend_that_cannot_load_is_named_with_its_log(deploy_dir, tmp_path):
    import shutil

    broken = tmp_path / "deploy"
    shutil.copytree(deploy_dir / "export", broken / "export", ignore=shutil.ignore_patterns("quantized", "gguf"))
    (broken / "export" / "model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "serve"
    out.mkdir()
    with pytest.raises(HfpipeError, match=r"the full backend exited with code \d+ before it was ready: .*full log: "):
        serve.run(serve.Config(variants=["full"], device="cpu", eos_check=False), _inputs(broken), out)


def test_continuous_batching_is_switched_on_by_the_recipe(deploy_dir, tmp_path):
    """serve.continuous_batching reaches transformers serve (paged continuous batching with a bounded KV cache)."""
    config = serve.Config(variants=["full"], device="cpu", continuous_batching=True, cb_num_blocks=16,
                          eos_check=False)
    with serving.Stack(serving.variant_dirs(deploy_dir / "export", ["full"]), config, tmp_path,
                       serve.route_rule(config, 0), "test", host="127.0.0.1", port=serving.free_port()) as stack:
        assert stack.backends[0].argv[-3:] == ["--continuous-batching", "--cb-num-blocks", "16"]

        def ask(q):
            return httpx.post(f"{stack.url}/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": q}], "max_tokens": 6, "temperature": 0.0}).json()

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, QUESTIONS[:4]))
    assert all(a["choices"][0]["finish_reason"] in ("stop", "length") and a["usage"]["completion_tokens"] <= 6
               for a in answers)
    assert "CB: True" in (tmp_path / "backend-full.log").read_text()
