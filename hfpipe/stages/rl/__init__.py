"""rl: RLHF with TRL -- a reward model trained on preference pairs, then GRPO or RLOO on prompts.

Run just this stage (the stages before it done): ``hfpipe run recipes/tiny.yaml --only rl``.

Phase 1 trains a reward model (TRL RewardTrainer: the upstream model with a one-output classification head) on
chosen/rejected pairs and measures held-out pairwise accuracy before and after; it is saved in
``out_dir/reward_model/``. Phase 2 optimises the upstream policy on prompts (TRL GRPOTrainer or RLOOTrainer) against a
weighted sum of the reward model and/or verifiable rewards (hfpipe/stages/rl/rewards.py: answer correctness, valid JSON,
valid tool call), and measures the mean reward on held-out prompts before and after. The policy is written to
``out_dir/model/`` with the tokenizer (and so the chat template) unchanged.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hfpipe.errors import HfpipeError, first_line
from hfpipe.posttrain.data import load_preferences, load_split, resolve_dataset
from hfpipe.posttrain.trainer import card_facts  # noqa: F401 (the stage's card hook: its curves)
from hfpipe.posttrain.trainer import (build_trl_config, check_finite, check_trainer_args, epochs_key, job_keys,
                                      learning_rate_key, max_steps_key, report_progress, resolve_precision,
                                      save_and_check, scoped_env, stop_on_non_finite, tracker_env, trl_arguments)
from hfpipe.stages import Inputs, StageConfig
from hfpipe.stages.rl import rewards

OUTPUTS = ("model/*", "reward_model/*")  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("trainer_config.json", "reward_model_trainer_config.json")
READS = ("model",)
CARD = {"name": "RLHF: reward model (TRL RewardTrainer) + GRPO / RLOO (TRL)",
        "paper": "https://arxiv.org/abs/2402.03300",
        "citation": "Shao et al. 2024, DeepSeekMath (GRPO); Ahmadian et al. 2024, Back to Basics: Revisiting "
                    "REINFORCE Style Optimization for Learning from Human Feedback in LLMs (RLOO)"}


class RewardModelSettings(StageConfig):
    """Phase 1: a Bradley-Terry reward model on preference pairs (TRL RewardTrainer)."""

    dataset: str = Field("hfpipe:rl_pairs.jsonl", description="training pairs (JSONL with prompt/chosen/rejected): "
                         "'hfpipe:<file>' for a bundled file (rl_pairs: the right answer in the right form preferred, "
                         "on the rl prompts), else a path relative to the recipe")
    eval_dataset: str | None = Field("hfpipe:rl_pairs_eval.jsonl", description="held-out pairs; null = hold out "
                                     "eval_fraction of `dataset`, grouped by prompt")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of `dataset` held out when eval_dataset "
                                 "is null")
    learning_rate: float = learning_rate_key(1e-5)
    max_steps: int | None = max_steps_key()
    num_train_epochs: float = epochs_key("pairs")
    per_device_batch_size: int = Field(8, ge=1, description="pairs per forward pass (train and eval)")
    max_length: int = Field(512, ge=8, description="tokens of prompt + answer; longer pairs are dropped (TRL)")
    trainer: dict[str, Any] = Field(default_factory=dict, description="more arguments of trl.RewardConfig, passed as "
                                    "they are; checked against its fields before the run starts")
    center_rewards_coefficient: float | None = Field(None, ge=0.0, description="weight of a penalty on mean reward^2 "
                                                     "that keeps scores near 0 (TRL; 0.01 recommended); null = none")


class RewardSpec(StageConfig):
    name: str = Field(description="'reward_model' (phase 1's model) or a verifiable reward: exact_answer, "
                      "answer_similarity, valid_json, valid_tool_call (see hfpipe/stages/rl/rewards.py)")
    weight: float = Field(1.0, description="multiplier in the summed reward (TRL reward_weights)")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return rewards.check_name(v)


class Config(job_keys(StageConfig)):
    reward_model: RewardModelSettings | None = Field(default_factory=RewardModelSettings, description="phase 1; "
                                                     "null = no reward model (then only verifiable rewards)")
    algorithm: Literal["grpo", "rloo"] = Field("grpo", description="policy optimiser: GRPO (group-normalised "
                                               "advantages) or RLOO (leave-one-out baseline)")
    dataset: str = Field("hfpipe:rl_prompts.jsonl", description="training prompts (JSONL, see hfpipe/stages/rl/"
                         "rewards.py): 'hfpipe:<file>' for a bundled file, else a path relative to the recipe")
    eval_dataset: str | None = Field("hfpipe:rl_prompts_eval.jsonl", description="held-out prompts for the mean "
                                     "reward before/after; null = hold out eval_fraction of `dataset`")
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of `dataset` held out when eval_dataset "
                                 "is null")
    eval_prompts: int | None = Field(None, ge=1, description="held-out prompts scored before and after (the first N); "
                                     "null = all")
    tasks: list[str] | None = Field(None, description="keep only prompts whose 'task' is listed (train and held-out); "
                                    "null = all")
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="reward_model")], min_length=1,
                                      description="reward functions and weights, summed per completion")
    learning_rate: float = learning_rate_key(1e-6)
    max_steps: int = Field(100, ge=1, description="optimizer steps (each samples fresh completions)")
    per_device_batch_size: int = Field(8, ge=2, description="completions per step (= prompts x num_generations)")
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt; advantages compare them")
    max_completion_length: int = Field(64, ge=1, description="tokens generated per completion (CPU cost grows "
                                       "linearly)")
    temperature: float = Field(1.0, gt=0.0, le=10.0, description="sampling temperature for the completions")
    beta: float = Field(0.0, ge=0.0, description="KL penalty towards the starting policy; 0 = no reference model")
    num_iterations: int = Field(1, ge=1, description="optimizer passes per batch of completions (PPO-style reuse)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.per_device_batch_size % self.num_generations:
            raise ValueError(f"per_device_batch_size ({self.per_device_batch_size}) must be a multiple of "
                             f"num_generations ({self.num_generations})")
        if self.reward_model is None and any(r.name == rewards.REWARD_MODEL for r in self.rewards):
            raise ValueError("rewards lists 'reward_model' but reward_model is null")
        return self


def preflight(config: Config, recipe_dir: Path) -> None:
    """Before any stage of the run starts: the trackers are installed, every `rl.trainer` key is a field of the
    policy trainer's config class and every `rl.reward_model.trainer` key one of trl.RewardConfig."""
    from trl import GRPOConfig, RewardConfig, RLOOConfig

    from hfpipe.stages import check_trackers

    check_trackers(config.report_to, "rl.report_to")
    check_trainer_args("rl", GRPOConfig if config.algorithm == "grpo" else RLOOConfig, config)
    if config.reward_model is not None:
        check_trainer_args("rl.reward_model", RewardConfig, config.reward_model)


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    names = [("rl.dataset", config.dataset)] + ([("rl.eval_dataset", config.eval_dataset)] if config.eval_dataset
                                                else [])
    if config.reward_model is not None:
        rm = config.reward_model
        names += [("rl.reward_model.dataset", rm.dataset)] + (
            [("rl.reward_model.eval_dataset", rm.eval_dataset)] if rm.eval_dataset else [])
    return [resolve_dataset(name, recipe_dir, key) for key, name in names]


def train_reward_model(rm: RewardModelSettings, job: Config, inputs: Inputs, out_dir: Path) -> dict:
    """Phase 1: RewardTrainer on preference pairs; held-out pairwise accuracy before/after; saved to reward_model/."""
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from hfpipe.models import load_tokenizer, model_location, save_model

    train_rows, eval_rows, train_path, eval_path = load_split(
        rm.dataset, rm.eval_dataset, inputs.recipe_dir, "rl.reward_model", load_preferences, rm.eval_fraction)
    if not train_rows or not eval_rows:
        raise HfpipeError(f"rl: {train_path}: holding out eval_fraction={rm.eval_fraction} left {len(train_rows)} "
                          f"train / {len(eval_rows)} eval pairs; change rl.reward_model.eval_fraction", 2)

    transformers.set_seed(inputs.seed)  # the classification head is freshly initialised
    where, kwargs = model_location(inputs, "rl")
    tokenizer = load_tokenizer(where, **kwargs)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=1, **kwargs)
    except (OSError, ValueError) as e:
        raise HfpipeError(f"rl: the upstream model ({where}) has no sequence-classification form for a reward "
                          f"model: {first_line(e)}", 1) from None
    work_dir = out_dir / "rm_trainer"
    args = build_trl_config("rl.reward_model", RewardConfig, trl_arguments(
        rm, work_dir, inputs.seed, job=job, run_name=f"{inputs.recipe_name}-rl-reward-model",
        center_rewards_coefficient=rm.center_rewards_coefficient), out_dir, "reward_model_trainer_config.json")
    try:
        with scoped_env(tracker_env(out_dir, job.report_to)):
            trainer = RewardTrainer(model=model, args=args, processing_class=tokenizer,
                                    train_dataset=Dataset.from_list(train_rows),
                                    eval_dataset=Dataset.from_list(eval_rows),
                                    callbacks=[stop_on_non_finite("rl.reward_model", "rl.reward_model.learning_rate"),
                                               report_progress("training the reward model")])
    except (RuntimeError, ValueError) as e:
        raise HfpipeError(f"rl: preparing reward-model pairs {train_path} / {eval_path} failed: {first_line(e)}",
                          2) from None
    for path, ds in ((train_path, trainer.train_dataset), (eval_path, trainer.eval_dataset)):
        if len(ds) == 0:
            raise HfpipeError(f"rl: {path}: every pair is longer than rl.reward_model.max_length={rm.max_length} "
                              "tokens after templating; raise it", 2)

    before = trainer.evaluate()
    train_out = trainer.train()
    after = trainer.evaluate()
    save_model(trainer.model, tokenizer, out_dir / "reward_model")
    shutil.rmtree(work_dir, ignore_errors=True)
    metrics = {"rm_eval_accuracy_before": before["eval_accuracy"], "rm_eval_accuracy_after": after["eval_accuracy"],
               "rm_eval_margin_before": before["eval_margin"], "rm_eval_margin_after": after["eval_margin"],
               "rm_eval_loss_before": before["eval_loss"], "rm_eval_loss_after": after["eval_loss"],
               "rm_train_loss": train_out.training_loss, "rm_train_steps": train_out.global_step,
               "rm_train_pairs": len(trainer.train_dataset), "rm_eval_pairs": len(trainer.eval_dataset)}
    check_finite("rl", metrics, "rl.reward_model.learning_rate", rm.learning_rate)
    return metrics


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfpipe.models import load_model_and_tokenizer

    # ---------------------------------------------------------------- data first: bad prompts fail before any training
    train_rows, eval_rows, train_path, eval_path = rewards.load_prompt_split(config, inputs)

    # ---------------------------------------------------------------- phase 1: reward model on preference pairs
    metrics: dict = {}
    if config.reward_model is not None:
        metrics.update(train_reward_model(config.reward_model, config, inputs, out_dir))

    # ---------------------------------------------------------------- phase 2: the policy, the reward functions and the
    # trainer
    transformers.set_seed(inputs.seed)
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template
    funcs, processing = [], []
    for spec in config.rewards:
        if spec.name == rewards.REWARD_MODEL:
            rm_dir = out_dir / "reward_model"
            funcs.append(AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).eval())
            processing.append(AutoTokenizer.from_pretrained(rm_dir))
        else:
            funcs.append(rewards.FUNCTIONS[spec.name][0])
            processing.append(None)
    if config.algorithm == "grpo":
        from trl import GRPOConfig as TrainerConfig, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as TrainerConfig, RLOOTrainer as Trainer
    work_dir = out_dir / "trainer"
    args = build_trl_config("rl", TrainerConfig, trl_arguments(
        config, work_dir, inputs.seed, run_name=f"{inputs.recipe_name}-rl", use_vllm=False,
        num_generations=config.num_generations, max_completion_length=config.max_completion_length,
        temperature=config.temperature, beta=config.beta, num_iterations=config.num_iterations,
        reward_weights=[r.weight for r in config.rewards]), out_dir)
    try:
        with scoped_env(tracker_env(out_dir, config.report_to)):
            trainer = Trainer(model=model, reward_funcs=funcs, args=args, processing_class=tokenizer,
                              reward_processing_classes=processing, train_dataset=Dataset.from_list(train_rows),
                              eval_dataset=Dataset.from_list(eval_rows),
                              callbacks=[stop_on_non_finite("rl", "rl.learning_rate"),
                                         report_progress(f"training ({config.algorithm.upper()})")])
    except (RuntimeError, ValueError) as e:
        raise HfpipeError(f"rl: preparing {config.algorithm} on {train_path} failed: {first_line(e)}", 2) from None

    # ---------------------------------------------------------------- train, with the mean reward on held-out prompts
    # before and after (same sampling seed both times)
    def held_out_reward() -> dict:
        transformers.set_seed(inputs.seed)
        out = trainer.evaluate()
        names = zip(config.rewards, trainer.reward_func_names)
        per_func = {r.name: out.get(f"eval_rewards/{n}/mean") for r, n in names}
        return {"reward": out["eval_reward"], **per_func}

    before = held_out_reward()
    train_out = trainer.train()
    after = held_out_reward()
    logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    k = max(1, len(logged) // 4)  # first and last quarter of the run's on-policy batches
    metrics.update({
        "algorithm": config.algorithm, "eval_reward_before": before["reward"], "eval_reward_after": after["reward"],
        **{f"eval_reward_{n}_before": before[n] for n in before if n != "reward"},
        **{f"eval_reward_{n}_after": after[n] for n in after if n != "reward"},
        "train_reward_start": sum(logged[:k]) / k if logged else None,
        "train_reward_end": sum(logged[-k:]) / k if logged else None,
        "train_loss": train_out.training_loss, "train_steps": train_out.global_step,
        "train_prompts": len(train_rows), "eval_prompts": len(eval_rows),
        "precision": resolve_precision(config.precision),
    })
    check_finite("rl", {k: metrics[k] for k in ("eval_reward_before", "eval_reward_after", "train_loss")},
                 "rl.learning_rate", config.learning_rate)

    # ---------------------------------------------------------------- save + self-check: the policy with the chat
    # template exactly as it came; the reward model's weights
    save_and_check("rl", trainer.model, tokenizer, template_before, out_dir, work_dir)
    if config.reward_model is not None and not list((out_dir / "reward_model").glob("*.safetensors")):
        raise HfpipeError(f"rl: {out_dir / 'reward_model'} holds no safetensors weights", 1)
    return metrics


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the mean reward on held-out prompts before and after."""
    return f"held-out reward {metrics['eval_reward_before']:+.2f} -> {metrics['eval_reward_after']:+.2f}"


def describe(config: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the policy trainer (and the reward model's), the prompts, the expected steps."""
    from hfpipe.posttrain.trainer import describe_training

    info = describe_training(config, f"trl.{'GRPOTrainer' if config.algorithm == 'grpo' else 'RLOOTrainer'}",
                             "completions")
    if config.reward_model is not None:
        info["engine"]["reward_model_trainer"] = "trl.RewardTrainer"
    info["expected"]["completion_tokens_at_most"] = (config.max_steps * config.per_device_batch_size
                                                     * config.max_completion_length)
    return info
