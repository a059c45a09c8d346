"""SFT and DPO training throughput against pretraining on the same model and batch shape, side by side in one run.

One tokenizer (byte-level BPE, 4096, ChatML template) and one model (the tiny recipe's Llama: 128 wide, 4 layers,
~1.5M parameters) made by a warm-up run of the real pretrain stage; then, alternating, the real stages train it:

- ``pretrain``: hfpipe.stages.pretrain.run, 16 blocks x 128 tokens of CPython stdlib code per step;
- ``sft``: hfpipe.stages.sft.run on the tiny recipe's SFT mixture with the stage's default batching (one
  conversation per row, padded to the longest in the batch), 16 rows x max_length 128, loss on assistant tokens;
- ``sft_packed``: the same with ``packing: true`` (TRL best-fit packing, which is padding-free: the batch becomes one
  flattened row with a block-diagonal mask);
- ``sft_grouped`` (when the stage's Config has ``group_by_length``): padded rows in batches of similar length;
- ``sft_lora`` (``--lora``): the stage default with LoRA r=8 on every linear layer;
- ``dpo``: hfpipe.stages.preference.run (DPO, reference log-probs precomputed), 16 pairs x max_length 128.

Every stage is timed in its own training window, the one its metrics report: pretraining's summed step time (read by
a clock spy on the stage module's ``time``, cross-checked against the stage's ``train_s``), and TRL's
``Trainer.train`` for SFT/DPO (wrapped at class level; tokens = TRL's own ``_total_train_tokens``, the non-padding
tokens of the policy's batches; for DPO chosen + rejected). Wall and CPU time (process_time; other processes' load
does not move it) are both recorded; best of --reps alternating repetitions (rotated order) after one warm-up of each.
Target (issue 6): SFT with the stage's defaults >= 0.5x pretraining tokens/s; the other sides, DPO tokens/s and DPO
pairs/s are figures. ``--profile`` prints a cProfile of one window of each SFT side (benchmarks/README.md has the
reading).

Run: .venv/bin/python benchmarks/bench_posttrain.py [--steps 20] [--reps 2] [--threads 1] [--lora] [--profile]
     (quick smoke run: --steps 4 --reps 1 --no-write)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from bench import REPO, target, write_result  # noqa: E402  (first: repo on sys.path, Hub offline)

SEQ_LEN, BATCH = 128, 16  # the tiny recipe's pretraining batch shape, used by every side
MODEL = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 512}
SEED = 1234


# ---------------------------------------------------------------- timing windows
class ClockSpy:
    """Stands in for a stage module's ``time``: perf_counter() as usual, each call also noting process_time(), so
    the stage's own (t0, t0 + dt) pairs give the CPU time of exactly the window it reports."""

    def __init__(self, real):
        self._real, self.calls = real, []

    def perf_counter(self):
        self.calls.append((self._real.perf_counter(), self._real.process_time()))
        return self.calls[-1][0]

    def __getattr__(self, name):
        return getattr(self._real, name)

    def window(self) -> tuple[float, float]:
        pairs = list(zip(self.calls[0::2], self.calls[1::2]))
        if len(self.calls) % 2:
            raise RuntimeError(f"clock spy: odd number of perf_counter calls ({len(self.calls)}); the stage's timing "
                               "changed, update the bench")
        return sum(b[0] - a[0] for a, b in pairs), sum(b[1] - a[1] for a, b in pairs)


class TrainerWindow:
    """Wraps transformers.Trainer.train (TRL's trainers inherit it): wall, CPU time and TRL's token count of the last
    call; optionally under cProfile."""

    def __init__(self):
        from transformers import Trainer

        self.last, self.profile = None, None
        original = Trainer.train

        def train(trainer, *a, **kw):
            prof = None
            if self.profile is not None:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            w0, c0 = time.perf_counter(), time.process_time()
            out = original(trainer, *a, **kw)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if prof is not None:
                prof.disable()
                self.profile.append(prof)
            self.last = {"wall_s": wall, "cpu_s": cpu, "tokens": int(trainer._total_train_tokens),
                         "steps": out.global_step}
            return out

        Trainer.train = train


# ---------------------------------------------------------------- shared upstream: data, tokenizer, the model
def upstream(root: Path) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hfpipe.posttrain.data import BUNDLED_DIR
    from hfpipe.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, default_chat_template

    lib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(encoding="utf-8") for p in sorted(lib.glob("*.py"))[:120]]
    chats = [m["content"] for name in ("sft_chat", "instruct", "reasoning", "preference_pairs")
             for line in (BUNDLED_DIR / f"{name}.jsonl").read_text().splitlines()
             for key in ("messages", "prompt", "chosen", "rejected") for m in json.loads(line).get(key, [])]
    (root / "data" / "data").mkdir(parents=True)
    with gzip.open(root / "data" / "data" / "part.jsonl.gz", "wt") as f:
        for i, t in enumerate(code):
            f.write(json.dumps({"text": t, "id": str(i), "metadata": {"domain": "code"}}) + "\n")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(code + chats, trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIAL_TOKENS,
                                                              show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                            chat_template=default_chat_template()).save_pretrained(root / "tok" / "tokenizer")
    return {"data": root / "data", "tokenizer": root / "tok"}


# ---------------------------------------------------------------- the stages, each measured in its training window
def run_pretrain(up: dict, root: Path, name: str, steps: int) -> dict:
    from hfpipe.stages import Inputs, pretrain

    config = pretrain.Config(model=MODEL, seq_len=SEQ_LEN, batch_size=BATCH, max_steps=steps, warmup_steps=1,
                             eval_interval=steps, eval_blocks=4, log_interval=steps, checkpoint_interval=10**6)
    out = root / name
    spy, real = ClockSpy(time), pretrain.time
    pretrain.time = spy
    try:
        m = pretrain.run(config, Inputs("bench", SEED, REPO / "recipes", up), out)
    finally:
        pretrain.time = real
    wall, cpu = spy.window()
    if abs(wall - m["train_s"]) > 0.02 + 0.01 * wall:
        raise RuntimeError(f"clock spy window {wall:.3f}s != pretrain train_s {m['train_s']}s: timing changed")
    return {"wall_s": wall, "cpu_s": cpu, "tokens": m["train_tokens"], "steps": m["steps"], "out": out}


def sft_config(steps: int, **overrides):
    """The tiny recipe's SFT section, with pretraining's batch shape and a short held-out pass (outside the window)."""
    from hfpipe.recipe import load_recipe
    from hfpipe.stages import sft

    base = load_recipe(REPO / "recipes" / "tiny.yaml").sft
    keep = {k: v for k, v in base.model_dump(exclude_unset=True).items()
            if k in ("datasets", "dataset", "eval_dataset", "learning_rate", "assistant_only_loss", "lora")}
    return sft.Config(**{**keep, "max_steps": steps, "per_device_batch_size": BATCH, "max_length": SEQ_LEN,
                         "gradient_accumulation_steps": 1, "max_eval_rows": 8, **overrides})


def sft_variants() -> dict[str, dict]:
    """SFT batchings the stage offers: its default, packing, and length-grouped batches where its Config has them."""
    from hfpipe.stages import sft

    fields = sft.Config.model_fields
    variants = {"sft": {}, "sft_packed": {"packing": True}}
    if "group_by_length" in fields:  # padded rows, but batches of similar lengths (transformers' LengthGroupedSampler)
        variants["sft_grouped"] = {"group_by_length": True}
        if fields["group_by_length"].default:
            variants["sft_ungrouped"] = {"group_by_length": False}
    return variants


def run_sft(model_up: dict, root: Path, name: str, steps: int, window: TrainerWindow, **overrides) -> dict:
    from hfpipe.stages import Inputs, sft

    out = root / name
    m = sft.run(sft_config(steps, **overrides), Inputs("bench", SEED, REPO / "recipes", model_up,
                                                       model_stage="pretrain"), out)
    w = window.last
    if m["train_tokens"] != w["tokens"]:
        raise RuntimeError(f"sft: stage reports {m['train_tokens']} tokens, the trainer counted {w['tokens']}")
    return {**w, "stage_tokens_per_s": m["train_tokens_per_s"], "sequences": m["train_sequences"]}


def run_dpo(model_up: dict, root: Path, name: str, steps: int, window: TrainerWindow) -> dict:
    from hfpipe.stages import Inputs, preference

    config = preference.Config(method="dpo", max_steps=steps, per_device_batch_size=BATCH, max_length=SEQ_LEN,
                               gradient_accumulation_steps=1, learning_rate=3e-4, mixture_rows=steps * BATCH,
                               max_eval_pairs=8)
    out = root / name
    m = preference.run(config, Inputs("bench", SEED, REPO / "recipes", model_up, model_stage="pretrain"), out)
    return {**window.last, "pairs": m["train_steps"] * BATCH, "stage_pairs_per_s": m["train_pairs_per_s"]}


def print_profile(prof, label: str, n: int = 30) -> None:
    import io
    import pstats

    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(n)
        print(f"==== profile of the {label} training window, by {key}\n" + s.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=int(os.environ.get("BENCH_POSTTRAIN_STEPS", 20)),
                        help="optimizer steps per timed run (each side)")
    parser.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_POSTTRAIN_REPS", 2)),
                        help="alternating timed runs of each side; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    parser.add_argument("--lora", action="store_true", help="also time LoRA SFT (r=8, all linear layers)")
    parser.add_argument("--profile", action="store_true", help="cProfile one window of each SFT side and print it")
    parser.add_argument("--no-write", action="store_true", help="print the figures, write no results/ file")
    args = parser.parse_args()

    import shutil

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    window = TrainerWindow()
    root = Path(tempfile.mkdtemp(prefix="bench_posttrain_"))
    up = upstream(root)

    # ---- warm-up: the model every side trains (a pretrain run), then one short run of each post-training side ----
    model_up = {"pretrain": run_pretrain(up, root, "model", args.steps)["out"]}
    sft_sides = sft_variants()
    if args.lora:
        sft_sides["sft_lora"] = {"lora": {"r": 8, "alpha": 16}}
    sides = {"pretrain": lambda n, steps: run_pretrain(up, root, n, steps),
             **{name: (lambda kw: lambda n, steps: run_sft(model_up, root, n, steps, window, **kw))(kw)
                for name, kw in sft_sides.items()},
             "dpo": lambda n, steps: run_dpo(model_up, root, n, steps, window)}
    for name in sides:
        if name != "pretrain":
            sides[name](f"warmup_{name}", 2)

    # ---- timed, alternating (rotated order, so a load spike hits every side alike) ----
    runs = {name: [] for name in sides}
    order = list(sides)
    for rep in range(args.reps):
        for name in order[rep % len(order):] + order[: rep % len(order)]:
            r = sides[name](f"{name}_{rep}", args.steps)
            r.pop("out", None)
            runs[name].append(r)
            print(f"rep {rep} {name}: {r['tokens']} tokens in {r['wall_s']:.2f}s wall / {r['cpu_s']:.2f}s CPU "
                  f"({r['tokens'] / r['cpu_s']:.0f} tokens per CPU-s)", flush=True)
            shutil.rmtree(root / f"{name}_{rep}", ignore_errors=True)
    if args.profile:
        window.profile = []
        for name in sft_sides:
            sides[name](f"profile_{name}", args.steps)
            print_profile(window.profile[-1], name)
        window.profile = None

    # ---- figures: best of each side, wall and CPU; ratios against pretraining ----
    best = {name: {"wall": max(r["tokens"] / r["wall_s"] for r in rs), "cpu": max(r["tokens"] / r["cpu_s"] for r in rs)}
            for name, rs in runs.items()}
    ratio = {f"{name}_over_pretrain_{k}": best[name][k] / best["pretrain"][k]
             for name in sides if name != "pretrain" for k in ("cpu", "wall")}
    figures = {**{f"{name}_tokens_per_s": round(b["wall"], 1) for name, b in best.items()},
               **{f"{name}_tokens_per_cpu_s": round(b["cpu"], 1) for name, b in best.items()},
               **{k: round(v, 4) for k, v in ratio.items()},
               "dpo_pairs_per_s": round(max(r["pairs"] / r["wall_s"] for r in runs["dpo"]), 2),
               "dpo_pairs_per_cpu_s": round(max(r["pairs"] / r["cpu_s"] for r in runs["dpo"]), 2),
               "tokens_per_step": {name: round(sum(r["tokens"] for r in rs) / sum(r["steps"] for r in rs))
                                   for name, rs in runs.items()},
               "runs": {name: [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rs]
                        for name, rs in runs.items()},
               "steps": args.steps, "reps": args.reps, "batch": f"{BATCH} x {SEQ_LEN}", "torch_threads": args.threads,
               "load_avg_1min": round(os.getloadavg()[0], 2)}
    targets = [target("SFT (stage defaults, tiny recipe mixture) vs pretraining tokens/s, CPU time",
                      ratio["sft_over_pretrain_cpu"], ">=", 0.5),
               target("the same, wall clock (noisy on a shared machine)", ratio["sft_over_pretrain_wall"], ">=", 0.5)]
    print(json.dumps({"figures": {k: v for k, v in figures.items() if k != "runs"}, "targets": targets}, indent=2))
    if not args.no_write:
        write_result("posttrain", figures, targets, NOTES)
    shutil.rmtree(root, ignore_errors=True)


NOTES = ("Same model (the pretrain stage's output), tokenizer and batch shape (16 x 128) on every side; real stages "
         "(pretrain, sft, preference) alternated in one process after a warm-up of each. Windows: pretraining's summed "
         "step time (its tokens_per_s), TRL Trainer.train for SFT/DPO (their train_s); tokens = non-padding tokens the "
         "policy trained on (DPO: chosen + rejected; reference log-probs are precomputed before the window). sft = the "
         "stage's default batching (padded rows), sft_packed = packing: true (TRL bfd = padding-free, one flattened "
         "row per batch), sft_grouped = length-grouped padded batches where the stage offers them. CPU time "
         "(process_time) is the figure other processes' load does not move. Profile: benchmarks/README.md.")


if __name__ == "__main__":
    main()
