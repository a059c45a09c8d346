"""sft: supervised fine-tuning on chat conversations with TRL's SFTTrainer (optionally LoRA/QLoRA, merged before saving).

Run just this stage (the stages before it done): ``hfpipe run recipes/tiny.yaml --only sft``.

Reads the upstream model (or the recipe's base_model), trains on a weighted mixture of conversation sets (TRL's
conversational or prompt-completion formats; hfpipe.posttrain.data), with loss on assistant tokens only, and measures
the held-out assistant loss before and after training: overall (the mean over the sets) and per set. Writes
``out_dir/model/`` with the tokenizer (and so the chat template) unchanged, and ``mixture.json`` (the achieved mixture
with each set's provenance). """

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from hfpipe.errors import HfpipeError, first_line
from hfpipe.posttrain.heldout import bpb_metrics, check_bpb_rise, heldout_bpb
from hfpipe.posttrain.data import load_stage_mixture, mixture_files, mixture_pins
from hfpipe.posttrain.templates import check_template  # the one chat-template contract
from hfpipe.posttrain.trainer import card_facts  # noqa: F401 (the stage's card hook: its curves)
from hfpipe.posttrain.checkpoint import train_resumable
from hfpipe.posttrain.launch import is_main_process
from hfpipe.posttrain.trainer import accelerate_files, launch_stage, launched
from hfpipe.posttrain.trainer import (build_trl_config, check_finite, check_trainer_args, job_keys, mixture_keys,
                                      report_progress, resolve_precision, save_and_check, scoped_env,
                                      stop_on_non_finite, tracker_env, training_keys, trl_arguments)
from hfpipe.stages import Inputs, StageConfig

OUTPUTS = ("model/*",)  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("mixture.json", "trainer_config.json")
READS = ("model",)
RESUMABLE = True  # the trainer's complete checkpoints survive a crash or pre-emption; a re-run resumes from the last
CARD = {"name": "Supervised fine-tuning (TRL SFTTrainer)", "paper": "https://arxiv.org/abs/2203.02155",
        "citation": "Ouyang et al. 2022, Training language models to follow instructions with human feedback"}


class LoraSettings(StageConfig):
    """Low-rank adapters (PEFT); merged into the weights before saving, so the output is a plain model."""

    r: int = Field(8, ge=1, le=4096, description="adapter rank: capacity of the update")
    alpha: int = Field(16, ge=1, description="scaling numerator (update is scaled by alpha/r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] | str = Field("all-linear", description="module names to adapt; 'all-linear' = every "
                                            "linear layer except the output head")
    load_in_4bit: bool = Field(False, description="QLoRA: train the adapters on a 4-bit NF4 copy of the model "
                               "(bitsandbytes + a CUDA GPU); the adapters are merged into the full-precision weights")


# The section's keys, in recipe order: the data and training keys every mixture stage has, worded for
# conversations (hfpipe.posttrain.trainer), then sft's own (Config).
_DATA = mixture_keys(StageConfig, ("hfpipe:sft_chat.jsonl", "hfpipe:sft_chat_eval.jsonl"),
                     file_format="JSONL, 'messages' per line", rows="rows", held_out="conversations",
                     grouped_by="first question")
_TRAINING = training_keys(_DATA, 2e-5, over="data",
                          batch=Field(8, ge=1, description="conversations (or packed rows) per forward pass"),
                          length=Field(1024, ge=8, description="tokens per conversation (or packed row) after "
                                       "templating; longer conversations are cut"))


class Config(job_keys(_TRAINING)):
    assistant_only_loss: bool = Field(True, description="loss only on assistant tokens (the template's "
                                      "{% generation %} spans); false = loss on the whole conversation")
    packing: bool = Field(False, description="pack conversations into max_length rows (TRL best-fit decreasing; "
                          "attention stays within each conversation)")
    padding_free: bool = Field(False, description="concatenate each batch into one row without padding (flash "
                               "attention only; implied by packing)")
    group_by_length: bool = Field(True, description="padded batches of conversations of similar length (transformers' "
                                  "LengthGroupedSampler): measured 0.57-0.60x pretraining tokens/s on CPU vs 0.29x "
                                  "with random batches (benchmarks/bench_posttrain.py); false = random batches")
    max_eval_rows: int | None = Field(None, ge=1, description="held-out rows per set used for the before/after loss; "
                                      "null = all (cheaper evals on big sets)")
    lora: LoraSettings | None = Field(None, description="LoRA adapters instead of full fine-tuning; null = full")

    def to_trl(self, output_dir: str | Path | None = None):
        """The trl.SFTConfig this section trains with (run() builds the same one); ``output_dir`` default
        runs/<name>/sft."""
        from trl import SFTConfig

        name, seed, _ = self.recipe_context()
        return build_trl_config("sft", SFTConfig, trl_kwargs(self, Path(output_dir or f"runs/{name}/sft"), seed, name),
                                None)


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    return mixture_files(config, recipe_dir, "sft") + accelerate_files("sft", config, recipe_dir)


def trl_kwargs(config: Config, work_dir: Path, seed: int, recipe_name: str) -> dict:
    """The arguments of the trl.SFTConfig this section trains with: run() builds its config from them, and so do
    ``recipe.sft.to_trl()`` and ``hfpipe export --to trl`` (hfpipe.interop)."""
    return trl_arguments(
        config, work_dir, seed, run_name=f"{recipe_name}-sft",
        assistant_only_loss=config.assistant_only_loss, packing=config.packing, padding_free=config.padding_free,
        eval_packing=False,
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random")


def pins(config: Config, recipe_dir: Path) -> dict[str, dict]:
    return mixture_pins(config, recipe_dir, "sft")


def preflight(config: Config, recipe_dir: Path) -> None:
    """Before any stage of the run starts: the trackers are installed, every `sft.trainer` key is an SFTConfig field."""
    from trl import SFTConfig

    from hfpipe.stages import check_trackers

    check_trackers(config.report_to, "sft.report_to")
    check_trainer_args("sft", SFTConfig, config)


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from hfpipe.models import load_model_and_tokenizer
    from hfpipe.posttrain.templates import training_chat_template

    if launched(config):  # num_processes > 1: `accelerate launch`, every rank runs this function
        return launch_stage("sft", config, inputs, out_dir)
    transformers.set_seed(inputs.seed)

    # ---------------------------------------------------------------- data: the weighted mixture, and each set's
    # held-out conversations
    mixture, key = load_stage_mixture(config, "sft", "conversation", inputs.recipe_dir, inputs.seed)
    eval_sets = {label: rows[: config.max_eval_rows] for label, rows in mixture.eval.items()}

    # ---------------------------------------------------------------- model (QLoRA: a 4-bit copy) + a training chat
    # template with {% generation %} markers
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template
    check_template("sft", inputs, template_before, out_dir)  # = the tokenizer stage's, or fail naming both
    bpb_before = heldout_bpb(model, tokenizer)  # the language model it starts from (hfpipe.posttrain.heldout)
    if config.assistant_only_loss:
        tokenizer.chat_template = training_chat_template(tokenizer, "sft.assistant_only_loss")
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig as PeftLoraConfig

        peft_config = PeftLoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                                     target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
        if config.lora.load_in_4bit:
            model = _quantized_copy(inputs)
    work_dir = out_dir / "trainer"
    args = build_trl_config("sft", SFTConfig, trl_kwargs(config, work_dir, inputs.seed, inputs.recipe_name), out_dir)
    try:
        with scoped_env(tracker_env(out_dir, config.report_to)):
            trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                                 train_dataset=Dataset.from_list(mixture.train),
                                 eval_dataset={k: Dataset.from_list(v) for k, v in eval_sets.items()},
                                 callbacks=[stop_on_non_finite("sft", "sft.learning_rate"),
                                            report_progress("training")])
    except (RuntimeError, ValueError) as e:  # TRL: no assistant tokens after templating, or an unpatchable template
        raise HfpipeError(f"sft: preparing {key} ({', '.join(eval_sets)}) failed: {first_line(e)}", 2) from None
    for label, ds in (*trainer.eval_dataset.items(), ("(training mixture)", trainer.train_dataset)):
        if len(ds) == 0:
            raise HfpipeError(f"{key}: set '{label}': no conversation has assistant tokens within max_length="
                              f"{config.max_length} after templating; raise max_length", 2)

    # ---------------------------------------------------------------- train, with the held-out assistant loss (per set
    # and their mean) measured before and after
    def held_out_losses() -> dict[str, float]:
        out = trainer.evaluate()
        return {label: out[f"eval_{label}_loss"] for label in eval_sets}

    before = held_out_losses()
    transformers.set_seed(inputs.seed)  # scoring drew from the RNG: training starts from the seed alone, as `trl sft`
    start = time.perf_counter()
    train_out, resumed_from = train_resumable(trainer, "sft", work_dir, config.keep_checkpoints, is_main_process())
    train_s = time.perf_counter() - start
    after = held_out_losses()
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    losses = {"eval_loss_before": mean(before), "train_loss": train_out.training_loss, "eval_loss_after": mean(after)}
    check_finite("sft", losses, "learning_rate", config.learning_rate)
    train_tokens = int(trainer._total_train_tokens)

    # ---------------------------------------------------------------- save + self-check: merge LoRA; a plain model
    # (weights, no adapter) with the chat template as it came
    if peft_config is None:
        model = trainer.model
    elif config.lora.load_in_4bit:
        model = _merge_into_full_precision(trainer.model, inputs, work_dir)
    else:
        model = trainer.model.merge_and_unload()
    bpb_after = heldout_bpb(model, tokenizer)
    check_bpb_rise("sft", bpb_before, bpb_after, config.heldout_bpb_max_rise, config.heldout_bpb_action,
                   "sft.heldout_bpb_max_rise")
    if is_main_process():
        mixture.write_report(out_dir, "sft")
    save_and_check("sft", model, tokenizer, template_before, out_dir, work_dir, merged=True)
    metrics = {**losses, "train_steps": train_out.global_step, "train_conversations": len(mixture.train),
               "eval_conversations": sum(len(v) for v in eval_sets.values()),
               "train_sequences": len(trainer.train_dataset), "train_tokens": train_tokens,
               "train_tokens_per_s": round(train_tokens / train_s, 1), "lora": config.lora is not None,
               "precision": resolve_precision(config.precision), "num_processes": config.num_processes,
               "gradient_checkpointing": config.gradient_checkpointing, "resumed_from_step": resumed_from,
               **bpb_metrics(bpb_before, bpb_after)}
    if len(eval_sets) > 1:
        metrics["eval_loss_by_set"] = {k: f"{before[k]:.3f} -> {after[k]:.3f}" for k in eval_sets}
    metrics["mixture"] = mixture.summary()
    return metrics


def _quantized_copy(inputs: Inputs):
    """The starting model loaded in 4-bit NF4 for QLoRA; a clear error where bitsandbytes or a GPU is missing."""
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    from hfpipe.models import load_model_and_tokenizer, model_location

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise HfpipeError("sft.lora.load_in_4bit: QLoRA needs bitsandbytes and a CUDA GPU (found: bitsandbytes "
                          f"{'yes' if importlib.util.find_spec('bitsandbytes') else 'no'}, CUDA "
                          f"{'yes' if torch.cuda.is_available() else 'no'}); set load_in_4bit: false for plain LoRA", 2)
    if "gguf_file" in model_location(inputs)[1]:
        raise HfpipeError("sft.lora.load_in_4bit: a GGUF base_model cannot be re-quantized to 4-bit; use plain LoRA", 2)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    # the one loader every stage uses: the base_model's revision and trust_remote_code, its error and vocabulary checks
    return load_model_and_tokenizer(inputs, quantization_config=bnb, device_map={"": 0})[0]


def _merge_into_full_precision(peft_model, inputs: Inputs, work_dir: Path):
    """QLoRA: adapters trained on the 4-bit copy are merged into the full-precision starting weights."""
    from peft import PeftModel

    from hfpipe.models import load_model_and_tokenizer

    adapter_dir = work_dir / "adapter"
    peft_model.save_pretrained(adapter_dir)
    base, _ = load_model_and_tokenizer(inputs)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the held-out assistant loss before and after."""
    return f"held-out loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss_after']:.3f}"


def describe(config: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the trainer, the mixture and the expected steps and tokens."""
    from hfpipe.posttrain.trainer import describe_training

    return describe_training(config, "trl.SFTTrainer", "sequences", stage="sft", recipe_dir=recipe.recipe_dir)
