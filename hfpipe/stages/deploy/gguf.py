"""GGUF export for llama.cpp / Ollama, written with the ``gguf`` package's ``GGUFWriter``, and its proof.

``write_gguf`` writes what llama.cpp's ``convert_hf_to_gguf.py`` writes for a Llama model: ``llama.*`` hyper-parameters,
tensors under llama.cpp's names (``gguf.TensorNameMap``) with the query/key rows permuted for its rotary layout, the
byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``: tokens, token types, merges, special ids) and the chat
template. ``check_gguf`` loads the file back with transformers alone (``from_pretrained(dir, gguf_file=...)``), then
compares logits and tokenization with the source model.
"""

from __future__ import annotations

import json
from pathlib import Path

from hfpipe.errors import HfpipeError

# GGUF tensor types offered by the deploy stage: name -> (gguf.GGMLQuantizationType name, llama.cpp file type id)
GGUF_TYPES = {"f32": ("F32", 0), "f16": ("F16", 1), "bf16": ("BF16", 32), "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2)}


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


def write_gguf(model, tokenizer, path: Path, gguf_type: str, name: str) -> Path:
    """Write ``model`` (a transformers Llama in memory) and its tokenizer as one GGUF file."""
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
    writer.add_tokenizer_pre("default")
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
