"""Pretrain stage, whole job, against a plain PyTorch loop doing the same job (protocol: README.md); MFU.

- ours: `hfpipe run benchmarks/recipes/bench.yaml --only pretrain --force pretrain` in a fresh process: read the
  tokenizer stage's token shards through its sampler, build the model, train `max_steps` with checkpoints every `checkpoint_interval`
  steps (the recipe's), validate, save the model, curves, self-check, card.
- reference: a fresh `python benchmarks/bench_pretrain.py --plain ...`: the same token shards (the tokenizer stage's
  tokens/, memory-mapped with numpy, as the stage reads them) cut into the same block length, the same model config, AdamW + clipping + warm-up/cosine, the same steps and batch, a
  checkpoint (model + optimizer + scheduler state, torch.save) at the same interval, one validation pass over the
  same number of blocks, `save_pretrained` at the end. Nothing from hfpipe.
Work = tokens trained. Target: median of paired ratios (stage tokens/s over plain, wall) >= 0.97.

MFU: each stage run's training tokens/s x FLOPs per token (the stage's own PaLM-style count) over the fp32 matmul
throughput measured here at the model's own largest matmul ((batch x seq_len) x hidden @ hidden x intermediate),
median over the repetitions. Model size: the recipe's (Llama, 128 wide, 4 layers, vocab 8192). Target >= 0.6.

Run: .venv/bin/python benchmarks/bench_pretrain.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BENCH_RECIPE, hfpipe, paired, python, stage_dir, target, write_result  # noqa: E402


def plain(tok_dir: Path, out: Path, config_json: str) -> None:
    """The reference side, in its own process: PyTorch and transformers alone."""
    import math

    import numpy as np
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed

    c = json.loads(config_json)
    set_seed(c["seed"])
    tok = AutoTokenizer.from_pretrained(tok_dir / "tokenizer")
    index = json.loads((tok_dir / "tokens" / "index.json").read_text())  # the token shards both sides read
    dtype = np.uint16 if index["token_bytes"] == 2 else np.uint32
    ids = np.concatenate([np.memmap(tok_dir / "tokens" / f["file"], dtype=dtype, mode="r")
                          for rows in index["domains"].values() for f in rows]).astype(np.int64)
    n = len(ids) // c["seq_len"]
    blocks = torch.from_numpy(ids[: n * c["seq_len"]]).view(n, c["seq_len"])
    n_val = max(1, int(n * c["val_fraction"]))
    train, val = blocks[: n - n_val], blocks[n - n_val:][: c["eval_blocks"]]
    m = c["model"]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        m.pop("model_type"), vocab_size=len(tok), max_position_embeddings=c["seq_len"], **m))
    opt = torch.optim.AdamW(model.parameters(), lr=c["learning_rate"], betas=(0.9, 0.95), weight_decay=c["weight_decay"])
    steps, warm = c["max_steps"], c["warmup_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    gen = torch.Generator().manual_seed(c["seed"])
    model.train()
    for step in range(1, steps + 1):
        x = train[torch.randint(len(train), (c["batch_size"],), generator=gen)]
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % c["checkpoint_interval"] == 0 and step < steps:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state(), "step": step}, out / "checkpoint.pt.tmp")
            (out / "checkpoint.pt.tmp").replace(out / "checkpoint.pt")
    model.eval()
    with torch.no_grad():
        val_loss = model(input_ids=val, labels=val).loss.item()
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    (out / "val_loss.json").write_text(json.dumps({"val_loss": val_loss}))


def matmul_peak(rows: int, inner: int, cols: int, reps: int = 20) -> float:
    """Best fp32 torch.matmul FLOP/s at the model's largest matmul shape."""
    import torch

    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * inner * cols / best


def main() -> None:
    if sys.argv[1:2] == ["--plain"]:
        return plain(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(BENCH_RECIPE)
    c = recipe.pretrain
    root = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    hfpipe(root, "--until", "pretrain")  # data and tokenizer once (and a first pretrain run: not timed)
    tok_dir = stage_dir(root, "tokenizer")
    settings = json.dumps({"seed": recipe.seed, "seq_len": c.seq_len, "batch_size": c.batch_size,
                           "max_steps": c.max_steps, "warmup_steps": c.warmup_steps, "learning_rate": c.learning_rate,
                           "weight_decay": c.weight_decay, "max_grad_norm": c.max_grad_norm,
                           "checkpoint_interval": c.checkpoint_interval, "val_fraction": c.val_fraction,
                           "eval_blocks": c.eval_blocks, "model": c.model.model_dump(exclude={"config_overrides"})})
    tokens = c.max_steps * c.batch_size * c.seq_len
    stage_tps = []

    def ours(rep: int) -> float:
        hfpipe(root, "--only", "pretrain", "--force", "pretrain")
        stage_tps.append(json.loads((stage_dir(root, "pretrain") / "manifest.json").read_text())["metrics"])
        return tokens

    def reference(rep: int) -> float:
        out = root / "plain"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        python(__file__, "--plain", str(tok_dir), str(out), settings)
        return tokens

    result = paired("pretrain", {"stage": ours, "plain": reference}, reference="plain")
    ratio = result["ratios"]["stage"]
    metrics = stage_tps[-1]
    peak = matmul_peak(c.batch_size * c.seq_len, c.model.hidden_size, c.model.intermediate_size)
    mfus = [m["tokens_per_s"] * m["flops_per_token"] / peak for m in stage_tps[1:]]  # [0] is the warm-up
    mfu = {"median": round(statistics.median(mfus), 4), "min": round(min(mfus), 4), "max": round(max(mfus), 4),
           "n": len(mfus)}
    figures = {"tokens_per_run": tokens, "n_params": metrics["n_params"], "flops_per_token": metrics["flops_per_token"],
               "model": c.model.model_dump(), "seq_len": c.seq_len, "batch_size": c.batch_size,
               "checkpoint_interval": c.checkpoint_interval, "max_steps": c.max_steps,
               "stage_over_plain_wall": ratio["wall"], "stage_over_plain_cpu": ratio["cpu"],
               "matmul_peak_gflops_at_model_shape": round(peak / 1e9, 2), "mfu": mfu, "runs": result["runs"]}
    write_result("pretrain", figures,
                 [target("pretrain stage (whole job, checkpoints at the recipe's interval) vs plain PyTorch loop, "
                         "tokens/s", ratio["wall"], ">=", 0.97),
                  target(f"MFU vs fp32 matmul peak at the model's shape ({metrics['n_params'] / 1e6:.1f}M params)",
                         mfu, ">=", 0.6)],
                 notes="hfpipe run --only pretrain (fresh process) vs a fresh process running a plain loop with the "
                       "same data, model, optimizer, schedule, steps, checkpoint interval and validation blocks.")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
