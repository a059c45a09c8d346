"""sft: supervised fine-tuning on chat conversations with TRL's SFTTrainer (optionally LoRA, merged before saving).

Reads the upstream model (or the recipe's base_model), trains on {"messages": [...]} rows, measures the held-out
loss on assistant tokens before and after training, and writes ``out_dir/model/`` with the tokenizer (and so the chat
template) unchanged.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from pydantic import Field

from hfpipe.chatdata import load_conversations, resolve_dataset, split_holdout
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


class Config(StageConfig):
    dataset: str = Field("hfpipe:sft_chat.jsonl", description="training conversations (JSONL, 'messages' per line): "
                         "'hfpipe:<file>' for a bundled file, else a path relative to the recipe")
    eval_dataset: str | None = Field("hfpipe:sft_chat_eval.jsonl", description="held-out conversations; null = hold "
                                     "out eval_fraction of `dataset`, grouped by first question")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                 description="share of `dataset` held out when eval_dataset is null")
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0, description="peak AdamW learning rate (linear decay)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; null = train num_train_epochs epochs")
    num_train_epochs: float = Field(1.0, gt=0.0, description="passes over the data when max_steps is null")
    per_device_batch_size: int = Field(8, ge=1, description="conversations per forward pass (train and eval)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="forward passes per optimizer step")
    max_length: int = Field(1024, ge=8, description="tokens per conversation after templating; longer ones are cut")
    assistant_only_loss: bool = Field(True, description="loss only on assistant tokens (the template's "
                                      "{% generation %} spans); false = loss on the whole conversation")
    packing: bool = Field(False, description="pack conversations into max_length rows (TRL best-fit decreasing; "
                          "attention stays within each conversation)")
    lora: LoraSettings | None = Field(None, description="LoRA adapters instead of full fine-tuning; null = full")


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    names = [("sft.dataset", config.dataset)]
    if config.eval_dataset:
        names.append(("sft.eval_dataset", config.eval_dataset))
    return [resolve_dataset(name, recipe_dir, key) for key, name in names]


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers
    from transformers import AutoTokenizer
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from hfpipe.modeling import load_model_and_tokenizer, save_model

    transformers.set_seed(inputs.seed)

    # ---- data: validated conversations, train and held-out ----
    train_path = resolve_dataset(config.dataset, inputs.recipe_dir, "sft.dataset")
    train_rows = load_conversations(train_path)
    if config.eval_dataset is None:
        eval_path = train_path
        train_rows, eval_rows = split_holdout(train_rows, config.eval_fraction, "messages")
    else:
        eval_path = resolve_dataset(config.eval_dataset, inputs.recipe_dir, "sft.eval_dataset")
        eval_rows = load_conversations(eval_path)
    if not train_rows or not eval_rows:
        raise HfpipeError(f"sft: {train_path}: holding out eval_fraction={config.eval_fraction} left "
                          f"{len(train_rows)} train / {len(eval_rows)} eval conversations; change eval_fraction", 2)

    # ---- model + trainer ----
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig as PeftLoraConfig

        peft_config = PeftLoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                                     target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
    work_dir = out_dir / "trainer"
    args = SFTConfig(
        output_dir=str(work_dir), report_to="none", save_strategy="no", logging_nan_inf_filter=False,
        seed=inputs.seed, data_seed=inputs.seed, bf16=False, activation_checkpointing=False,
        learning_rate=config.learning_rate, max_steps=config.max_steps or -1, num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_length=config.max_length,
        assistant_only_loss=config.assistant_only_loss, packing=config.packing,
    )
    try:
        trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                             train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows))
    except (RuntimeError, ValueError) as e:  # TRL: no assistant tokens after templating, or an unpatchable template
        first_line = str(e).strip().splitlines()[0]
        raise HfpipeError(f"sft: preparing {train_path} / {eval_path} failed: {first_line}", 2) from None
    for path, ds in ((train_path, trainer.train_dataset), (eval_path, trainer.eval_dataset)):
        if len(ds) == 0:
            raise HfpipeError(f"sft: {path}: no conversation has assistant tokens within max_length="
                              f"{config.max_length} after templating; raise max_length", 2)

    # ---- train, with the held-out assistant loss measured before and after ----
    before = trainer.evaluate()["eval_loss"]
    train_out = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = {"eval_loss_before": before, "train_loss": train_out.training_loss, "eval_loss_after": after}
    for name, value in losses.items():
        if not math.isfinite(value):
            raise HfpipeError(f"sft: {name} is {value}; lower learning_rate (now {config.learning_rate})", 1)

    # ---- save: merge LoRA, keep the tokenizer (chat template) exactly as it came ----
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    tokenizer.chat_template = template_before
    folder = save_model(model, tokenizer, out_dir / "model")
    shutil.rmtree(work_dir, ignore_errors=True)  # nothing of the trainer's (pickled args, checkpoints) is kept

    # ---- self-check: a plain model (weights, no adapter) whose tokenizer reads back the same chat template ----
    if not list(folder.glob("*.safetensors")) or (folder / "adapter_config.json").exists():
        raise HfpipeError(f"sft: {folder} does not hold a merged safetensors model", 1)
    if AutoTokenizer.from_pretrained(folder).chat_template != template_before:
        raise HfpipeError(f"sft: the chat template saved in {folder} differs from the input model's", 1)
    return {"eval_loss_before": before, "eval_loss_after": after, "train_loss": train_out.training_loss,
            "train_steps": train_out.global_step, "train_conversations": len(train_rows),
            "eval_conversations": len(eval_rows), "train_sequences": len(trainer.train_dataset),
            "lora": config.lora is not None}

