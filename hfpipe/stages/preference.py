"""preference: preference optimisation on chosen/rejected pairs with TRL: DPO, KTO or ORPO.

Run just this stage (the stages before it done): ``hfpipe run recipes/tiny.yaml --only preference``.

Reads the upstream model (or the recipe's base_model) and a weighted mixture of preference sets (TRL's preference
format, explicit or implicit prompt, conversational or plain text; hfpipe.posttrain.data). DPO and KTO train against a
frozen copy of the starting model (TRL builds the reference; DPO precomputes its log-probs once; KTO unpairs the pairs
into desirable/undesirable rows); ORPO needs no reference. Whatever the method, the same held-out numbers are measured
before and after training, so methods compare:

- ``eval_margin``: mean implicit reward margin beta * [(log pi - log pi0)(chosen) - (log pi - log pi0)(rejected)],
  pi0 = the starting model (0 before training by definition), and ``eval_accuracy``: share of pairs with margin > 0;
- ``eval_pref_accuracy``: share of pairs whose chosen answer has a higher mean per-token log-prob than the rejected
  one (reference-free, so meaningful before training too);
- ``eval_loss``: the method's own held-out loss (TRL's evaluate).

Writes ``out_dir/model/`` with the tokenizer (chat template) unchanged and ``mixture.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from hfpipe.errors import HfpipeError, first_line
from hfpipe.posttrain.data import load_stage_mixture, mixture_files, mixture_pins
from hfpipe.posttrain.trainer import card_facts  # noqa: F401 (the stage's card hook: its curves)
from hfpipe.posttrain.trainer import (build_trl_config, check_finite, check_trainer_args, job_keys, mixture_keys,
                                      report_progress, resolve_precision, save_and_check, scoped_env,
                                      stop_on_non_finite, tracker_env, training_keys, trl_arguments)
from hfpipe.stages import Inputs, StageConfig

OUTPUTS = ("model/*",)  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("mixture.json", "trainer_config.json")
READS = ("model",)
CARD = {"name": "Preference optimisation (TRL DPOTrainer / KTOTrainer / ORPOTrainer)",
        "paper": "https://arxiv.org/abs/2305.18290",
        "citation": "Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward "
                    "Model; Ethayarajh et al. 2024, KTO (arXiv:2402.01306); Hong et al. 2024, ORPO (arXiv:2403.07691)"}
# method -> the TRL trainer run() builds (its config class is the same name with Config), and what it adds to the
# arguments every TRL stage gets; the dry run names the same class
TRAINERS = {"dpo": "trl.DPOTrainer", "kto": "trl.KTOTrainer", "orpo": "trl.experimental.orpo.ORPOTrainer"}
METHOD_ARGS = {"dpo": {"precompute_ref_log_probs": True, "loss_type": ["sigmoid"]},
               "kto": {"precompute_ref_log_probs": False},
               "orpo": {}}


def trainer_classes(method: str) -> tuple[type, type]:
    """(trainer class, its config class) of a method, imported from TRAINERS."""
    import importlib

    module, _, name = TRAINERS[method].rpartition(".")
    lib = importlib.import_module(module)
    return getattr(lib, name), getattr(lib, name.removesuffix("Trainer") + "Config")


# The section's keys, in recipe order: method; the data keys every mixture stage has, worded for pairs
# (hfpipe.posttrain.trainer); beta; the training keys (ditto); then preference's own (Config).
class _Method(StageConfig):
    method: Literal["dpo", "kto", "orpo"] = Field("dpo", description="objective: dpo (sigmoid loss on reward margins "
                                                  "against a frozen reference), kto (prospect-theoretic loss on "
                                                  "desirable/undesirable answers), orpo (SFT loss + odds-ratio "
                                                  "penalty, no reference model)")


class _Beta(mixture_keys(_Method, ("hfpipe:preference_pairs.jsonl", "hfpipe:preference_pairs_eval.jsonl"),
                         file_format="JSONL with prompt/chosen/rejected", rows="pairs", held_out="pairs",
                         grouped_by="prompt")):
    beta: float = Field(0.1, gt=0.0, le=10.0, description="dpo/kto: temperature, how far the policy may move from "
                        "the reference (higher = stays closer); orpo: weight of the odds-ratio term (lambda)")


_TRAINING = training_keys(_Beta, 1e-6, over="pairs",
                          batch=Field(8, ge=2, description="pairs (kto: answers) per forward pass; kto needs >= 2 "
                                      "to estimate its KL term"),
                          length=Field(1024, ge=8, description="tokens of prompt + answer; longer pairs are cut at "
                                       "the end"))


class Config(job_keys(_TRAINING)):
    max_eval_pairs: int | None = Field(None, ge=1, description="held-out pairs per set used for the before/after "
                                       "numbers; null = all")


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    return mixture_files(config, recipe_dir, "preference")


def pins(config: Config, recipe_dir: Path) -> dict[str, dict]:
    return mixture_pins(config, recipe_dir, "preference")


def preflight(config: Config, recipe_dir: Path) -> None:
    """Before any stage of the run starts: the trackers are installed, every `preference.trainer` key is a field of
    the method's TRL config class."""
    from hfpipe.stages import check_trackers

    check_trackers(config.report_to, "preference.report_to")
    check_trainer_args("preference", trainer_classes(config.method)[1], config)


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers
    from datasets import Dataset

    from hfpipe.models import load_model_and_tokenizer

    transformers.set_seed(inputs.seed)

    # ---------------------------------------------------------------- data: the weighted mixture of pairs, and each
    # set's held-out pairs
    mixture, key = load_stage_mixture(config, "preference", "preference", inputs.recipe_dir, inputs.seed)
    eval_rows = [r for rows in mixture.eval.values() for r in rows[: config.max_eval_pairs]]

    # ---------------------------------------------------------------- model + trainer (the reference is the starting
    # model, as TRL builds it)
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template

    def fits(row: dict) -> bool:  # the prompt leaves room for answer tokens (else losses divide by zero tokens)
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) < config.max_length - 1

    n_train, n_eval = len(mixture.train), len(eval_rows)
    mixture.train, eval_rows = [r for r in mixture.train if fits(r)], [r for r in eval_rows if fits(r)]
    if not mixture.train or not eval_rows:
        raise HfpipeError(f"{key}: every {'training' if not mixture.train else 'held-out'} prompt fills max_length="
                          f"{config.max_length} after templating, leaving no answer tokens; raise max_length", 2)
    before_logps = pair_logps(model, tokenizer, eval_rows, config.max_length, config.per_device_batch_size)
    work_dir = out_dir / "trainer"
    common = trl_arguments(config, work_dir, inputs.seed, run_name=f"{inputs.recipe_name}-preference",
                           beta=config.beta, **METHOD_ARGS[config.method])
    train_ds, eval_ds = Dataset.from_list(mixture.train), Dataset.from_list(eval_rows)
    try:
        trainer_class, config_class = trainer_classes(config.method)
        reference = {} if config.method == "orpo" else {"ref_model": None}  # TRL builds it from the model
        args = build_trl_config("preference", config_class, common, out_dir)
        with scoped_env(tracker_env(out_dir, config.report_to)):
            trainer = trainer_class(model=model, **reference, args=args, processing_class=tokenizer,
                                    train_dataset=train_ds, eval_dataset=eval_ds,
                                    callbacks=[stop_on_non_finite("preference", "preference.learning_rate"),
                                               report_progress(f"training ({config.method.upper()})")])
    except (RuntimeError, ValueError, KeyError) as e:  # TRL/template problems while tokenizing the pairs
        raise HfpipeError(f"preference: preparing {key} ({', '.join(mixture.eval)}) failed: {first_line(e)}",
                          2) from None
    for label, ds in (("training mixture", trainer.train_dataset), ("held-out pairs", trainer.eval_dataset)):
        if len(ds) == 0:
            raise HfpipeError(f"{key}: {label}: every prompt fills max_length={config.max_length} after templating, "
                              "leaving no answer tokens; raise max_length", 2)

    # ---------------------------------------------------------------- train, with the method's held-out loss before and
    # after
    loss_before = trainer.evaluate()["eval_loss"]
    start = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - start
    loss_after = trainer.evaluate()["eval_loss"]

    # ---------------------------------------------------------------- held-out preference numbers, the same for every
    # method
    after_logps = pair_logps(trainer.model, tokenizer, eval_rows, config.max_length, config.per_device_batch_size)
    before, after = preference_metrics(before_logps, before_logps, config.beta), \
        preference_metrics(after_logps, before_logps, config.beta)
    if after["pairs"] == 0:
        raise HfpipeError(f"{key}: no held-out pair keeps an answer token within max_length={config.max_length}; "
                          "raise max_length", 2)
    metrics = {"eval_loss_before": loss_before, "eval_loss_after": loss_after,
               "eval_accuracy_before": before["accuracy"], "eval_accuracy_after": after["accuracy"],
               "eval_margin_before": before["margin"], "eval_margin_after": after["margin"],
               "eval_pref_accuracy_before": before["pref_accuracy"], "eval_pref_accuracy_after": after["pref_accuracy"],
               "train_loss": train_out.training_loss, "train_steps": train_out.global_step,
               "train_pairs": len(mixture.train), "eval_pairs": after["pairs"],
               "pairs_dropped_too_long": (n_train - len(mixture.train)) + (n_eval - len(eval_rows)),
               "train_pairs_per_s": round(train_out.global_step * config.per_device_batch_size
                                          * config.gradient_accumulation_steps / train_s, 2),
               "precision": resolve_precision(config.precision)}
    check_finite("preference", metrics, "learning_rate", config.learning_rate)
    metrics["mixture"] = mixture.summary()

    # ---------------------------------------------------------------- save + self-check: the policy (weights saved)
    # with the chat template exactly as it came
    mixture.write_report(out_dir)
    save_and_check("preference", trainer.model, tokenizer, template_before, out_dir, work_dir)
    return metrics


def pair_logps(model, tokenizer, rows: list[dict], max_length: int, batch_size: int) -> list[tuple[float, ...]]:
    """Per pair: (sum log p(chosen), tokens of chosen, sum log p(rejected), tokens of rejected) under `model`, the
    answer tokenized after the chat-templated prompt as TRL does, the sequence cut at max_length."""
    import torch

    seqs = []  # (input ids, number of prompt tokens)
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for answer in (row["chosen"], row["rejected"]):
            full = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=False)
            a_ids = tokenizer(full[len(prompt):] if full.startswith(prompt) else full, add_special_tokens=False)
            seqs.append(((p_ids + a_ids["input_ids"])[:max_length], len(p_ids)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in chunk])
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(logits.device))[..., 0]
            for j, (s, n_prompt) in enumerate(chunk):
                span = logp[j, n_prompt - 1: len(s) - 1]
                out.append((span.sum().item(), span.numel()))
    model.train(was_training)
    return [out[k] + out[k + 1] for k in range(0, len(out), 2)]


def preference_metrics(logps: list[tuple], ref_logps: list[tuple], beta: float) -> dict[str, float]:
    """Implicit-reward margin/accuracy against ref_logps, and the reference-free per-token preference accuracy, over
    the pairs whose answers both keep at least one token within max_length."""
    kept = [(p, q) for p, q in zip(logps, ref_logps) if p[1] and p[3]]
    margins = [beta * ((c - rc) - (r - rr)) for (c, _, r, _), (rc, _, rr, _) in kept]
    prefer = [c / nc > r / nr for (c, nc, r, nr), _ in kept]
    n = max(len(margins), 1)
    return {"margin": sum(margins) / n, "accuracy": sum(m > 0 for m in margins) / n, "pref_accuracy": sum(prefer) / n,
            "pairs": len(kept)}


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the held-out preference accuracy before and after."""
    return f"held-out accuracy {metrics['eval_accuracy_before']:.2f} -> {metrics['eval_accuracy_after']:.2f}"


def describe(config: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the trainer ``method`` selects, the mixture and the expected steps and tokens."""
    from hfpipe.posttrain.trainer import describe_training

    return describe_training(config, TRAINERS[config.method], "pairs", tokens_per_row=2)
