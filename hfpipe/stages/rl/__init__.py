"""rl: RLHF with TRL -- a reward model trained on preference pairs, then GRPO or RLOO on prompts.

Run just this stage (the stages before it done): ``hfpipe run recipes/tiny.yaml --only rl``.

Phase 1 trains a reward model (TRL RewardTrainer: the upstream model with a one-output classification head) on
chosen/rejected pairs and measures held-out pairwise accuracy before and after; it is saved in
``out_dir/reward_model/``. Phase 2 optimises the upstream policy on prompts (TRL GRPOTrainer or RLOOTrainer) against a
weighted sum of the reward model and/or verifiable rewards (hfpipe/stages/rl/rewards.py: answer correctness, valid JSON,
valid tool call), and measures the mean reward on held-out prompts before and after; next to it, what the optimisation
cost the language model (hfpipe.posttrain.heldout): the KL of the policy to the starting one on the held-out prompts and
held-out bits per byte before and after, failing (or warning) past ``heldout_bpb_max_rise``. Training prompts and
reward-model pairs sharing an n-gram with the eval plan are dropped (contamination.json). The policy is written to
``out_dir/model/`` with the tokenizer (and so the chat template) unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hfpipe.errors import HfpipeError, first_line
from hfpipe.posttrain.data import load_preferences, load_split, resolve_dataset
from hfpipe.posttrain.decontamination import Decontaminator, DecontaminationKeys
from hfpipe.posttrain.heldout import HeldoutKeys, bpb_metrics, check_bpb_rise, heldout_bpb, policy_kl
from hfpipe.posttrain.templates import check_template  # the one chat-template contract
from hfpipe.posttrain.checkpoint import train_resumable
from hfpipe.posttrain.launch import barrier, is_main_process
from hfpipe.posttrain.trainer import accelerate_files, launch_stage, launched
from hfpipe.posttrain.trainer import card_facts  # noqa: F401 (the stage's card hook: its curves)
from hfpipe.posttrain.trainer import (build_trl_config, check_finite, check_trainer_args, epochs_key, job_keys,
                                      learning_rate_key, max_steps_key, report_progress, resolve_precision,
                                      save_and_check, scoped_env, stop_on_non_finite, tracker_env, trl_arguments)
from hfpipe.stages import Inputs, StageConfig
from hfpipe.stages.rl import rewards

OUTPUTS = ("model/*", "reward_model/*")  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("trainer_config.json", "reward_model_trainer_config.json")
READS = ("model",)
RESUMABLE = True  # the trainers' complete checkpoints survive a crash or pre-emption; a re-run resumes from the last
RM_DONE = ".reward_model_metrics.json"  # phase 1 finished (its metrics): a resumed run goes straight to phase 2
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


class _Guards(DecontaminationKeys, HeldoutKeys):
    """decontaminate, decontamination_tasks/_ngrams (hfpipe.posttrain.decontamination); heldout_bpb_max_rise/_action
    (hfpipe.posttrain.heldout)."""


class Config(job_keys(_Guards)):
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
    use_vllm: bool = Field(False, description="generate the completions with vLLM (CUDA GPUs, `pip install vllm`) "
                           "instead of transformers' generate")
    vllm_mode: Literal["colocate", "server"] = Field("colocate", description="colocate: vLLM inside each training "
                                                     "process, sharing its GPU; server: a separate `trl vllm-serve` "
                                                     "on other GPUs (vllm_server_base_url)")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="colocate: share of each GPU's "
                                               "memory vLLM may take (the rest trains)")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="colocate: GPUs one vLLM engine spans; must divide "
                                           "num_processes")
    vllm_server_base_url: str | None = Field(None, description="server: URL of the running `trl vllm-serve` (e.g. "
                                             "http://gpu-node-2:8000); null = http://localhost:8000")

    def to_trl(self, output_dir: str | Path | None = None, reward_model: bool = False):
        """The trl.GRPOConfig / RLOOConfig phase 2 trains with (``reward_model``: phase 1's trl.RewardConfig), as run()
        builds them; ``output_dir`` default runs/<name>/rl."""
        from trl import GRPOConfig, RewardConfig, RLOOConfig

        name, seed, _ = self.recipe_context()
        work = Path(output_dir or f"runs/{name}/rl")
        if reward_model:
            if self.reward_model is None:
                raise HfpipeError("rl.reward_model is null: this recipe trains no reward model", 2)
            return build_trl_config("rl.reward_model", RewardConfig, reward_kwargs(self, work, seed, name), None)
        config_class = GRPOConfig if self.algorithm == "grpo" else RLOOConfig
        return build_trl_config("rl", config_class, policy_kwargs(self, work, seed, name), None)

    @model_validator(mode="after")
    def _consistent(self):
        if self.per_device_batch_size % self.num_generations:
            raise ValueError(f"per_device_batch_size ({self.per_device_batch_size}) must be a multiple of "
                             f"num_generations ({self.num_generations})")
        if self.vllm_server_base_url is not None and (not self.use_vllm or self.vllm_mode != "server"):
            raise ValueError("vllm_server_base_url is for use_vllm: true with vllm_mode: server")
        if self.use_vllm and self.vllm_mode == "colocate" and self.num_processes % self.vllm_tensor_parallel_size:
            raise ValueError(f"vllm_tensor_parallel_size ({self.vllm_tensor_parallel_size}) must divide "
                             f"num_processes ({self.num_processes})")
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
    if config.use_vllm:
        check_vllm()


def check_vllm() -> None:
    """use_vllm needs the vllm package and a CUDA GPU: else one line (exit 2) before anything runs."""
    import importlib.util

    import torch

    have = {"vllm": importlib.util.find_spec("vllm") is not None, "a CUDA GPU": torch.cuda.is_available()}
    if not all(have.values()):
        missing = " and ".join(k for k, v in have.items() if not v)
        raise HfpipeError(f"rl.use_vllm: generating with vLLM needs {missing} (`pip install vllm` on a GPU "
                          "machine); set rl.use_vllm: false to generate with transformers", 2)


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    names = [("rl.dataset", config.dataset)] + ([("rl.eval_dataset", config.eval_dataset)] if config.eval_dataset
                                                else [])
    if config.reward_model is not None:
        rm = config.reward_model
        names += [("rl.reward_model.dataset", rm.dataset)] + (
            [("rl.reward_model.eval_dataset", rm.eval_dataset)] if rm.eval_dataset else [])
    return [resolve_dataset(name, recipe_dir, key) for key, name in names] + accelerate_files("rl", config, recipe_dir)


def reward_kwargs(config: Config, work_dir: Path, seed: int, recipe_name: str) -> dict:
    """The arguments of the trl.RewardConfig phase 1 trains with (run(), ``recipe.rl.to_trl(reward_model=True)``)."""
    rm = config.reward_model
    return trl_arguments(rm, work_dir, seed, job=config, run_name=f"{recipe_name}-rl-reward-model",
                         center_rewards_coefficient=rm.center_rewards_coefficient)


def policy_kwargs(config: Config, work_dir: Path, seed: int, recipe_name: str) -> dict:
    """The arguments of the trl.GRPOConfig / RLOOConfig phase 2 trains with (run(), ``recipe.rl.to_trl()``)."""
    return trl_arguments(
        config, work_dir, seed, run_name=f"{recipe_name}-rl", **vllm_kwargs(config),
        num_generations=config.num_generations, max_completion_length=config.max_completion_length,
        temperature=config.temperature, beta=config.beta, num_iterations=config.num_iterations,
        reward_weights=[r.weight for r in config.rewards])


def vllm_kwargs(config: Config) -> dict:
    """The GRPOConfig / RLOOConfig fields of the vllm keys (all of them only when use_vllm)."""
    if not config.use_vllm:
        return {"use_vllm": False}
    server = {"vllm_server_base_url": config.vllm_server_base_url} if config.vllm_server_base_url else {}
    return {"use_vllm": True, "vllm_mode": config.vllm_mode, **server,
            "vllm_gpu_memory_utilization": config.vllm_gpu_memory_utilization,
            "vllm_tensor_parallel_size": config.vllm_tensor_parallel_size}


def train_reward_model(rm: RewardModelSettings, job: Config, inputs: Inputs, out_dir: Path,
                       decontaminator=None) -> dict:
    """Phase 1: RewardTrainer on preference pairs; held-out pairwise accuracy before/after; saved to reward_model/."""
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from hfpipe.models import load_tokenizer, model_location, save_model

    if (out_dir / RM_DONE).is_file():  # a resumed run: phase 1 finished before the interruption
        return json.loads((out_dir / RM_DONE).read_text())
    train_rows, eval_rows, train_path, eval_path = load_split(
        rm.dataset, rm.eval_dataset, inputs.recipe_dir, "rl.reward_model", load_preferences, rm.eval_fraction,
        decontaminator=decontaminator)
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
    args = build_trl_config("rl.reward_model", RewardConfig, reward_kwargs(job, work_dir, inputs.seed,
                                                                           inputs.recipe_name),
                            out_dir, "reward_model_trainer_config.json")
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
    train_out, _ = train_resumable(trainer, "rl.reward_model", work_dir, job.keep_checkpoints, is_main_process())
    after = trainer.evaluate()
    barrier()
    if is_main_process():
        save_model(trainer.model, tokenizer, out_dir / "reward_model")
        shutil.rmtree(work_dir, ignore_errors=True)
    metrics = {"rm_eval_accuracy_before": before["eval_accuracy"], "rm_eval_accuracy_after": after["eval_accuracy"],
               "rm_eval_margin_before": before["eval_margin"], "rm_eval_margin_after": after["eval_margin"],
               "rm_eval_loss_before": before["eval_loss"], "rm_eval_loss_after": after["eval_loss"],
               "rm_train_loss": train_out.training_loss, "rm_train_steps": train_out.global_step,
               "rm_train_pairs": len(trainer.train_dataset), "rm_eval_pairs": len(trainer.eval_dataset)}
    check_finite("rl", metrics, "rl.reward_model.learning_rate", rm.learning_rate)
    if is_main_process():
        (out_dir / (RM_DONE + ".tmp")).write_text(json.dumps(metrics))
        os.replace(out_dir / (RM_DONE + ".tmp"), out_dir / RM_DONE)
    barrier()  # phase 2 reads reward_model/ in every rank
    return metrics


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hfpipe.models import load_model_and_tokenizer

    if launched(config):  # num_processes > 1: `accelerate launch`, every rank runs this function
        return launch_stage("rl", config, inputs, out_dir)
    # ---------------------------------------------------------------- data first: bad prompts fail before any training
    decontaminator = Decontaminator.from_config(config)  # the eval plan's n-grams, for prompts and reward pairs
    train_rows, eval_rows, train_path, eval_path = rewards.load_prompt_split(config, inputs, decontaminator)

    # ---------------------------------------------------------------- phase 1: reward model on preference pairs
    metrics: dict = {}
    if config.reward_model is not None:
        metrics.update(train_reward_model(config.reward_model, config, inputs, out_dir, decontaminator))

    # ---------------------------------------------------------------- phase 2: the policy, the reward functions and the
    # trainer
    transformers.set_seed(inputs.seed)
    model, tokenizer = load_model_and_tokenizer(inputs)
    template_before = tokenizer.chat_template
    bpb_before = heldout_bpb(model, tokenizer)  # the language model it starts from (hfpipe.posttrain.heldout)
    start_policy = copy.deepcopy(model).eval()  # for the KL of the trained policy to it
    check_template("rl", inputs, template_before, out_dir)  # = the tokenizer stage's, or fail naming both
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
    args = build_trl_config("rl", TrainerConfig, policy_kwargs(config, work_dir, inputs.seed, inputs.recipe_name),
                            out_dir)
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
        return {"reward": out["eval_reward"], **per_func, "kl": out.get("eval_kl")}

    before = held_out_reward()
    kl_before = policy_kl(model, start_policy, tokenizer, eval_rows, model.config.max_position_embeddings)
    train_out, resumed_from = train_resumable(trainer, "rl", work_dir, config.keep_checkpoints, is_main_process())
    after = held_out_reward()
    bpb_after = heldout_bpb(trainer.model, tokenizer)
    kl = policy_kl(trainer.model, start_policy, tokenizer, eval_rows, trainer.model.config.max_position_embeddings)
    del start_policy
    logged = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    k = max(1, len(logged) // 4)  # first and last quarter of the run's on-policy batches
    metrics.update({
        "algorithm": config.algorithm, "eval_reward_before": before["reward"], "eval_reward_after": after["reward"],
        **{f"eval_reward_{n}_before": before[n] for n in before if n not in ("reward", "kl")},
        **{f"eval_reward_{n}_after": after[n] for n in after if n not in ("reward", "kl")},
        "train_reward_start": sum(logged[:k]) / k if logged else None,
        "train_reward_end": sum(logged[-k:]) / k if logged else None,
        "train_loss": train_out.training_loss, "train_steps": train_out.global_step,
        "train_prompts": len(train_rows), "eval_prompts": len(eval_rows),
        "precision": resolve_precision(config.precision), "num_processes": config.num_processes,
        "gradient_checkpointing": config.gradient_checkpointing, "resumed_from_step": resumed_from,
        "use_vllm": config.use_vllm,
        "eval_kl_to_start_before": round(kl_before, 6), "eval_kl_to_start_after": round(kl, 6),
        **({"eval_kl_trl_after": after["kl"]} if after.get("kl") is not None else {}),
        **bpb_metrics(bpb_before, bpb_after),
    })
    check_finite("rl", {k: metrics[k] for k in ("eval_reward_before", "eval_reward_after", "train_loss")},
                 "rl.learning_rate", config.learning_rate)
    # the card's metrics table shows the first rows: the reward, and beside it what it cost the language model
    first = [k for k in metrics if k.startswith(("eval_reward_before", "eval_reward_after", "eval_kl_", "heldout_bpb_"))]
    metrics = {**{k: metrics[k] for k in first}, **metrics}

    # ---------------------------------------------------------------- save + self-check: the policy with the chat
    # template exactly as it came; the reward model's weights
    check_bpb_rise("rl", bpb_before, bpb_after, config.heldout_bpb_max_rise, config.heldout_bpb_action,
                   "rl.heldout_bpb_max_rise")
    if decontaminator is not None and is_main_process():
        decontaminator.write(out_dir, "rl")
    save_and_check("rl", trainer.model, tokenizer, template_before, out_dir, work_dir)
    if not is_main_process():
        return metrics
    (out_dir / RM_DONE).unlink(missing_ok=True)
    if config.reward_model is not None and not list((out_dir / "reward_model").glob("*.safetensors")):
        raise HfpipeError(f"rl: {out_dir / 'reward_model'} holds no safetensors weights", 1)
    return metrics


def headline(metrics: dict) -> str:
    """The console's figure for this stage: the mean reward on held-out prompts before and after."""
    kl = metrics.get("eval_kl_to_start_after")
    return f"held-out reward {metrics['eval_reward_before']:+.2f} -> {metrics['eval_reward_after']:+.2f}" + (
        f", KL to start {kl:.3f}" if kl is not None else "")


def describe(config: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the policy trainer (and the reward model's), the prompts, the expected steps."""
    from hfpipe.posttrain.trainer import describe_training

    info = describe_training(config, f"trl.{'GRPOTrainer' if config.algorithm == 'grpo' else 'RLOOTrainer'}",
                             "completions", stage="rl", recipe_dir=recipe.recipe_dir)
    info["engine"]["generation"] = ({"engine": "vllm", **vllm_kwargs(config)} if config.use_vllm
                                    else {"engine": "transformers generate"})
    if config.reward_model is not None:
        info["engine"]["reward_model_trainer"] = "trl.RewardTrainer"
    info["expected"]["completion_tokens_at_most"] = (config.max_steps * config.per_device_batch_size
                                                     * config.max_completion_length)
    return info
