"""preference: preference optimisation on chosen/rejected pairs with TRL (DPO for now).

Reads the upstream model (or the recipe's base_model), trains it to prefer `chosen` over `rejected` relative to a frozen
copy of itself (the reference), measures held-out preference accuracy and reward margin before and after, and writes
``out_dir/model/`` with the tokenizer (and so the chat template) unchanged.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from hfpipe.chatdata import load_preferences, resolve_dataset, split_holdout
from hfpipe.errors import HfpipeError
from hfpipe.stages import Inputs, StageConfig

READS = ("model",)
CARD = {"name": "Direct Preference Optimization (TRL DPOTrainer)", "paper": "https://arxiv.org/abs/2305.18290",
        "citation": "Rafailov et al. 2023, Direct Preference Optimization: "
                    "Your Language Model is Secretly a Reward Model"}


class Config(StageConfig):
    method: Literal["dpo"] = Field("dpo", description="preference objective (DPO: sigmoid loss on reward margins)")
    dataset: str = Field("hfpipe:preference_pairs.jsonl", description="training pairs (JSONL with prompt/chosen/"
                         "rejected): 'hfpipe:<file>' for a bundled file, else a path relative to the recipe")
    eval_dataset: str | None = Field("hfpipe:preference_pairs_eval.jsonl", description="held-out pairs; null = hold "
                                     "out eval_fraction of `dataset`, grouped by prompt")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0,
                                 description="share of `dataset` held out when eval_dataset is null")
    beta: float = Field(0.1, gt=0.0, le=10.0, description="DPO temperature: how far the policy may move from the "
                        "reference (higher = stays closer)")
    learning_rate: float = Field(1e-6, gt=0.0, le=1.0, description="peak AdamW learning rate (linear decay)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; null = train num_train_epochs epochs")
    num_train_epochs: float = Field(1.0, gt=0.0, description="passes over the pairs when max_steps is null")
    per_device_batch_size: int = Field(8, ge=1, description="pairs per forward pass (train and eval)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="forward passes per optimizer step")
    max_length: int = Field(1024, ge=8, description="tokens of prompt + answer; longer pairs are cut at the end")


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    names = [("preference.dataset", config.dataset)]
    if config.eval_dataset:
        names.append(("preference.eval_dataset", config.eval_dataset))
    return [resolve_dataset(name, recipe_dir, key) for key, name in names]


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers
    from transformers import AutoTokenizer
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from hfpipe.modeling import load_model_and_tokenizer, save_model

    transformers.set_seed(inputs.seed)

    # ---- data: validated preference pairs, train and held-out ----
    train_path = resolve_dataset(config.dataset, inputs.recipe_dir, "preference.dataset")
    train_rows = load_preferences(train_path)
    if config.eval_dataset is None:
        eval_path = train_path
        train_rows, eval_rows = split_holdout(train_rows, config.eval_fraction, "prompt")
    else:
        eval_path = resolve_dataset(config.eval_dataset, inputs.recipe_dir, "preference.eval_dataset")
        eval_rows = load_preferences(eval_path)
    if not train_rows or not eval_rows:
        raise HfpipeError(f"preference: {train_path}: holding out eval_fraction={config.eval_fraction} left "
                          f"{len(train_rows)} train / {len(eval_rows)} eval pairs; change eval_fraction", 2)

    # ---- model + trainer (the reference is the starting model: TRL precomputes its log-probs once) ----
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template
    work_dir = out_dir / "trainer"
    args = DPOConfig(
        output_dir=str(work_dir), report_to="none", save_strategy="no", logging_nan_inf_filter=False,
        seed=inputs.seed, data_seed=inputs.seed, bf16=False, activation_checkpointing=False,
        precompute_ref_log_probs=True,
        loss_type=["sigmoid"], beta=config.beta, learning_rate=config.learning_rate,
        max_steps=config.max_steps or -1, num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_length=config.max_length,
    )
    try:
        trainer = DPOTrainer(model=model, ref_model=None, args=args, processing_class=tokenizer,
                             train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows))
    except (RuntimeError, ValueError) as e:  # TRL/template problems while tokenizing the pairs
        first_line = str(e).strip().splitlines()[0]
        raise HfpipeError(f"preference: preparing {train_path} / {eval_path} failed: {first_line}", 2) from None
    for path, ds in ((train_path, trainer.train_dataset), (eval_path, trainer.eval_dataset)):
        if len(ds) == 0:
            raise HfpipeError(f"preference: {path}: every prompt fills max_length={config.max_length} after "
                              "templating, leaving no answer tokens; raise max_length", 2)

    # ---- train, with held-out preference accuracy and reward margin before and after ----
    before = trainer.evaluate()
    train_out = trainer.train()
    after = trainer.evaluate()
    metrics = {"eval_loss_before": before["eval_loss"], "eval_loss_after": after["eval_loss"],
               "eval_accuracy_before": before["eval_rewards/accuracies"],
               "eval_accuracy_after": after["eval_rewards/accuracies"],
               "eval_margin_before": before["eval_rewards/margins"], "eval_margin_after": after["eval_rewards/margins"],
               "train_loss": train_out.training_loss, "train_steps": train_out.global_step,
               "train_pairs": len(trainer.train_dataset), "eval_pairs": len(trainer.eval_dataset)}
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise HfpipeError(f"preference: {name} is {value}; lower learning_rate (now {config.learning_rate})", 1)

    # ---- save: the policy, with the tokenizer (chat template) exactly as it came ----
    tokenizer.chat_template = template_before
    folder = save_model(trainer.model, tokenizer, out_dir / "model")
    shutil.rmtree(work_dir, ignore_errors=True)  # nothing of the trainer's (pickled args, checkpoints) is kept

    # ---- self-check: weights saved, and the tokenizer reads back the same chat template ----
    if not list(folder.glob("*.safetensors")):
        raise HfpipeError(f"preference: {folder} holds no safetensors weights", 1)
    if AutoTokenizer.from_pretrained(folder).chat_template != template_before:
        raise HfpipeError(f"preference: the chat template saved in {folder} differs from the input model's", 1)
    return metrics

