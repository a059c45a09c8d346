"""Tokenizer stage, whole job, against HF `tokenizers` doing the same training directly (protocol: README.md).

- ours: `hfpipe run benchmarks/recipes/bench.yaml --only tokenizer --force tokenizer tokenizer.token_shards=false` in
  a fresh process: read the data stage's shards, held-out split, language/domain sample, train, save, held-out
  report, self-check, card (the token shards for pretraining are off: the reference side does not write them).
- reference: a fresh `python benchmarks/bench_tokenizer.py --direct SAMPLE OUT`: read the same training sample (one
  text file, written once by this bench with the stage's own sampling helpers), train `Tokenizer.train_from_iterator`
  with the same pipeline (byte-level BPE, digit splitting, special tokens, vocabulary size) and save it as
  transformers does (`PreTrainedTokenizerFast.save_pretrained`).
Both must learn the same vocabulary and merges (checked on the last repetition). Work = training bytes.
Target: median of paired ratios (stage MB/s over direct MB/s, wall) >= 0.9.

Run: .venv/bin/python benchmarks/bench_tokenizer.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import hfpipe, paired, python, stage_dir, target, write_result  # noqa: E402


def direct(sample: Path, out: Path, config_json: str) -> None:
    """The reference side, in its own process: the library alone on the stage's training sample."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from hfpipe.models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN

    config = json.loads(config_json)
    texts = json.loads(sample.read_text(encoding="utf-8"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=config["vocab_size"], min_frequency=config["min_frequency"],
                                  special_tokens=config["special_tokens"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer, length=len(texts))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                            pad_token=PAD_TOKEN).save_pretrained(out)


def main() -> None:
    if sys.argv[1:2] == ["--direct"]:
        return direct(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    from hfpipe.recipe import load_recipe
    from hfpipe.stages.tokenizer.build import read_docs, sample_mix, split_heldout

    from bench import BENCH_RECIPE

    root = Path(tempfile.mkdtemp(prefix="bench_tokenizer_"))
    hfpipe(root, "--until", "tokenizer")  # the data stage once (not timed)
    config = load_recipe(BENCH_RECIPE).tokenizer
    train_docs, _ = split_heldout(read_docs(stage_dir(root, "data")), config.heldout_fraction)
    texts, _ = sample_mix(train_docs, language_weights=config.language_weights, domain_weights=config.domain_weights,
                          alpha=config.balance_alpha, max_bytes=config.max_training_bytes, seed=load_recipe(BENCH_RECIPE).seed)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    sample = root / "sample.json"
    sample.write_text(json.dumps(texts), encoding="utf-8")
    settings = json.dumps({"vocab_size": config.vocab_size, "min_frequency": config.min_frequency,
                           "special_tokens": list(config.special_tokens)})

    def ours(rep: int) -> float:
        hfpipe(root, "--only", "tokenizer", "--force", "tokenizer", "tokenizer.token_shards=false")
        return n_bytes

    def reference(rep: int) -> float:
        out = root / "direct"
        shutil.rmtree(out, ignore_errors=True)
        python(__file__, "--direct", str(sample), str(out), settings)
        return n_bytes

    result = paired("tokenizer", {"stage": ours, "direct": reference}, reference="direct")
    ratio = result["ratios"]["stage"]
    mine = json.loads((stage_dir(root, "tokenizer") / "tokenizer" / "tokenizer.json").read_text())["model"]
    theirs = json.loads((root / "direct" / "tokenizer.json").read_text())["model"]
    if mine["vocab"] != theirs["vocab"] or mine["merges"] != theirs["merges"]:
        raise SystemExit("the stage and the direct call learned different vocabularies: not the same work")
    figures = {"training_mb": round(n_bytes / 1e6, 3), "vocab_size": config.vocab_size,
               "stage_over_direct_wall": ratio["wall"], "stage_over_direct_cpu": ratio["cpu"], "runs": result["runs"]}
    write_result("tokenizer", figures,
                 [target("tokenizer stage (whole job: read, sample, train, save, report) vs tokenizers direct, MB/s",
                         ratio["wall"], ">=", 0.9)],
                 notes="hfpipe run --only tokenizer (fresh process, incl. saving, held-out report without a reference "
                       "tokenizer, self-check, card) vs a fresh process training tokenizers on the same sample and "
                       "saving it; identical vocabulary and merges checked.")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
