"""preference: preference optimisation on chosen/rejected pairs with TRL: DPO, KTO or ORPO.

Run just this stage (the stages before it done): ``hfpipe run recipes/tiny.yaml --only preference``.

Reads the upstream model (or the recipe's base_model) and a weighted mixture of preference sets (TRL's preference
format, explicit or implicit prompt, conversational or plain text; hfpipe.posttrain.data). DPO and KTO train against a
frozen copy of the starting model (TRL builds the reference; DPO precomputes its log-probs once; KTO unpairs the pairs
into desirable/undesirable rows); ORPO needs no reference. Whatever the method, the same held-out numbers are measured
before and after training, so methods compare:

- ``eval_accuracy`` / ``eval_margin``: TRL's own evaluation (``eval_rewards/accuracies``, ``eval_rewards/margins``)
  of the policy on the held-out pairs with a fixed reference-free, length-normalised implicit reward (ORPO's,
  held_out_preferences): the share of pairs whose chosen answer the policy makes more likely per token, and beta x
  the mean per-token log-probability gap; near chance before training on real pairs, not 0 by construction. DPO also reports its own numbers against the starting model after
  training (``eval_accuracy_vs_start_after``, ``eval_margin_vs_start_after``);
- ``eval_loss``: the method's own held-out loss (TRL's evaluate);
- ``heldout_bpb_<domain>_before/after``: held-out bits per byte of the language model (hfpipe.posttrain.heldout),
  with ``heldout_bpb_max_rise`` as the recipe's limit.

Writes ``out_dir/model/`` with the tokenizer (chat template) unchanged, ``mixture.json`` and ``contamination.json``
(training pairs sharing an n-gram with the eval plan's items are dropped: hfpipe.posttrain.decontamination).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from hfpipe.errors import HfpipeError, first_line
from hfpipe.posttrain.heldout import bpb_metrics, check_bpb_rise, heldout_bpb
from hfpipe.posttrain.data import load_stage_mixture, mixture_files, mixture_pins, row_tools
from hfpipe.posttrain.templates import check_template  # the one chat-template contract
from hfpipe.posttrain.checkpoint import train_resumable
from hfpipe.posttrain.launch import is_main_process, shared_dataset
from hfpipe.posttrain.trainer import accelerate_files, launch_stage, launched
from hfpipe.posttrain.trainer import card_facts  # noqa: F401 (the stage's card hook: its curves)
from hfpipe.posttrain.trainer import (build_trl_config, check_finite, check_trainer_args, job_keys, mixture_keys,
                                      report_progress, resolve_precision, save_and_check, scoped_env,
                                      stop_on_non_finite, tracker_env, training_keys, trl_arguments)
from hfpipe.stages import Inputs, StageConfig

OUTPUTS = ("model/*",)  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("mixture.json", "trainer_config.json")
READS = ("model",)
RESUMABLE = True  # the trainer's complete checkpoints survive a crash or pre-emption; a re-run resumes from the last
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

    def to_trl(self, output_dir: str | Path | None = None):
        """The TRL config of ``method`` (trl.DPOConfig, KTOConfig or ORPOConfig) this section trains with (run()
        builds the same one); ``output_dir`` default runs/<name>/preference."""
        name, seed, _ = self.recipe_context()
        return build_trl_config("preference", trainer_classes(self.method)[1], trl_kwargs(
            self, Path(output_dir or f"runs/{name}/preference"), seed, name), None)


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    return mixture_files(config, recipe_dir, "preference") + accelerate_files("preference", config, recipe_dir)


def pins(config: Config, recipe_dir: Path) -> dict[str, dict]:
    return mixture_pins(config, recipe_dir, "preference")


def preflight(config: Config, recipe_dir: Path) -> None:
    """Before any stage of the run starts: the trackers are installed, every `preference.trainer` key is a field of
    the method's TRL config class."""
    from hfpipe.stages import check_trackers

    check_trackers(config.report_to, "preference.report_to")
    check_trainer_args("preference", trainer_classes(config.method)[1], config)


def trl_kwargs(config: Config, work_dir: Path, seed: int, recipe_name: str) -> dict:
    """The arguments of the method's TRL config (DPOConfig, KTOConfig, ORPOConfig) this section trains with: run()
    builds its config from them, and so do ``recipe.preference.to_trl()`` and ``hfpipe export`` (hfpipe.interop)."""
    return trl_arguments(config, work_dir, seed, run_name=f"{recipe_name}-preference", beta=config.beta,
                         **METHOD_ARGS[config.method])


def fitting(rows: list[dict], tokenizer, config: Config) -> list[dict]:
    """The rows whose templated prompt leaves room for answer tokens within max_length (else losses divide by zero
    tokens): what run() trains and scores on, and what ``hfpipe export`` writes."""

    def fits(row: dict) -> bool:
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True,
                                             tools=row_tools(row))
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) < config.max_length - 1

    return [r for r in rows if fits(r)]


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers

    from hfpipe.models import load_model_and_tokenizer

    if launched(config):  # num_processes > 1: `accelerate launch`, every rank runs this function
        return launch_stage("preference", config, inputs, out_dir)
    transformers.set_seed(inputs.seed)

    # ---------------------------------------------------------------- data: the weighted mixture of pairs, and each
    # set's held-out pairs
    mixture, key = load_stage_mixture(config, "preference", "preference", inputs.recipe_dir, inputs.seed)
    eval_rows = [r for rows in mixture.eval.values() for r in rows[: config.max_eval_pairs]]

    # ---------------------------------------------------------------- model + trainer (the reference is the starting
    # model, as TRL builds it)
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template
    check_template("preference", inputs, template_before, out_dir)  # = the tokenizer stage's, or fail naming both

    n_train, n_eval = len(mixture.train), len(eval_rows)
    mixture.train, eval_rows = fitting(mixture.train, tokenizer, config), fitting(eval_rows, tokenizer, config)
    if not mixture.train or not eval_rows:
        raise HfpipeError(f"{key}: every {'training' if not mixture.train else 'held-out'} prompt fills max_length="
                          f"{config.max_length} after templating, leaving no answer tokens; raise max_length", 2)
    bpb_before = heldout_bpb(model, tokenizer)  # the language model it starts from (hfpipe.posttrain.heldout)
    work_dir = out_dir / "trainer"
    common = trl_kwargs(config, work_dir, inputs.seed, inputs.recipe_name)
    try:
        trainer_class, config_class = trainer_classes(config.method)
        reference = {} if config.method == "orpo" else {"ref_model": None}  # TRL builds it from the model
        args = build_trl_config("preference", config_class, common, out_dir)
        train_ds, eval_ds = (shared_dataset(rows, work_dir / "datasets" / name)  # = Dataset.from_list in one process
                             for rows, name in ((mixture.train, "train"), (eval_rows, "eval")))
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

    # ---------------------------------------------------------------- train, with the method's held-out loss and
    # TRL's held-out preference evaluation before and after (the same for every method: held_out_preferences)
    judge = held_out_preferences(trainer.model, tokenizer, eval_ds, config, inputs.seed, work_dir / "judge")
    loss_before, before = trainer.evaluate()["eval_loss"], judge()
    transformers.set_seed(inputs.seed)  # scoring drew from the RNG: training starts from the seed alone, as `trl dpo`
    start = time.perf_counter()
    train_out, resumed_from = train_resumable(trainer, "preference", work_dir, config.keep_checkpoints,
                                              is_main_process())
    train_s = time.perf_counter() - start
    own_after = trainer.evaluate()
    loss_after, after = own_after["eval_loss"], judge()
    bpb_after = heldout_bpb(trainer.model, tokenizer)
    check_bpb_rise("preference", bpb_before, bpb_after, config.heldout_bpb_max_rise, config.heldout_bpb_action,
                   "preference.heldout_bpb_max_rise")
    # DPO's own numbers against its reference (the starting model; 0 before training by construction)
    vs_start = {f"eval_{k}_vs_start_after": own_after[f"eval_rewards/{m}"]
                for k, m in (("accuracy", "accuracies"), ("margin", "margins")) if f"eval_rewards/{m}" in own_after} \
        if config.method == "dpo" else {}
    metrics = {"eval_loss_before": loss_before, "eval_loss_after": loss_after,
               "eval_accuracy_before": before["accuracy"], "eval_accuracy_after": after["accuracy"],
               "eval_margin_before": before["margin"], "eval_margin_after": after["margin"], **vs_start,
               **bpb_metrics(bpb_before, bpb_after),
               "train_loss": train_out.training_loss, "train_steps": train_out.global_step,
               "train_pairs": len(mixture.train), "eval_pairs": len(eval_rows),
               "pairs_dropped_too_long": (n_train - len(mixture.train)) + (n_eval - len(eval_rows)),
               "train_pairs_per_s": round(train_out.global_step * config.per_device_batch_size
                                          * config.gradient_accumulation_steps / train_s, 2),
               "precision": resolve_precision(config.precision), "num_processes": config.num_processes,
               "gradient_checkpointing": config.gradient_checkpointing, "resumed_from_step": resumed_from}
    check_finite("preference", metrics, "learning_rate", config.learning_rate)
    metrics["mixture"] = mixture.summary()

    # ---------------------------------------------------------------- save + self-check: the policy (weights saved)
    # with the chat template exactly as it came
    if is_main_process():
        mixture.write_report(out_dir, "preference")
    save_and_check("preference", trainer.model, tokenizer, template_before, out_dir, work_dir)
    return metrics


def common_use_cpu() -> bool:
    """What trl_arguments gives every TRL config for use_cpu (True in ranks launched on a machine without CUDA)."""
    import torch

    from hfpipe.posttrain.launch import in_worker

    return in_worker() and not torch.cuda.is_available()


def held_out_preferences(model, tokenizer, eval_ds, config: Config, seed: int, work_dir: Path):
    """A function scoring ``model`` (as it is when called: before training, after) on the held-out pairs with TRL's
    own evaluation (``evaluate()``: ``eval_rewards/accuracies``, ``eval_rewards/margins``), the same for every
    method: ORPO's implicit reward, beta x the mean per-token log-probability of an answer, which is DPO's against a
    uniform reference with the answers' lengths divided out. Fixed before and after: accuracy = share of pairs whose
    chosen answer the policy finds more likely per token (near chance before training on real pairs, not 0 by
    construction as against DPO's own reference, the starting model), margin = beta x the mean per-token gap."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    precision = resolve_precision(config.precision)
    args = ORPOConfig(output_dir=str(work_dir), report_to="none", seed=seed, data_seed=seed, beta=config.beta,
                      max_length=config.max_length, per_device_train_batch_size=config.per_device_batch_size,
                      per_device_eval_batch_size=config.per_device_batch_size, bf16=precision == "bf16",
                      fp16=precision == "fp16", dataloader_pin_memory=False, save_strategy="no",
                      use_cpu=common_use_cpu())  # as the trainer's: a TrainingArguments resets accelerate's
    # shared state, and on CPU ranks (accelerate launch) only use_cpu keeps it distributed (gloo)
    judge = ORPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=eval_ds.select([0]),
                        eval_dataset=eval_ds)

    def score() -> dict[str, float]:
        out = judge.evaluate()
        return {"accuracy": out["eval_rewards/accuracies"], "margin": out["eval_rewards/margins"]}

    return score


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the held-out preference accuracy before and after."""
    return f"held-out accuracy {metrics['eval_accuracy_before']:.2f} -> {metrics['eval_accuracy_after']:.2f}"


def describe(config: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the trainer ``method`` selects, the mixture and the expected steps and tokens."""
    from hfpipe.posttrain.trainer import describe_training

    return describe_training(config, TRAINERS[config.method], "pairs", tokens_per_row=2, stage="preference",
                             recipe_dir=recipe.recipe_dir)
