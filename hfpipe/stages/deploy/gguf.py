"""GGUF export for llama.cpp / Ollama, written with the ``gguf`` package's ``GGUFWriter``, and its proof.

``write_gguf`` writes what llama.cpp's ``convert_hf_to_gguf.py`` writes for a Llama model: ``llama.*`` hyper-parameters,
tensors under llama.cpp's names (``gguf.TensorNameMap``) with the query/key rows permuted for its rotary layout, the
byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``: tokens, token types, merges, special ids), the
pre-tokenizer llama.cpp must run to split text as the trained tokenizer does (``tokenizer.ggml.pre``, see
``llama_pre_type``) and the chat template. ``check_gguf`` loads the file back with transformers alone
(``from_pretrained(dir, gguf_file=...)``), then compares logits and tokenization with the source model; the
measurement in llama.cpp itself (and the K-quants made by llama.cpp's quantizer) is ``hfpipe.stages.deploy.llamacpp``.
"""

from __future__ import annotations

import json
from pathlib import Path

from hfpipe.errors import HfpipeError

# GGUF tensor types offered by the deploy stage: name -> (gguf.GGMLQuantizationType name, llama.cpp file type id)
GGUF_TYPES = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2)}
# made only by llama.cpp's quantizer from the f16 file (llama_model_quantize): name -> llama.cpp file type id
LLAMA_CPP_ONLY = {"q4_k_m": 15, "q5_k_m": 17}

# ---- which llama.cpp pre-tokenizer splits text as the trained tokenizer does
# llama.cpp's converter (convert_hf_to_gguf.py, get_vocab_base_pre) identifies a model's pre-tokenizer by hashing the
# tokenizer's output on this check string. A tokenizer trained here has its own vocabulary, so the ids of no known
# model match: the same string is cut by the tokenizer's pre-tokenizer and by each llama.cpp type's rules (written as
# HF `tokenizers` pre-tokenizers below), and the type whose pieces hash the same is the one llama.cpp must run.
CHKTXT = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis "
          "concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
          "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e "
          "------======= \u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 ''''''```````\"\"\"\"......!!!!!!?????? I've been "
          "'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
_QWEN2 = _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
# the runtimes that run llama.cpp's tokenizer from the file's metadata, so the GGUF reads text exactly as trained there
LLAMA_CPP_RUNTIMES = "llama.cpp, llama-cpp-python, Ollama, LM Studio"


def _reference_pre_tokenizers() -> dict:
    """llama.cpp pre-tokenizer types (``tokenizer.ggml.pre``) and the same rules as HF pre-tokenizers (llama.cpp's
    llama-vocab.cpp: gpt-2 = the GPT-2 regex; smollm = each digit alone, then the GPT-2 regex; llama-bpe / qwen2 = their
    split regex, then bytes)."""
    from tokenizers import Regex, pre_tokenizers as pt

    gpt2 = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    byte = pt.ByteLevel(add_prefix_space=False, use_regex=False)
    return {"smollm": pt.Sequence([pt.Digits(individual_digits=True), gpt2]), "gpt-2": gpt2,
            "llama-bpe": pt.Sequence([pt.Split(Regex(_LLAMA3), "isolated"), byte]),
            "qwen2": pt.Sequence([pt.Split(Regex(_QWEN2), "isolated"), byte])}


def _pieces_hash(pre_tokenizer, texts: list[str]) -> str:
    import hashlib

    return hashlib.sha256(repr([[p for p, _ in pre_tokenizer.pre_tokenize_str(t)] for t in texts]).encode()).hexdigest()


def llama_pre_type(tokenizer, texts: tuple[str, ...] = ()) -> str:
    """The llama.cpp pre-tokenizer type that cuts ``CHKTXT`` (and ``texts``) into the same pieces as the tokenizer's
    own pre-tokenizer; one error naming ``tokenizer.pre_tokenizer`` when none does."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    backend = tokenizer.backend_tokenizer
    what = json.dumps(spec.get("pre_tokenizer"))[:120]
    if backend.pre_tokenizer is not None and spec.get("normalizer") is None:
        checks = [CHKTXT, *texts]
        ours = _pieces_hash(backend.pre_tokenizer, checks)
        for name, pre in _reference_pre_tokenizers().items():
            if _pieces_hash(pre, checks) == ours:
                return name
    raise HfpipeError(f"deploy.gguf: the tokenizer's pre-tokenizer ({what}{', with a normalizer' if spec.get('normalizer') else ''}) "
                      f"has no llama.cpp equivalent, so a GGUF would read text differently in llama.cpp/Ollama than in "
                      f"training; use tokenizer.pre_tokenizer: byte_level (with split_digits true or false) or set "
                      f"deploy.gguf: []", 1)


def _permute(w, n_head: int, n_head_kv: int):
    """llama.cpp's q/k row order (convert_hf_to_gguf.py LlamaModel.permute); transformers reverses it on load."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _vocab(tokenizer) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, GGUF token types, merges) of a byte-level BPE tokenizer; anything else is refused."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise HfpipeError(f"deploy.gguf: only byte-level BPE tokenizers can be written to GGUF here (this one is "
                          f"{model.get('type')}); set deploy.gguf: [] or use tokenizer.model: bpe", 1)
    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise HfpipeError("deploy.gguf: the tokenizer's ids are not contiguous from 0; GGUF needs one token per id", 1)
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values() if not t.special}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED if t in added
             else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, [int(t) for t in types], merges


def write_gguf(model, tokenizer, path: Path, gguf_type: str, name: str, pre_type: str | None = None) -> Path:
    """Write ``model`` (a transformers Llama in memory) and its tokenizer as one GGUF file (``pre_type``: llama.cpp's
    pre-tokenizer, ``llama_pre_type(tokenizer)`` when not given)."""
    import gguf
    import numpy as np
    import torch

    cfg = model.config
    if cfg.model_type not in ("llama",):
        raise HfpipeError(f"deploy.gguf: GGUF export supports model_type 'llama' (the tensor names and rotary layout "
                          f"llama.cpp expects); this model is '{cfg.model_type}'", 1)
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[gguf_type][0])
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    if rope.get("rope_type", "default") != "default":
        raise HfpipeError(f"deploy.gguf: rope scaling '{rope.get('rope_type')}' is not written to GGUF here", 1)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    # ---- hyper-parameters
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(GGUF_TYPES[gguf_type][1])
    # ---- tokenizer
    tokens, types, merges = _vocab(tokenizer)
    if len(tokens) != cfg.vocab_size:
        raise HfpipeError(f"deploy.gguf: tokenizer has {len(tokens)} tokens, the model's vocab_size is "
                          f"{cfg.vocab_size}; GGUF needs them equal", 1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_type or llama_pre_type(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, tok_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                        (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if tok_id is not None:
            add(int(tok_id))
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    # ---- tensors, under llama.cpp's names
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        gg_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gg_name is None or "rotary_emb" in hf_name:
            if "rotary_emb" in hf_name:
                continue
            raise HfpipeError(f"deploy.gguf: no llama.cpp name for tensor '{hf_name}'", 1)
        data = tensor.detach().to(torch.float32).numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_head, n_kv)
        # 1-D tensors (norms) stay float32, as llama.cpp's converter keeps them; so do rows that do not fill a block
        t = qtype
        if data.ndim == 1 or (t not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                        gguf.GGMLQuantizationType.BF16)
                              and data.shape[-1] % gguf.GGML_QUANT_SIZES[t][0]):
            t = gguf.GGMLQuantizationType.F32
        if t == gguf.GGMLQuantizationType.F32:
            out = np.ascontiguousarray(data)
        elif t == gguf.GGMLQuantizationType.F16:
            out = np.ascontiguousarray(data.astype(np.float16))
        else:
            out = gguf.quants.quantize(data, t)
        writer.add_tensor(gg_name, out, raw_dtype=None if t in (gguf.GGMLQuantizationType.F32,
                                                               gguf.GGMLQuantizationType.F16) else t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def transformers_reads(model_type: str) -> bool:
    """Whether transformers can load a GGUF of this architecture back (its GGUF tensor/config maps)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return model_type in GGUF_CONFIG_MAPPING


def check_gguf(path: Path, model, tokenizer, texts: list[str], max_tokens: int) -> dict:
    """Load the GGUF file back with plain transformers; logits and tokenization against the source model."""
    from importlib import metadata

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    same_tokens, n_tokens, max_diff, sq_err, sq_dev, argmax_same, n_pos = 0, 0, 0.0, 0.0, 0.0, 0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        other = gguf_tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
        same_tokens += sum(a == b for a, b in zip(ids, other))
        n_tokens += len(ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            a, b = model(x).logits.float(), loaded(x).logits.float()
        max_diff = max(max_diff, (a - b).abs().max().item())
        sq_err += ((a - b) ** 2).sum().item()
        sq_dev += ((a - a.mean(-1, keepdim=True)) ** 2).sum().item()
        argmax_same += (a.argmax(-1) == b.argmax(-1)).sum().item()
        n_pos += a.shape[1]
    return {"writer": f"gguf {metadata.version('gguf')}", "bytes": path.stat().st_size,
            "max_abs_logit_diff": max_diff,
            # RMS logit error relative to the logits' own spread: quantization error grows with the weights' scale,
            # which training changes, and the max |diff| is one outlier (tiny recipe after rl: q8_0 max |diff| 1.43,
            # relative RMSE 0.008, argmax agreement 0.999)
            "logit_rel_rmse": (sq_err / max(sq_dev, 1e-12)) ** 0.5,
            "argmax_agreement": argmax_same / max(1, n_pos), "token_agreement": same_tokens / max(1, n_tokens),
            "chat_template_kept": bool(gguf_tok.chat_template) == bool(tokenizer.chat_template)}
