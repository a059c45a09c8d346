"""Chat datasets for the post-training stages: locate, read and validate JSONL in TRL's conversational formats.

A dataset is named in a recipe either as ``hfpipe:<file>`` (a file bundled in ``hfpipe/datasets/``, see its README for
provenance) or as a path (relative paths are relative to the recipe's folder). Formats, one JSON object per line:

- conversations (SFT):   {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}
- preferences (DPO):     {"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}

Tool calls as the ecosystem writes them (TRL, transformers chat templates): an assistant message may carry
``tool_calls`` ([{"type": "function", "function": {"name", "arguments"}}], its content then may be empty), a ``tool``
message answers it, and a row may declare ``tools`` ([{"type": "function", "function": {"name", "description",
"parameters"}}], or that list as a JSON string), which the chat template renders. Rows keep them normalised: the
arguments of a call and the row's ``tools`` as JSON strings (one Arrow type whatever the schemas; TRL decodes
``tools``, the template writes a string argument as it is).

Other keys on a line (e.g. "source") are allowed and ignored. Every problem is an HfpipeError naming the file, the
line and the field.

Mixtures (``DatasetSpec`` / ``load_mixture``): several sets, each a bundled file, a local .jsonl/.json/.parquet file
or a Hub dataset, sampled to relative weights; rows may come in any of TRL's standard formats and are normalised to
the one the stage needs (``conversation``, ``preference``, ``unpaired``, ``prompt``). The achieved mixture, with each
set's provenance (real or synthetic, licence, source), is returned for the stage's metrics.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfpipe.errors import HfpipeError, first_line
from hfpipe.resources import DATASETS, package_file
from hfpipe.stages import resolve_path

BUNDLED_PREFIX = "hfpipe:"
BUNDLED_DIR = package_file(DATASETS)
ROLES = ("system", "user", "assistant", "tool")
# Provenance of the bundled sets, by file-name prefix (hfpipe/datasets/README.md has the details):
# (real | synthetic, licence, where it comes from)
_SYNTHETIC = ("synthetic", "Apache-2.0", "scripts/make_synthetic_posttrain.py (templates + stdlib facts)")
BUNDLED_PROVENANCE = {
    "sft_chat": ("real", "BSD-3-Clause", "PyPI chatterbot-corpus 1.3.3"),
    "preference_pairs": ("real", "BSD-3-Clause", "PyPI chatterbot-corpus 1.3.3 (pairing synthetic)"),
    "chitchat_pairs": ("real", "MIT", "PyPI chitchat-dataset 0.9.0 (human ratings; pairing synthetic)"),
    "chitchat": ("real", "MIT", "PyPI chitchat-dataset 0.9.0"),
    **{name: _SYNTHETIC for name in ("instruct", "tool_use", "safety", "structured", "style", "reasoning")},
    "rl_": ("synthetic", "Apache-2.0 AND Unicode-3.0",
            "scripts/make_rl_prompts.py (templates + Python arithmetic + CPython unicodedata)"),
}


def resolve_dataset(name: str, recipe_dir: Path, key: str = "dataset") -> Path:
    """The file a recipe's dataset name points to; raises if it does not exist."""
    if name.startswith(BUNDLED_PREFIX):
        file = name.removeprefix(BUNDLED_PREFIX)
        path = BUNDLED_DIR / file
        if "/" in file or "\\" in file or not path.is_file():
            have = ", ".join(BUNDLED_PREFIX + p.name for p in sorted(BUNDLED_DIR.glob("*.jsonl")))
            raise HfpipeError(f"{key}: no bundled dataset '{name}' (bundled: {have})", 2)
        return path
    path = resolve_path(name, recipe_dir)
    if not path.is_file():
        raise HfpipeError(f"{key}: dataset file '{name}' not found (resolved to {path})", 2)
    return path


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise HfpipeError(f"{path}:{lineno}: not valid JSON ({e})", 2) from None
            if not isinstance(row, dict):
                raise HfpipeError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}", 2)
            rows.append((lineno, row))
    if not rows:
        raise HfpipeError(f"{path}: dataset is empty", 2)
    return rows


def _tool_calls(value, where: str, field: str) -> list[dict]:
    """An assistant message's `tool_calls` (the row's ``field``), normalised to [{"type": "function", "function":
    {"name", "arguments": JSON string}}]."""
    if not isinstance(value, list) or not value:
        raise HfpipeError(f"{where}: field '{field}' must be a non-empty list of calls {{\"type\": \"function\", \"function\": "
                          "{\"name\", \"arguments\"}}", 2)
    out = []
    for j, call in enumerate(value):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise HfpipeError(f"{where}: field '{field}[{j}].function.name' must be a non-empty string", 2)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                raise HfpipeError(f"{where}: field '{field}[{j}].function.arguments' is not valid JSON", 2) from None
        if not isinstance(args, dict):
            raise HfpipeError(f"{where}: field '{field}[{j}].function.arguments' must be a JSON object", 2)
        out.append({"type": "function", "function": {"name": fn["name"],
                                                      "arguments": json.dumps(args, ensure_ascii=False)}})
    return out


def check_tools(value, where: str) -> str:
    """A row's `tools` (a list of {"type": "function", "function": {"name", ...}} or that list as a JSON string),
    normalised to the JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise HfpipeError(f"{where}: field 'tools' is a string but not valid JSON", 2) from None
    if not isinstance(value, list) or not value or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in value):
        raise HfpipeError(f"{where}: field 'tools' must be a non-empty list of {{\"type\": \"function\", "
                          "\"function\": {\"name\", \"description\", \"parameters\"}}", 2)
    return json.dumps(value, ensure_ascii=False)


def row_tools(row: dict) -> list | None:
    """The tools a normalised row declares, as the chat template takes them (None: none)."""
    return json.loads(row["tools"]) if row.get("tools") else None


def _with_tools(out: dict, row: dict, where: str) -> dict:
    if row.get("tools") is not None:
        out["tools"] = check_tools(row["tools"], where)
    return out


def check_messages(value, field: str, where: str, roles: tuple[str, ...] = ROLES,
                   empty_assistant_ok: bool = False) -> list[dict]:
    """Check that `value` (a row's `field`) is a non-empty list of {"role", "content"} messages with roles from
    `roles` and (unless empty_assistant_ok, or it makes tool calls) no empty assistant turn; return it reduced to
    those two keys, plus an assistant turn's `tool_calls` (normalised)."""
    if not isinstance(value, list) or not value:
        raise HfpipeError(f"{where}: field '{field}' must be a non-empty list of messages", 2)
    out = []
    for i, m in enumerate(value):
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if calls is not None and content is None:
            content = ""
        if not isinstance(m, dict) or not isinstance(content, str):
            raise HfpipeError(f"{where}: field '{field}[{i}]' must be an object with a string 'content'", 2)
        if m.get("role") not in roles:
            raise HfpipeError(f"{where}: field '{field}[{i}].role' is {m.get('role')!r}, expected one of {roles}", 2)
        if calls is not None and m["role"] != "assistant":
            raise HfpipeError(f"{where}: field '{field}[{i}].tool_calls': only an assistant turn makes tool calls", 2)
        if m["role"] == "assistant" and not content.strip() and not calls and not empty_assistant_ok:
            raise HfpipeError(f"{where}: field '{field}[{i}].content' is an empty assistant turn", 2)
        message = {"role": m["role"], "content": content}
        if calls is not None:
            message["tool_calls"] = _tool_calls(calls, where, f"{field}[{i}].tool_calls")
        out.append(message)
    return out


def check_prompt(value, where: str, roles: tuple[str, ...] = ROLES, empty_assistant_ok: bool = False) -> list[dict]:
    """A row's 'prompt': messages (check_messages) that end with a user (or tool) turn, for the model to answer."""
    prompt = check_messages(value, "prompt", where, roles, empty_assistant_ok)
    if prompt[-1]["role"] not in ("user", "tool"):
        raise HfpipeError(f"{where}: field 'prompt' must end with a user turn, not {prompt[-1]['role']!r}", 2)
    return prompt


def _field(row: dict, field: str, where: str):
    if field not in row:
        raise HfpipeError(f"{where}: field '{field}' is missing", 2)
    return row[field]


def _messages(row: dict, field: str, where: str, roles: tuple[str, ...] = ROLES) -> list[dict]:
    return check_messages(_field(row, field, where), field, where, roles)


def _conversation(row: dict, where: str) -> dict:
    messages = _messages(row, "messages", where)
    if not any(m["role"] == "assistant" for m in messages):
        raise HfpipeError(f"{where}: field 'messages' has no assistant turn to learn from", 2)
    return _with_tools({"messages": messages}, row, where)


def load_conversations(path: Path) -> list[dict]:
    """SFT rows {"messages": [...]}, each with at least one assistant turn (the only tokens that carry loss)."""
    return [_conversation(row, f"{path}:{lineno}") for lineno, row in read_jsonl(path)]


def load_preferences(path: Path) -> list[dict]:
    """Preference rows {"prompt", "chosen", "rejected"}; chosen and rejected are assistant turns."""
    rows = []
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        rows.append(_with_tools({"prompt": check_prompt(_field(row, "prompt", where), where),
                                 "chosen": _messages(row, "chosen", where, ("assistant",)),
                                 "rejected": _messages(row, "rejected", where, ("assistant",))}, row, where))
    return rows


def split_holdout(rows: list[dict], fraction: float, field: str | None = None) -> tuple[list[dict], list[dict]]:
    """Hold out ~fraction of rows, chosen by a hash of the first user message of `field` (None: 'messages' where a
    row has them, else 'prompt'), so that rows sharing an opening question land on the same side (no question is
    both trained on and evaluated)."""

    def key(row: dict) -> str:
        messages = row[field] if field else (row.get("messages") or row["prompt"])
        first = next((m for m in messages if m["role"] == "user"), messages[0])
        return first["content"].strip().lower()

    share = {k: int(hashlib.sha256(k.encode()).hexdigest()[:8], 16) / 16**8 for k in {key(r) for r in rows}}
    return [r for r in rows if share[key(r)] >= fraction], [r for r in rows if share[key(r)] < fraction]


def load_split(dataset: str, eval_dataset: str | None, recipe_dir: Path, key: str, loader, eval_fraction: float,
               field: str = "prompt", decontaminator=None) -> tuple[list[dict], list[dict], Path, Path]:
    """(train rows, held-out rows, train file, held-out file) of one set: `eval_dataset` when given, else
    `eval_fraction` of `dataset` held out by split_holdout on `field`. `key` names the recipe key in errors. With
    ``decontaminator`` (hfpipe.posttrain.decontamination), training rows sharing an n-gram with an eval item are
    dropped (counted under the file's stem)."""
    train_path = resolve_dataset(dataset, recipe_dir, f"{key}.dataset")
    train_rows = loader(train_path)
    if eval_dataset is None:
        train_rows, eval_rows = split_holdout(train_rows, eval_fraction, field)
        eval_path = train_path
    else:
        eval_path = resolve_dataset(eval_dataset, recipe_dir, f"{key}.eval_dataset")
        eval_rows = loader(eval_path)
    if decontaminator is not None:
        train_rows = decontaminator.keep(train_rows, train_path.stem)
    return train_rows, eval_rows, train_path, eval_path


# ----------------------------------------------------------------------------------------------------------------------
# Mixtures: several sets in any TRL standard format, normalised, weighted, with provenance

Kind = Literal["conversation", "preference", "unpaired", "prompt"]
HOLDOUT = "holdout"


class DatasetSpec(BaseModel):
    """One set of a recipe's ``datasets:`` mixture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="'hfpipe:<file>' for a bundled set (hfpipe/datasets/README.md), or a "
                             "Hub dataset id (needs network)")
    path: str | None = Field(None, description="a local .jsonl, .json (a list) or .parquet file, relative to the recipe")
    weight: float = Field(1.0, gt=0.0, description="relative share of the training rows taken from this set "
                          "(rows are repeated when the share needs more than the set has)")
    split: str = Field("train", description="Hub split to train on (files: ignored)")
    eval: str | None = Field(None, description="held-out rows: a Hub split, a file ('hfpipe:<file>' or a path), or "
                             f"'{HOLDOUT}' (hold out the stage's eval_fraction of this set, grouped by first user turn); "
                             "null = the bundled '<file>_eval.jsonl' beside a bundled set, else as 'holdout'")
    subset: str | None = Field(None, description="Hub dataset configuration name")
    revision: str | None = Field(None, description="Hub revision (commit sha, tag or branch) to pin")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of 'name' (bundled 'hfpipe:<file>' or a Hub id) and 'path'")
        return self

    @property
    def label(self) -> str:
        """Short name used in metrics: the bundled/local file's stem, or the Hub id."""
        if self.path is not None:
            return Path(self.path).stem
        return Path(self.name.removeprefix(BUNDLED_PREFIX)).stem if self.is_bundled else self.name

    @property
    def is_bundled(self) -> bool:
        return self.name is not None and self.name.startswith(BUNDLED_PREFIX)

    def provenance(self) -> tuple[str, str, str]:
        """(real | synthetic | user, licence, source)."""
        if self.is_bundled:
            stem = self.label.removesuffix("_eval")
            for prefix, prov in sorted(BUNDLED_PROVENANCE.items(), key=lambda kv: -len(kv[0])):
                if stem.startswith(prefix):
                    return prov
        return ("user", "see source", self.name or self.path)


def _file_for(value: str, recipe_dir: Path, key: str) -> Path:
    path = resolve_dataset(value, recipe_dir, key)
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise HfpipeError(f"{key}: {path}: unsupported file type '{path.suffix}' (use .jsonl, .json or .parquet)", 2)
    return path


def spec_files(spec: DatasetSpec, recipe_dir: Path, key: str) -> list[Path]:
    """Local files a spec reads (train and held-out), for the stage's fingerprint. Hub sets have none."""
    files = []
    if spec.path is not None or spec.is_bundled:
        files.append(_file_for(spec.path or spec.name, recipe_dir, key))
    eval_file = _eval_file(spec, recipe_dir, key)
    if eval_file is not None:
        files.append(eval_file)
    return files


def _eval_file(spec: DatasetSpec, recipe_dir: Path, key: str) -> Path | None:
    if spec.eval == HOLDOUT:
        return None
    if spec.eval is not None and (spec.path is not None or spec.is_bundled or spec.eval.startswith(BUNDLED_PREFIX)):
        return _file_for(spec.eval, recipe_dir, f"{key}.eval")
    if spec.eval is None and spec.is_bundled:
        sibling = BUNDLED_DIR / f"{spec.label}_eval.jsonl"
        return sibling if sibling.is_file() else None
    return None


def _read_file(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for every row of a .jsonl / .json / .parquet file."""
    if path.suffix == ".jsonl":
        return [(f"{path}:{n}", row) for n, row in read_jsonl(path)]
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise HfpipeError(f"{path}: not valid JSON ({e})", 2) from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise HfpipeError(f"{path}: a .json dataset must be a list of objects (one per row)", 2)
        rows = data
    else:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise HfpipeError(f"{path}: not a readable parquet file ({first_line(e)})", 2) from None
    if not rows:
        raise HfpipeError(f"{path}: dataset is empty", 2)
    return [(f"{path} row {i}", r) for i, r in enumerate(rows, 1)]


def _read_hub(spec: DatasetSpec, split: str, key: str) -> list[tuple[str, dict]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(spec.name, spec.subset, split=split, revision=spec.revision)
    except Exception as e:  # noqa: BLE001 - offline, missing repo, bad split: all one line for the user
        raise HfpipeError(f"{key}: Hub dataset '{spec.name}' split '{split}' could not be loaded: {first_line(e)}",
                          2) from None
    if len(ds) == 0:
        raise HfpipeError(f"{key}: Hub dataset '{spec.name}' split '{split}' is empty", 2)
    return [(f"{spec.name}[{split}] row {i}", r) for i, r in enumerate(ds, 1)]


def read_spec(spec: DatasetSpec, recipe_dir: Path, key: str, held_out: bool = False) -> list[tuple[str, dict]] | None:
    """Raw (where, row) pairs of a spec's training rows, or of its held-out rows (None: none declared, so the caller
    holds out a fraction of the training rows)."""
    if not held_out:
        if spec.path is not None or spec.is_bundled:
            return _read_file(_file_for(spec.path or spec.name, recipe_dir, key))
        return _read_hub(spec, spec.split, key)
    eval_file = _eval_file(spec, recipe_dir, key)
    if eval_file is not None:
        return _read_file(eval_file)
    if spec.eval is not None and spec.eval != HOLDOUT:  # a Hub split
        return _read_hub(spec, spec.eval, key)
    return None


def _as_messages(value, role: str) -> list[dict] | object:
    """TRL's standard (plain-text) formats hold strings where the conversational ones hold message lists."""
    return [{"role": role, "content": value}] if isinstance(value, str) else value


def _implicit_prompt(row: dict, where: str) -> dict:
    """TRL's implicit-prompt preference rows: chosen/rejected are whole conversations sharing a prompt prefix."""
    chosen, rejected = row["chosen"], row["rejected"]
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise HfpipeError(f"{where}: field 'prompt' is missing (plain-text chosen/rejected need a prompt)", 2)
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise HfpipeError(f"{where}: field 'prompt' is missing and chosen/rejected share no prompt turns", 2)
    return {**row, "prompt": chosen[:n], "chosen": chosen[n:], "rejected": rejected[n:]}


def normalize_row(row: dict, kind: Kind, where: str) -> list[dict]:
    """One raw row in a TRL standard format -> the rows `kind` needs (a preference row gives two unpaired rows)."""
    if kind == "conversation":
        if "messages" not in row and "prompt" in row:
            if "completion" not in row:
                raise HfpipeError(f"{where}: field 'completion' is missing (a prompt-completion row needs both; "
                                  "or give 'messages')", 2)
            row = {"messages": _as_messages(row["prompt"], "user") + _as_messages(row["completion"], "assistant"),
                   **({"tools": row["tools"]} if row.get("tools") is not None else {})}
        return [_conversation(row, where)]
    if kind == "prompt":
        if "prompt" in row:
            prompt = check_messages(_as_messages(row["prompt"], "user"), "prompt", where)
        else:
            messages = _messages(row, "messages", where)
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            if last_user is None:
                raise HfpipeError(f"{where}: field 'messages' has no user turn to prompt with", 2)
            prompt = messages[: last_user + 1]
        return [_with_tools({"prompt": prompt}, row, where)]
    if kind == "unpaired" and "label" in row:
        if not isinstance(row["label"], bool):
            raise HfpipeError(f"{where}: field 'label' must be true (desirable) or false, got {row['label']!r}", 2)
        for f in ("prompt", "completion"):
            if f not in row:
                raise HfpipeError(f"{where}: field '{f}' is missing (an unpaired row needs prompt, completion, label)", 2)
        fixed = {"prompt": _as_messages(row["prompt"], "user"), "completion": _as_messages(row["completion"], "assistant")}
        out = {"prompt": check_messages(fixed["prompt"], "prompt", where),
               "completion": check_messages(fixed["completion"], "completion", where, ("assistant",)),
               "label": row["label"]}
        return [_with_tools(out, row, where)]
    # preference (or unpaired built from a pair)
    if "chosen" not in row or "rejected" not in row:
        missing = "chosen" if "chosen" not in row else "rejected"
        raise HfpipeError(f"{where}: field '{missing}' is missing (a preference row needs prompt, chosen, rejected)", 2)
    if "prompt" not in row:
        row = _implicit_prompt(row, where)
    fixed = {"prompt": _as_messages(row["prompt"], "user"), "chosen": _as_messages(row["chosen"], "assistant"),
             "rejected": _as_messages(row["rejected"], "assistant")}
    prompt = check_prompt(fixed["prompt"], where)
    chosen = check_messages(fixed["chosen"], "chosen", where, ("assistant",))
    rejected = check_messages(fixed["rejected"], "rejected", where, ("assistant",))
    if kind == "unpaired":
        return [_with_tools({"prompt": prompt, "completion": chosen, "label": True}, row, where),
                _with_tools({"prompt": prompt, "completion": rejected, "label": False}, row, where)]
    return [_with_tools({"prompt": prompt, "chosen": chosen, "rejected": rejected}, row, where)]


def normalize_rows(raw: list[tuple[str, dict]], kind: Kind) -> list[dict]:
    return [out for where, row in raw for out in normalize_row(row, kind, where)]


@dataclass
class Mixture:
    """Training rows (shuffled, weighted), held-out rows per set, and the achieved mixture for the metrics."""

    train: list[dict]
    eval: dict[str, list[dict]]
    report: dict[str, dict] = field(default_factory=dict)
    decontaminator: object = None  # hfpipe.posttrain.decontamination.Decontaminator that checked the training rows

    def eval_rows(self) -> list[dict]:
        return [r for rows in self.eval.values() for r in rows]

    def write_report(self, out_dir: Path, stage: str = "") -> None:
        """``out_dir/mixture.json``: the achieved mixture, with each set's provenance; and ``contamination.json``
        when the training rows were checked against the eval plan (``stage`` names it there)."""
        (out_dir / "mixture.json").write_text(json.dumps(self.report, indent=2) + "\n")
        if self.decontaminator is not None:
            self.decontaminator.write(out_dir, stage)

    def summary(self) -> dict[str, str]:
        """One short line per set (fits a model-card table cell): achieved share, rows, provenance."""
        return {label: f"{r['share']:.2f} of train ({r['rows_used']} rows, {r['epochs']:.2f}x), {r['kind']}, "
                       f"{r['license']}" for label, r in self.report.items()}


def load_mixture(specs: list[DatasetSpec], kind: Kind, recipe_dir: Path, key: str, seed: int,
                 eval_fraction: float, mixture_rows: int | None = None, decontaminator=None) -> Mixture:
    """Read, normalise, split and weight every set. Rows per set = round(total * weight / sum of weights), where
    total = mixture_rows or the sum of the sets' training rows; a set is sampled without replacement, in whole passes
    when its share is larger than the set (the report says how many passes: ``epochs``). With ``decontaminator``
    (hfpipe.posttrain.decontamination), training rows sharing an n-gram with an eval item are dropped first."""
    if not specs:
        raise HfpipeError(f"{key}: the mixture has no datasets", 2)
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise HfpipeError(f"{key}: two sets share the name {sorted(x for x in labels if labels.count(x) > 1)[0]!r}; "
                          "rename one file", 2)
    trains, evals = {}, {}
    for i, spec in enumerate(specs):
        where = f"{key}[{i}]" if len(specs) > 1 else key
        train = normalize_rows(read_spec(spec, recipe_dir, where), kind)
        held_raw = read_spec(spec, recipe_dir, where, held_out=True)
        if held_raw is None:
            train, held = split_holdout(train, eval_fraction)
        else:
            held = normalize_rows(held_raw, kind)
        if decontaminator is not None:
            train = decontaminator.keep(train, spec.label)
        if not train or not held:
            raise HfpipeError(f"{where}: set '{spec.label}' has {len(train)} training and {len(held)} held-out rows "
                              "after the split; give it more rows, an 'eval' file, or change eval_fraction", 2)
        trains[spec.label], evals[spec.label] = train, held

    total = mixture_rows or sum(len(t) for t in trains.values())
    weight_sum = sum(s.weight for s in specs)
    mixed, report = [], {}
    for spec in specs:
        rows = trains[spec.label]
        want = max(1, round(total * spec.weight / weight_sum))
        rng = random.Random(f"{seed}:{spec.label}")
        picked = []
        while len(picked) < want:
            order = list(range(len(rows)))
            rng.shuffle(order)
            picked += [rows[j] for j in order[: want - len(picked)]]
        mixed += picked
        kind_, licence, source = spec.provenance()
        report[spec.label] = {"weight": spec.weight, "target_share": round(spec.weight / weight_sum, 4),
                              "rows_available": len(rows), "rows_used": len(picked),
                              "epochs": round(len(picked) / len(rows), 3), "eval_rows": len(evals[spec.label]),
                              "kind": kind_, "license": licence, "source": source}
    for r in report.values():
        r["share"] = round(r["rows_used"] / len(mixed), 4)
    random.Random(seed).shuffle(mixed)
    return Mixture(train=mixed, eval=evals, report=report, decontaminator=decontaminator)


# ----------------------------------------------------------------------------------------------------------------------
# A stage's mixture: its `datasets`, or its one `dataset` (+ `eval_dataset`)


def dataset_specs(config) -> list[DatasetSpec]:
    """The mixture a post-training config names: `datasets`, or the single `dataset` (+ `eval_dataset`)."""
    if config.datasets is not None:
        return list(config.datasets)
    as_spec = {"name": config.dataset} if config.dataset.startswith(BUNDLED_PREFIX) else {"path": config.dataset}
    return [DatasetSpec(**as_spec, eval=config.eval_dataset or HOLDOUT)]


def mixture_files(config, recipe_dir: Path, stage: str) -> list[Path]:
    """The local files a stage's mixture reads (its input_files, for the fingerprint)."""
    return [f for i, s in enumerate(dataset_specs(config)) for f in spec_files(s, recipe_dir, f"{stage}.datasets[{i}]")]


def mixture_pins(config, recipe_dir: Path, stage: str) -> dict[str, dict]:
    """For the fingerprint (a TRL stage's ``pins``): every Hub dataset of the mixture by the commit its revision
    resolves to (hfpipe.models.pin)."""
    from hfpipe.models import pin

    return {f"{stage}.datasets[{i}]": pin(s.name, recipe_dir, revision=s.revision, repo_type="dataset")
            for i, s in enumerate(dataset_specs(config)) if s.path is None and not s.is_bundled}


def load_stage_mixture(config, stage: str, kind: Kind, recipe_dir: Path, seed: int) -> tuple[Mixture, str]:
    """The mixture a stage's config names, loaded (load_mixture), and the recipe key its errors name."""
    from hfpipe.posttrain.decontamination import Decontaminator

    key = f"{stage}.datasets" if config.datasets is not None else f"{stage}.dataset"
    return load_mixture(dataset_specs(config), kind, recipe_dir, key, seed, config.eval_fraction,
                        config.mixture_rows, Decontaminator.from_config(config)), key
