"""sft: supervised fine-tuning on chat conversations with TRL's SFTTrainer (optionally LoRA/QLoRA, merged before saving).

Reads the upstream model (or the recipe's base_model), trains on a weighted mixture of conversation sets (TRL's
conversational or prompt-completion formats; hfpipe.chatdata), with loss on assistant tokens only, and measures the
held-out assistant loss before and after training: overall (the mean over the sets) and per set. Writes
``out_dir/model/`` with the tokenizer (and so the chat template) unchanged, and ``mixture.json`` (the achieved
mixture with each set's provenance).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from pydantic import Field, model_validator

from hfpipe.chatdata import HOLDOUT, DatasetSpec, check_one_data_source, load_mixture, spec_files
from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, StageConfig

READS = ("model",)
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


class Config(StageConfig):
    dataset: str = Field("hfpipe:sft_chat.jsonl", description="one training set (JSONL, 'messages' per line): "
                         "'hfpipe:<file>' for a bundled file, else a path relative to the recipe; ignored when "
                         "`datasets` is given")
    eval_dataset: str | None = Field("hfpipe:sft_chat_eval.jsonl", description="held-out conversations for `dataset`; "
                                     "null = hold out eval_fraction of it, grouped by first question")
    datasets: list[DatasetSpec] | None = Field(None, description="a weighted mixture instead of `dataset`: "
                                               "[{name: 'hfpipe:<file>' | Hub id, path: local file, weight, split, "
                                               "eval}]; see hfpipe/datasets/README.md for the bundled sets")
    mixture_rows: int | None = Field(None, ge=1, description="training rows drawn from the mixture; null = the sum of "
                                     "the sets' sizes")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                 description="share of a set held out when it has no held-out file or split")
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0, description="peak AdamW learning rate (linear decay)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; null = train num_train_epochs epochs")
    num_train_epochs: float = Field(1.0, gt=0.0, description="passes over the data when max_steps is null")
    per_device_batch_size: int = Field(8, ge=1, description="conversations (or packed rows) per forward pass")
    gradient_accumulation_steps: int = Field(1, ge=1, description="forward passes per optimizer step")
    max_length: int = Field(1024, ge=8, description="tokens per conversation (or packed row) after templating; "
                            "longer conversations are cut")
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

    @model_validator(mode="after")
    def _one_data_source(self):
        return check_one_data_source(self)


def dataset_specs(config) -> list[DatasetSpec]:
    """The mixture a post-training config names: `datasets`, or the single `dataset` (+ `eval_dataset`)."""
    if config.datasets is not None:
        return list(config.datasets)
    as_spec = {"name": config.dataset} if config.dataset.startswith("hfpipe:") else {"path": config.dataset}
    return [DatasetSpec(**as_spec, eval=config.eval_dataset or HOLDOUT)]


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    return [f for i, s in enumerate(dataset_specs(config)) for f in spec_files(s, recipe_dir, f"sft.datasets[{i}]")]


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from hfpipe.chatdata import training_chat_template
    from hfpipe.modeling import load_model_and_tokenizer, save_model

    transformers.set_seed(inputs.seed)

    # ---- data: the weighted mixture, and each set's held-out conversations ----
    specs = dataset_specs(config)
    key = "sft.datasets" if config.datasets is not None else "sft.dataset"
    mixture = load_mixture(specs, "conversation", inputs.recipe_dir, key, inputs.seed, config.eval_fraction,
                           config.mixture_rows)
    eval_sets = {label: rows[: config.max_eval_rows] for label, rows in mixture.eval.items()}

    # ---- model (QLoRA: a 4-bit copy) + a training chat template with {% generation %} markers ----
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template
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
    args = SFTConfig(
        output_dir=str(work_dir), report_to="none", save_strategy="no", logging_nan_inf_filter=False,
        seed=inputs.seed, data_seed=inputs.seed, bf16=False, activation_checkpointing=False,
        learning_rate=config.learning_rate, max_steps=config.max_steps or -1, num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_length=config.max_length,
        assistant_only_loss=config.assistant_only_loss, packing=config.packing, padding_free=config.padding_free,
        eval_packing=False,
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random",
    )
    try:
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                             train_dataset=Dataset.from_list(mixture.train),
                             eval_dataset={k: Dataset.from_list(v) for k, v in eval_sets.items()})
    except (RuntimeError, ValueError) as e:  # TRL: no assistant tokens after templating, or an unpatchable template
        first_line = str(e).strip().splitlines()[0]
        raise HfpipeError(f"sft: preparing {key} ({', '.join(eval_sets)}) failed: {first_line}", 2) from None
    for label, ds in (*trainer.eval_dataset.items(), ("(training mixture)", trainer.train_dataset)):
        if len(ds) == 0:
            raise HfpipeError(f"{key}: set '{label}': no conversation has assistant tokens within max_length="
                              f"{config.max_length} after templating; raise max_length", 2)

    # ---- train, with the held-out assistant loss (per set and their mean) measured before and after ----
    def held_out_losses() -> dict[str, float]:
        out = trainer.evaluate()
        return {label: out[f"eval_{label}_loss"] for label in eval_sets}

    before = held_out_losses()
    start = time.perf_counter()
    train_out = trainer.train()
    train_s = time.perf_counter() - start
    after = held_out_losses()
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    losses = {"eval_loss_before": mean(before), "train_loss": train_out.training_loss, "eval_loss_after": mean(after)}
    for name, value in losses.items():
        if not math.isfinite(value):
            raise HfpipeError(f"sft: {name} is {value}; lower learning_rate (now {config.learning_rate})", 1)
    train_tokens = int(trainer._total_train_tokens)

    # ---- save: merge LoRA, keep the tokenizer (chat template) exactly as it came ----
    if peft_config is None:
        model = trainer.model
    elif config.lora.load_in_4bit:
        model = _merge_into_full_precision(trainer.model, inputs, work_dir)
    else:
        model = trainer.model.merge_and_unload()
    tokenizer.chat_template = template_before
    folder = save_model(model, tokenizer, out_dir / "model")
    shutil.rmtree(work_dir, ignore_errors=True)  # nothing of the trainer's (pickled args, checkpoints) is kept
    (out_dir / "mixture.json").write_text(json.dumps(mixture.report, indent=2) + "\n")

    # ---- self-check: a plain model (weights, no adapter) whose tokenizer reads back the same chat template ----
    if not list(folder.glob("*.safetensors")) or (folder / "adapter_config.json").exists():
        raise HfpipeError(f"sft: {folder} does not hold a merged safetensors model", 1)
    if AutoTokenizer.from_pretrained(folder).chat_template != template_before:
        raise HfpipeError(f"sft: the chat template saved in {folder} differs from the input model's", 1)
    metrics = {**losses, "train_steps": train_out.global_step, "train_conversations": len(mixture.train),
               "eval_conversations": sum(len(v) for v in eval_sets.values()),
               "train_sequences": len(trainer.train_dataset), "train_tokens": train_tokens,
               "train_tokens_per_s": round(train_tokens / train_s, 1), "lora": config.lora is not None}
    if len(eval_sets) > 1:
        metrics["eval_loss_by_set"] = {k: f"{before[k]:.3f} -> {after[k]:.3f}" for k in eval_sets}
    metrics["mixture"] = mixture.summary()
    return metrics


def _quantized_copy(inputs: Inputs):
    """The starting model loaded in 4-bit NF4 for QLoRA; a clear error where bitsandbytes or a GPU is missing."""
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hfpipe.modeling import resolve_base_model

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise HfpipeError("sft.lora.load_in_4bit: QLoRA needs bitsandbytes and a CUDA GPU (found: bitsandbytes "
                          f"{'yes' if importlib.util.find_spec('bitsandbytes') else 'no'}, CUDA "
                          f"{'yes' if torch.cuda.is_available() else 'no'}); set load_in_4bit: false for plain LoRA", 2)
    where = inputs.model_dir() or resolve_base_model(inputs.base_model, inputs)
    if inputs.model_dir() is None and inputs.base_model.gguf_file:
        raise HfpipeError("sft.lora.load_in_4bit: a GGUF base_model cannot be re-quantized to 4-bit; use plain LoRA", 2)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(where, quantization_config=bnb, device_map={"": 0})


def _merge_into_full_precision(peft_model, inputs: Inputs, work_dir: Path):
    """QLoRA: adapters trained on the 4-bit copy are merged into the full-precision starting weights."""
    from peft import PeftModel

    from hfpipe.modeling import load_model_and_tokenizer

    adapter_dir = work_dir / "adapter"
    peft_model.save_pretrained(adapter_dir)
    base, _ = load_model_and_tokenizer(inputs)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
