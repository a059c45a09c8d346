"""Recipes and cards other Hugging Face projects can use (hfpipe/interop): Recipe.load and the sections' to_* methods,
`hfpipe export` run through the upstream command lines (trl, lm_eval), `hfpipe import` of real alignment-handbook /
open-r1 recipes, tool calls in the ecosystem's format, and the committed cards' staleness check.

Run: .venv/bin/python -m pytest tests/test_interop.py -q  (the `trl`/`lm_eval` command-line checks are marked slow:
`-m slow`)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "trl_recipes"
BIN = Path(sys.executable).parent
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _cli(*argv) -> int:
    from hfpipe.cli import main

    return main([str(a) for a in argv])


def _write_recipe(tmp_path: Path, model_dir: Path, **sections) -> Path:
    recipe = {"name": "interop", "seed": 7, "base_model": str(model_dir), **sections}
    path = tmp_path / "interop.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _tb_losses(folder: Path) -> dict[int, float]:
    """train/loss per step from the tensorboard event files under ``folder`` (float32 scalars)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for f in sorted(folder.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(f))
        acc.Reload()
        if "train/loss" in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Recipe.load and the to_* methods


def test_recipe_load_gives_the_libraries_config_objects():
    import trl

    import hfpipe

    recipe = hfpipe.Recipe.load(REPO / "recipes" / "tiny.yaml")
    sft = recipe.sft.to_trl(output_dir="out")
    assert isinstance(sft, trl.SFTConfig)
    assert (sft.learning_rate, sft.max_steps, sft.seed, sft.per_device_train_batch_size, sft.max_length) == (
        recipe.sft.learning_rate, recipe.sft.max_steps, recipe.seed, recipe.sft.per_device_batch_size,
        recipe.sft.max_length)
    assert sft.assistant_only_loss and sft.run_name == "tiny-sft" and sft.output_dir == "out"
    dpo = recipe.preference.to_trl()
    assert isinstance(dpo, trl.DPOConfig) and dpo.beta == recipe.preference.beta
    assert isinstance(recipe.rl.to_trl(), trl.GRPOConfig)
    assert isinstance(recipe.rl.to_trl(reward_model=True), trl.RewardConfig)
    kto = hfpipe.Recipe.load(REPO / "recipes" / "tiny.yaml", ["preference.method=kto",
                                                                "preference.trainer.desirable_weight=2.0"])
    assert isinstance(kto.preference.to_trl(), trl.KTOConfig) and kto.preference.to_trl().desirable_weight == 2.0
    evaluate = recipe.eval.to_lm_eval()
    assert evaluate["tasks"] == list(recipe.eval.tasks) and evaluate["limit"] == recipe.eval.limit
    assert evaluate["random_seed"] == recipe.seed and "capitals" in evaluate["task_manager"].all_tasks


def test_recipe_load_reads_the_recipe_a_model_card_carries(tmp_path):
    """A card's embedded recipe gives the same objects as the recipe file (relative paths: recipes/ beside the card's
    model_cards/ folder)."""
    import hfpipe
    from hfpipe.card import build_card, write_card

    recipe = hfpipe.Recipe.load(REPO / "recipes" / "tiny.yaml")
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    card = write_card(build_card("tiny", recipe.to_yaml(), {}), tmp_path / "model_cards" / "tiny.md")
    from_card = hfpipe.Recipe.load(card)
    assert from_card.to_yaml() == recipe.to_yaml()
    assert from_card.sft.to_trl(output_dir="o").to_dict() == recipe.sft.to_trl(output_dir="o").to_dict()
    assert from_card.preference.to_trl(output_dir="o").to_dict() == recipe.preference.to_trl(output_dir="o").to_dict()


# ----------------------------------------------------------------------------------------------------------------------
# hfpipe export --to trl, run by `trl sft` / `trl dpo`: the same losses as hfpipe's stage


def _stage_then_cli(tmp_path, model_dir, stage: str, section: dict, command: str):
    """Run ``stage`` with hfpipe (tensorboard on), export it, run ``trl <command> --config``; both loss curves."""
    from hfpipe import runner
    from hfpipe.recipe import load_recipe

    path = _write_recipe(tmp_path, model_dir, **{stage: {**section, "report_to": ["tensorboard"]}})
    recipe = load_recipe(path)
    runs = tmp_path / "runs"
    [row] = [r for r in runner.run(recipe, runs, only=[stage]) if r["stage"] == stage]
    folder = Path(row["path"])
    assert _cli("--runs-dir", runs, "export", path, tmp_path / "export", "--stage", stage, "--to", "trl") == 0
    config = tmp_path / "export" / f"{command}.yaml"
    env = {**OFFLINE, "TENSORBOARD_LOGGING_DIR": str(tmp_path / "cli_tb")}
    done = subprocess.run([BIN / "trl", command, "--config", config], env=env, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return recipe, folder, _tb_losses(folder / "trackers"), _tb_losses(tmp_path / "cli_tb")


@pytest.mark.slow
def test_trl_sft_cli_on_the_export_trains_like_the_sft_stage(tiny_model_dir, tmp_path):
    section = {"datasets": [{"name": "hfpipe:sft_chat.jsonl"}, {"name": "hfpipe:instruct.jsonl"}],
               "mixture_rows": 40, "max_eval_rows": 4, "learning_rate": 3e-3, "max_steps": 5,
               "per_device_batch_size": 4, "max_length": 256}
    recipe, folder, ours, theirs = _stage_then_cli(tmp_path, tiny_model_dir, "sft", section, "sft")
    assert sorted(ours) == sorted(theirs) == [1, 2, 3, 4, 5]
    for step in ours:
        assert abs(ours[step] - theirs[step]) < 1e-5, (step, ours, theirs)
    assert ours[1] != ours[5]  # it trained
    # the exported rows are the mixture hfpipe trained on, in its order
    train = (tmp_path / "export" / "data" / "train.jsonl").read_text().splitlines()
    assert len(train) == 40
    # recipe.sft.to_trl() is the config the stage trained with
    written = json.loads((folder / "trainer_config.json").read_text())
    built = recipe.sft.to_trl(output_dir=tmp_path / "o").to_dict()
    built = json.loads(json.dumps({k: v for k, v in built.items() if k not in ("output_dir", "logging_dir")},
                                  default=str))
    assert written.pop("class") == "trl.SFTConfig" and built == written


@pytest.mark.slow
def test_trl_dpo_cli_on_the_export_trains_like_the_preference_stage(tiny_model_dir, tmp_path):
    section = {"method": "dpo", "datasets": [{"name": "hfpipe:preference_pairs.jsonl"}], "mixture_rows": 20,
               "max_eval_pairs": 4, "beta": 0.5, "learning_rate": 3e-3, "max_steps": 5, "per_device_batch_size": 4,
               "max_length": 128}
    _, _, ours, theirs = _stage_then_cli(tmp_path, tiny_model_dir, "preference", section, "dpo")
    assert sorted(ours) == sorted(theirs) == [1, 2, 3, 4, 5]
    for step in ours:
        assert abs(ours[step] - theirs[step]) < 1e-5, (step, ours, theirs)
    assert ours[1] != ours[5]


def test_sft_lora_exports_as_the_trl_command_lines_peft_arguments(tiny_model_dir, tmp_path):
    """`trl sft` parses the export with its own parser; get_peft_config gives the recipe's adapters (not a full
    fine-tune)."""
    from trl import get_peft_config
    from trl.scripts.sft import make_parser

    section = {"datasets": [{"name": "hfpipe:sft_chat.jsonl"}], "mixture_rows": 8, "max_eval_rows": 2, "max_steps": 1,
               "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}}
    path = _write_recipe(tmp_path, tiny_model_dir, sft=section)
    assert _cli("--runs-dir", tmp_path / "runs", "export", path, tmp_path / "x", "--stage", "sft", "--to", "trl") == 0
    script_args, sft_args, model_args, _ = make_parser().parse_args_and_config(
        ["--config", str(tmp_path / "x" / "sft.yaml")])
    lora = get_peft_config(model_args)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, sorted(lora.target_modules)) == (4, 8, 0.1,
                                                                                        ["q_proj", "v_proj"])
    assert sft_args.max_steps == 1 and script_args.dataset_name == str(tmp_path / "x" / "data")


@pytest.mark.slow
def test_trl_reward_then_grpo_cli_on_the_rl_export_train_with_hfpipes_rewards(tiny_model_dir, tmp_path):
    """rl exports as its two phases: `trl reward` trains the reward model on the exported pairs, then `trl grpo` trains
    the policy on the exported prompts, scoring with that reward model and hfpipe's verifiable reward by import path,
    with the recipe's weights in TRL's order."""
    from hfpipe.recipe import load_recipe

    section = {"reward_model": {"dataset": "hfpipe:rl_pairs.jsonl", "eval_dataset": "hfpipe:rl_pairs_eval.jsonl",
                                "max_steps": 2, "per_device_batch_size": 8, "max_length": 128},
               "algorithm": "grpo", "tasks": ["arithmetic", "json"],
               "rewards": [{"name": "exact_answer", "weight": 0.5}, {"name": "reward_model", "weight": 2.0}],
               "max_steps": 2, "per_device_batch_size": 8, "num_generations": 4, "max_completion_length": 8,
               "eval_prompts": 8, "report_to": ["tensorboard"]}
    path = _write_recipe(tmp_path, tiny_model_dir, rl=section)
    recipe, out = load_recipe(path), tmp_path / "export"
    assert _cli("--runs-dir", tmp_path / "runs", "export", path, out, "--stage", "rl", "--to", "trl") == 0
    reward, grpo = yaml.safe_load((out / "reward.yaml").read_text()), yaml.safe_load((out / "grpo.yaml").read_text())
    built = recipe.rl.to_trl(output_dir=out / "output")
    assert grpo["reward_weights"] == [2.0, 0.5]  # the reward model first, as `trl grpo` puts it
    assert grpo["reward_funcs"] == ["hfpipe.stages.rl.rewards.exact_answer"]
    assert grpo["reward_model_name_or_path"] == str(out / "reward_model") == reward["output_dir"]
    assert (grpo["learning_rate"], grpo["beta"], grpo["num_generations"], grpo["max_steps"]) == (
        built.learning_rate, built.beta, built.num_generations, built.max_steps)
    assert reward["max_steps"] == recipe.rl.to_trl(reward_model=True).max_steps == 2
    prompts = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert prompts and {r["task"] for r in prompts} <= {"arithmetic", "json"} and any(r["answer"] for r in prompts)
    for command in ("reward", "grpo"):
        env = {**OFFLINE, "TENSORBOARD_LOGGING_DIR": str(tmp_path / f"tb_{command}")}
        done = subprocess.run([BIN / "trl", command, "--config", out / f"{command}.yaml"], env=env,
                              capture_output=True, text=True, timeout=900, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert list((out / "reward_model").glob("*.safetensors")) and list((out / "output").glob("*.safetensors"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in (tmp_path / "tb_grpo").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert "train/rewards/exact_answer/mean" in tags, sorted(tags)  # hfpipe's function scored the completions
    assert any(t.startswith("train/rewards/") and "exact_answer" not in t for t in tags), sorted(tags)  # and the RM


# ----------------------------------------------------------------------------------------------------------------------
# recipe.data.to_datatrove() and `hfpipe export --to datatrove`: datatrove's own executor, hfpipe's output


def test_the_exported_datatrove_script_writes_the_data_stage_output_byte_for_byte(tmp_path):
    """`python DIR/pipeline.py` runs recipe.data.to_datatrove()'s passes on datatrove's LocalPipelineExecutor (no
    hfpipe runner) and writes the same shards as hfpipe's data stage on the tiny recipe's real sources."""
    from datatrove.pipeline.base import PipelineStep

    import hfpipe
    from hfpipe import runner

    recipe = hfpipe.Recipe.load(REPO / "recipes" / "tiny.yaml", ["data.dedup.minhash.num_buckets=4"])
    passes = recipe.data.to_datatrove(tmp_path / "built")
    assert [p.name for p in passes] == ["1_filter", "2_dedup_signatures", "3_dedup_find", "5_minhash_1",
                                        "5_minhash_2", "5_minhash_3", "6_dedup", "5_balance_write"]
    assert all(isinstance(step, PipelineStep) for p in passes for step in p.pipeline)
    assert passes[4].tasks == 4  # one MinHash bucket task per band
    [row] = [r for r in runner.run(recipe, tmp_path / "runs", only=["data"]) if r["stage"] == "data"]
    ours = sorted((Path(row["path"]) / "data").glob("*.jsonl.gz"))
    assert _cli("export", REPO / "recipes" / "tiny.yaml", tmp_path / "dt", "data.dedup.minhash.num_buckets=4",
                "--stage", "data", "--to", "datatrove") == 0
    done = subprocess.run([sys.executable, tmp_path / "dt" / "pipeline.py", "--output", tmp_path / "theirs"],
                          env=OFFLINE, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = sorted((tmp_path / "theirs" / "data").glob("*.jsonl.gz"))
    assert [f.name for f in theirs] == [f.name for f in ours] == ["00000.jsonl.gz"]
    assert [f.read_bytes() for f in theirs] == [f.read_bytes() for f in ours]
    assert done.stdout.count("pass ") == 8 and (tmp_path / "theirs" / "datatrove_logs" / "1_filter").is_dir()


def test_export_datatrove_refuses_another_stage_in_one_line(tmp_path, capsys):
    assert _cli("export", REPO / "recipes" / "tiny.yaml", tmp_path / "x", "--stage", "sft", "--to", "datatrove") == 2
    assert "exports the data stage" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Tool calls as the ecosystem writes them: `tools`, `tool_calls`, `tool` turns


WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _tool_rows(n: int) -> list[dict]:
    cities = ["Paris", "Oslo", "Lima", "Rome", "Kyiv", "Bern", "Doha", "Riga", "Baku", "Male"]
    return [{"messages": [
        {"role": "user", "content": f"Weather in {c}?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "weather",
                                                                               "arguments": {"city": c}}}]},
        {"role": "tool", "content": f"{10 + i} C"},
        {"role": "assistant", "content": f"It is {10 + i} C in {c}."}], "tools": [WEATHER]}
        for i, c in enumerate(cities[:n])]


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory) -> Path:
    """The tiny random Llama of conftest with 512 positions: a conversation with a tools block is ~320 tokens of its
    512-token vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import build_tiny_tokenizer, stdlib_text
    from hfpipe.models import save_model

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer(stdlib_text())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return save_model(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("long") / "model")


def test_tool_calls_train_with_loss_on_assistant_turns_only_and_render_alike_through_trl(long_model_dir, tmp_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer, apply_chat_template

    from hfpipe import runner
    from hfpipe.recipe import load_recipe

    for name, rows in (("tools.jsonl", _tool_rows(8)), ("tools_eval.jsonl", _tool_rows(10)[8:])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = _write_recipe(tmp_path, long_model_dir, sft={
        "dataset": "tools.jsonl", "eval_dataset": "tools_eval.jsonl", "learning_rate": 3e-3, "max_steps": 2,
        "per_device_batch_size": 4, "max_length": 512})
    recipe = load_recipe(path)
    export = tmp_path / "export"
    assert _cli("--runs-dir", tmp_path / "runs", "export", path, export, "--stage", "sft", "--to", "trl") == 0

    # the exported rows keep the tool calls and tools (the format TRL reads), and the exported tokenizer renders
    # them byte for byte as TRL's own apply_chat_template does, and as the rows hfpipe was given
    tok = AutoTokenizer.from_pretrained(export / "model")
    exported = [json.loads(x) for x in (export / "data" / "train.jsonl").read_text().splitlines()]
    assert all(r["messages"][1]["tool_calls"][0]["function"]["name"] == "weather" for r in exported)
    given = {r["messages"][0]["content"]: r for r in _tool_rows(8)}
    for row in exported:
        ours = tok.apply_chat_template(row["messages"], tools=json.loads(row["tools"]), tokenize=False)
        theirs = apply_chat_template({"messages": row["messages"]}, tok, tools=json.loads(row["tools"]))["text"]
        raw = given[row["messages"][0]["content"]]
        assert ours.encode() == theirs.encode() == tok.apply_chat_template(
            raw["messages"], tools=raw["tools"], tokenize=False).encode()
        assert '"name": "weather"' in ours and "Weather in a city." in ours and "<|im_start|>tool\n" in ours

    # TRL tokenizes them (the stage's config, the exported template) with the loss on assistant tokens only: the
    # call and the reply, never the tools block, the question or the tool's answer
    tok.chat_template = (export / "chat_template.jinja").read_text()
    data = load_dataset(str(export / "data"))
    trainer = SFTTrainer(model=str(export / "model"), args=recipe.sft.to_trl(output_dir=tmp_path / "trl"),
                         processing_class=tok, train_dataset=data["train"])
    for row, ex in zip(exported, trainer.train_dataset):
        assert ex["input_ids"] == tok.apply_chat_template(row["messages"], tools=json.loads(row["tools"]),
                                                          tokenize=True, return_dict=True)["input_ids"]
        assert [t for t in ex["labels"] if t != -100] == [t for t, m in zip(ex["input_ids"], ex["labels"]) if m != -100]
        learned = tok.decode([t for t in ex["labels"] if t != -100])  # TRL's labels: -100 outside {% generation %}
        city, answer = row["messages"][0]["content"][11:-1], row["messages"][3]["content"]
        assert learned == f'{{"name": "weather", "arguments": {{"city": "{city}"}}}}<|im_end|>{answer}<|im_end|>'

    # and the sft stage trains on them
    [row] = [r for r in runner.run(recipe, tmp_path / "runs", only=["sft"]) if r["stage"] == "sft"]
    folder = Path(row["path"])
    metrics = json.loads((folder / "manifest.json").read_text())["metrics"]
    assert metrics["train_steps"] == 2 and metrics["eval_loss_after"] < metrics["eval_loss_before"]


# ----------------------------------------------------------------------------------------------------------------------
# hfpipe export --to lm-eval, run by `lm_eval --include_path`: the eval stage's scores


@pytest.mark.slow
def test_lm_eval_cli_on_the_exported_task_folder_gives_the_eval_stage_scores(tiny_model_dir, tmp_path):
    import shlex

    from hfpipe import runner
    from hfpipe.recipe import load_recipe

    path = _write_recipe(tmp_path, tiny_model_dir, eval={
        "tasks": ["capitals", "tool_use", "heldout_prose"], "limit": 4, "apply_chat_template": True,
        "max_gen_toks": 16, "batch_size": 4, "latency_batch_sizes": [], "bootstrap_iters": 0})
    recipe = load_recipe(path)
    [row] = [r for r in runner.run(recipe, tmp_path / "runs", only=["eval"]) if r["stage"] == "eval"]
    ours = json.loads((Path(row["path"]) / "results.json").read_text())["tasks"]
    export = tmp_path / "export"
    assert _cli("--runs-dir", tmp_path / "runs", "export", path, export, "--stage", "eval", "--to", "lm-eval") == 0
    argv = shlex.split((export / "command.txt").read_text())
    assert argv[0] == "lm_eval" and argv[argv.index("--include_path") + 1] == str(export / "tasks")
    done = subprocess.run([str(BIN / "lm_eval"), *argv[1:]], env=OFFLINE, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = (export / "results").rglob("results_*.json")
    theirs = json.loads(results.read_text())["results"]
    compared = 0
    for task, entry in ours.items():
        for label, metric in entry["metrics"].items():
            assert theirs[task][f"{label},none"] == pytest.approx(metric["value"], rel=1e-9, abs=1e-12), (task, label)
            compared += 1
    assert compared == 7 and set(ours) == {"capitals", "tool_use", "heldout_prose"}


# ----------------------------------------------------------------------------------------------------------------------
# hfpipe import of real alignment-handbook / open-r1 recipes


IMPORTABLE = ["alignment-handbook_zephyr-7b-beta_sft_config_full.yaml",
              "open-r1_Qwen2.5-1.5B-Instruct_sft_config_demo.yaml"]


@pytest.mark.parametrize("name", IMPORTABLE)
def test_import_of_a_real_recipe_validates_and_dry_runs_with_its_numbers(name, tmp_path, capsys):
    source = FIXTURES / name
    assert "Licensed under the Apache License, Version 2.0" in source.read_text()  # kept with the file's source
    args = yaml.safe_load(source.read_text())
    out = tmp_path / "imported.yaml"
    assert _cli("import", source, "-o", out) == 0
    capsys.readouterr()
    assert _cli("--runs-dir", tmp_path / "runs", "run", out, "--dry-run", "--json") == 0
    [stage] = json.loads(capsys.readouterr().out)["stages"]
    engine = stage["engine"]
    assert stage["stage"] == "sft" and engine["trainer"] == "trl.SFTTrainer"
    assert engine["learning_rate"] == args["learning_rate"]
    assert engine["per_device_batch_size"] == args["per_device_train_batch_size"]
    assert stage["expected"]["sequences_per_step"] == (args["per_device_train_batch_size"]
                                                       * args["gradient_accumulation_steps"])
    assert engine["trainer_args"]["lr_scheduler_type"] == args["lr_scheduler_type"]
    assert engine["trainer_args"]["warmup_steps" if "warmup_ratio" in args else "lr_scheduler_type"] == \
        args.get("warmup_ratio", args["lr_scheduler_type"])
    mixture = args.get("dataset_mixer") or {args["dataset_name"]: 1.0}
    split = (args.get("dataset_splits") or ["train"])[0]
    assert stage["datasets"] == [{"name": n, "split": split, "weight": w} for n, w in mixture.items()]
    # every argument went somewhere: a recipe key, trainer: (with its value), or the header (what hfpipe decides)
    from hfpipe.interop.importer import import_recipe

    text, imported, placed = import_recipe(source)
    assert set(placed) == set(args) and out.read_text() == text
    for key, where in placed.items():
        if where.startswith("sft.trainer.") and where.count(".") == 2:
            assert imported["sft"]["trainer"][where.split(".")[2]] == args[key], key
        elif where == "not passed":
            assert f"# not passed: {key}=" in text
    assert imported["sft"]["trainer"]["hub_model_id"] == args["hub_model_id"]
    assert imported["sft"]["max_length"] == args["max_seq_length"]  # renamed since: SFTConfig.max_length
    assert imported["base_model"]["name_or_path"] == args["model_name_or_path"] and imported["seed"] == args["seed"]


def test_import_names_the_argument_it_cannot_map_in_one_line(tmp_path, capsys):
    # a real DPO recipe written for an older TRL: DPOConfig has no max_prompt_length any more
    source = FIXTURES / "alignment-handbook_zephyr-7b-beta_dpo_config_full.yaml"
    assert _cli("import", source) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'max_prompt_length' cannot be mapped" in err and str(source) in err
    # a fractional save_steps (smollm3 APO) has no hfpipe equivalent either
    assert _cli("import", FIXTURES / "alignment-handbook_smollm3_dpo_apo.yaml") == 2
    assert "'save_steps' cannot be mapped" in capsys.readouterr().err


def test_export_accelerate_and_the_pretrain_model_config(tmp_path, capsys):
    import hfpipe

    recipe = hfpipe.Recipe.load(REPO / "recipes" / "tiny.yaml")
    config = recipe.pretrain.to_transformers()
    m = recipe.pretrain.model
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size) == (
        m.model_type, m.hidden_size, m.num_hidden_layers, recipe.tokenizer.vocab_size)
    assert config.max_position_embeddings == recipe.pretrain.seq_len
    assert _cli("export", REPO / "recipes" / "tiny.yaml", tmp_path, "--stage", "pretrain", "--to", "accelerate") == 0
    written = yaml.safe_load((tmp_path / "accelerate.yaml").read_text())
    assert written == recipe.pretrain.to_accelerate() and written["num_processes"] == recipe.pretrain.num_processes
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(tmp_path / "accelerate.yaml")).num_processes == recipe.pretrain.num_processes
    assert _cli("export", REPO / "recipes" / "tiny.yaml", tmp_path, "--stage", "sft", "--to", "lm-eval") == 2
    assert "lm-eval exports the eval stage" in capsys.readouterr().err


def test_a_bad_tool_call_is_one_error_naming_file_line_and_field(tmp_path):
    from hfpipe.errors import HfpipeError
    from hfpipe.posttrain.data import load_conversations

    rows = _tool_rows(2)
    rows[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(HfpipeError, match=r"bad.jsonl:2: field 'messages\[1\].tool_calls\[0\].function.arguments' "
                                          "is not valid JSON"):
        load_conversations(path)
    rows[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] = {"city": "Oslo"}
    rows[1]["tools"] = [{"name": "weather"}]  # not the {"type": "function", "function": {...}} form
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(HfpipeError, match=r"bad.jsonl:2: field 'tools' must be a non-empty list"):
        load_conversations(path)
