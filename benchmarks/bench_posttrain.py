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
does not move it) are both recorded; bench.paired's protocol (README.md): a warm-up of each, 8 repetitions in
rotated order, the median of the paired ratios of each side's window tokens/s over pretraining's in the same
repetition. Target (issue 23): SFT with the stage's defaults >= 0.8x pretraining tokens/s (wall); DPO tokens/s and
pairs/s are figures; the other batchings only with --batchings. ``--profile`` prints a cProfile of one window of each SFT side (benchmarks/README.md has the
reading).

Run: .venv/bin/python benchmarks/bench_posttrain.py [--steps 20] [--threads 1] [--lora] [--batchings] [--profile]
     [--no-checkpoints]   (quick smoke run: BENCH_REPS=1 ... --steps 4: nothing is written with fewer than 8 reps)

Checkpoints (issue 20; ``--checkpoints``, results/posttrain_checkpoints.json): the SFT stage with ``save_steps: 10``
(every checkpoint: model, optimizer, scheduler, RNG, trainer state, fsynced, marker, rotation to 2) against the same
stage with ``save_steps: null``, 20 steps of 16 x 128 (checkpoints at 10 and 20) on the bundled conversations and
the tiny recipe's model shape, each run the whole stage in
this process, as the file's other sides (a fresh process per run cost 220 s of wall time each on the loaded 2-core
machine); bench.paired's protocol: a warm-up of each, 8 alternated repetitions. The
figure is the median of the paired ratios of the stage's own training tokens/s (``train_tokens_per_s``: the
Trainer.train window, checkpoint writes included); target >= 0.95. The whole-process wall ratio is recorded beside it.
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
from bench import REPO, spread, target, write_result  # noqa: E402  (first: repo on sys.path, Hub offline)

SEQ_LEN, BATCH = 128, 16  # the tiny recipe's pretraining batch shape, used by every side
MODEL = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 512}
SEED = 1234
LONG_SETS = ("hfpipe:structured.jsonl",)  # no conversation of it has an assistant token within SEQ_LEN


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

    def window(self, skip: int = 0) -> tuple[float, float]:
        pairs = list(zip(self.calls[0::2], self.calls[1::2]))[skip:]
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
    # the token shards the pretrain stage reads, written by the tokenizer stage's own step
    from hfpipe.stages.tokenizer.shard_writer import write_shards
    from hfpipe.stages.tokenizer.shards import SHARDS

    write_shards(root / "data", root / "tok" / "tokenizer", root / "tok" / SHARDS, seed=SEED, bos_token=BOS_TOKEN,
                 workers=1)
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
    wall, cpu = spy.window(skip=1)  # the stage's first (t0, t1) pair is its start-up (startup_s), then one per step
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
    # pretraining's 128-token rows: the structured-output set's schemas run past them (the tiny recipe trains at 256,
    # beyond this model's 128 positions), so the stage would refuse it; the other sets fit
    keep["datasets"] = [d for d in keep.get("datasets", []) if d.get("name") not in LONG_SETS]
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


# ---------------------------------------------------------------- checkpoints every 10 steps vs none (issue 20)
CKPT_STEPS, CKPT_EVERY = 20, 10


def checkpoint_model(root: Path) -> Path:
    """The tiny recipe's model shape (random init), saved with the bench tokenizer: what both sides fine-tune."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, set_seed

    from hfpipe.models import save_model

    tok = AutoTokenizer.from_pretrained(upstream(root)["tokenizer"] / "tokenizer")
    set_seed(SEED)
    config = LlamaConfig(vocab_size=len(tok), **MODEL, max_position_embeddings=SEQ_LEN, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return save_model(LlamaForCausalLM(config), tok, root / "model_stage" / "model")


def checkpoint_side(model_dir: str, out: str, save_steps: str) -> None:
    """One side, in its own process: the real SFT stage, its metrics written to <out>/metrics.json."""
    import torch

    from hfpipe.stages import Inputs, sft

    torch.set_num_threads(1)
    # the bundled conversations (not the tiny recipe's mixture, which other work changes): fixed work on both sides
    config = sft.Config(max_steps=CKPT_STEPS, per_device_batch_size=BATCH, max_length=SEQ_LEN, learning_rate=1e-3,
                        max_eval_rows=8, save_steps=None if save_steps == "none" else int(save_steps),
                        keep_checkpoints=2)
    out_dir = Path(out)
    out_dir.mkdir(parents=True)
    m = sft.run(config, Inputs("bench", SEED, REPO / "recipes", {"pretrain": Path(model_dir).parent},
                               model_stage="pretrain"), out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(m))


def bench_checkpoints(write: bool) -> None:
    import shutil
    import statistics

    from bench import metric_ratios, paired

    root = Path(tempfile.mkdtemp(prefix="bench_posttrain_ckpt_"))
    model_dir = checkpoint_model(root)
    tps: dict[str, list[float]] = {"every_10": [], "none": []}

    def side(name: str, save_steps: str):
        def run(rep: int) -> int:
            out = root / f"{name}_{rep}"
            shutil.rmtree(out, ignore_errors=True)
            checkpoint_side(str(model_dir), str(out), save_steps)  # in this process, as the file's other sides
            m = json.loads((out / "metrics.json").read_text())
            if m["train_steps"] != CKPT_STEPS:
                raise SystemExit(f"{name}: trained {m['train_steps']} steps, not {CKPT_STEPS}")
            if rep >= 0:
                tps[name].append(m["train_tokens_per_s"])
            shutil.rmtree(out, ignore_errors=True)
            return m["train_tokens"]
        return run

    result = paired("sft checkpoints", {"every_10": side("every_10", str(CKPT_EVERY)), "none": side("none", "none")},
                    reference="none")
    ratios = spread([a / b for a, b in zip(tps["every_10"], tps["none"])])
    figures = {"train_tokens_per_s_ratio": ratios, "whole_process_wall_ratio": result["ratios"]["every_10"]["wall"],
               "whole_process_cpu_ratio": result["ratios"]["every_10"]["cpu"],
               "train_tokens_per_s": {k: round(statistics.median(v), 1) for k, v in tps.items()},
               "steps": CKPT_STEPS, "save_steps": CKPT_EVERY, "checkpoints_written": CKPT_STEPS // CKPT_EVERY,
               "dataset": "hfpipe:sft_chat.jsonl",
               "batch": f"{BATCH} x {SEQ_LEN}", "runs": result["runs"]}
    targets = [target("SFT with checkpoints every 10 steps vs none, training tokens/s (Trainer.train window)",
                      ratios, ">=", 0.95)]
    print(json.dumps({"figures": {k: v for k, v in figures.items() if k != "runs"}, "targets": targets}, indent=2))
    if write:
        write_result("posttrain_checkpoints", figures, targets,
                     "hfpipe.stages.sft.run, whole stage per run, in one process, save_steps 10 vs null, "
                     f"{CKPT_STEPS} steps of {BATCH} x {SEQ_LEN} on a random-init model of the tiny recipe's shape; "
                     "figure = median of paired ratios of the stage's train_tokens_per_s (checkpoint writes inside "
                     "the window); whole-process wall/CPU ratios beside it.")
    shutil.rmtree(root, ignore_errors=True)


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
    parser.add_argument("--no-checkpoints", action="store_true", help="skip the checkpoint part")
    parser.add_argument("--batchings", action="store_true", help="also the other SFT batchings (packing, "
                        "length-grouped): figures, not in make bench's time")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    parser.add_argument("--lora", action="store_true", help="also time LoRA SFT (r=8, all linear layers)")
    parser.add_argument("--profile", action="store_true", help="cProfile one window of each SFT side and print it")
    parser.add_argument("--no-write", action="store_true", help="print the figures, write no results/ file")
    parser.add_argument("--checkpoints", action="store_true", help="only the checkpoint bench (SFT save_steps 10 vs "
                        "none), results/posttrain_checkpoints.json")
    parser.add_argument("--checkpoint-side", nargs=3, metavar=("MODEL", "OUT", "SAVE_STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.checkpoint_side:
        return checkpoint_side(*args.checkpoint_side)
    if args.checkpoints:
        return bench_checkpoints(not args.no_write)

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
    sft_sides = sft_variants() if args.batchings else {"sft": {}}
    if args.lora:
        sft_sides["sft_lora"] = {"lora": {"r": 8, "alpha": 16}}
    sides = {"pretrain": lambda n, steps: run_pretrain(up, root, n, steps),
             **{name: (lambda kw: lambda n, steps: run_sft(model_up, root, n, steps, window, **kw))(kw)
                for name, kw in sft_sides.items()},
             "dpo": lambda n, steps: run_dpo(model_up, root, n, steps, window)}
    for name in sides:
        if name != "pretrain":
            sides[name](f"warmup_{name}", 2)

    # ---- timed: bench.paired (a warm-up of each, >= 8 repetitions, rotated order), every side against pretraining ----
    from bench import metric_ratios, paired

    def timed(name):
        def run(rep: int) -> dict:
            r = sides[name](f"{name}_{rep}", args.steps)
            r.pop("out", None)
            shutil.rmtree(root / f"{name}_{rep}", ignore_errors=True)
            return {"work": r["tokens"], "window_tokens_per_s": r["tokens"] / r["wall_s"],
                    "window_tokens_per_cpu_s": r["tokens"] / r["cpu_s"], "window_pairs_per_s":
                    r.get("pairs", 0) / r["wall_s"], "steps": r["steps"]}
        return run

    result = paired("posttrain", {name: timed(name) for name in sides}, reference="pretrain")
    runs = result["runs"]
    if args.profile:
        window.profile = []
        for name in sft_sides:
            sides[name](f"profile_{name}", args.steps)
            print_profile(window.profile[-1], name)
        window.profile = None

    # ---- figures: the median of the paired ratios of each side's training-window tokens/s over pretraining's ----
    ratio = {f"{name}_over_pretrain_{clock}": metric_ratios(result, name, "pretrain", f"window_tokens_per_{unit}")
             for name in sides if name != "pretrain" for clock, unit in (("wall", "s"), ("cpu", "cpu_s"))}
    figures = {**ratio,
               "dpo_pairs_per_s": spread([r["window_pairs_per_s"] for r in runs["dpo"]]),
               "tokens_per_step": {name: round(sum(r["work"] for r in rs) / sum(r["steps"] for r in rs))
                                   for name, rs in runs.items()},
               "runs": runs, "steps": args.steps, "batch": f"{BATCH} x {SEQ_LEN}", "torch_threads": args.threads}
    targets = [target("SFT (stage defaults, tiny recipe mixture) vs pretraining tokens/s on the same model (wall)",
                      ratio["sft_over_pretrain_wall"], ">=", 0.8)]
    print(json.dumps({"figures": {k: v for k, v in figures.items() if k != "runs"}, "targets": targets}, indent=2))
    if not args.no_write:
        write_result("posttrain", figures, targets, NOTES)
    shutil.rmtree(root, ignore_errors=True)
    if not args.no_checkpoints:  # make bench: both parts, one run
        bench_checkpoints(not args.no_write)


NOTES = ("Same model (the pretrain stage's output), tokenizer and batch shape (16 x 128) on every side; real stages "
         "(pretrain, sft, preference) alternated in one process after a warm-up of each. Windows: pretraining's summed "
         "step time (its tokens_per_s), TRL Trainer.train for SFT/DPO (their train_s); tokens = non-padding tokens the "
         "policy trained on (DPO: chosen + rejected; reference log-probs are precomputed before the window). sft = the "
         "stage's default batching (padded rows), sft_packed = packing: true (TRL bfd = padding-free, one flattened "
         "row per batch), sft_grouped = length-grouped padded batches where the stage offers them. CPU time "
         "(process_time) is the figure other processes' load does not move. Profile: benchmarks/README.md.")


if __name__ == "__main__":
    main()
