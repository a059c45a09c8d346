"""`hfpipe chat RECIPE [--variant full|int8|int4|gguf-<type>]`: talk to the exported model in the terminal.

Every turn is rendered by the export's chat template (the tokenizer stage's, sha256-checked against the GGUF's own
metadata for GGUF variants) and answered greedily until the end-of-turn token: by transformers for the safetensors
export and its quantized variants, by llama.cpp (llama-cpp-python, the hfpipe[gguf] extra) for a GGUF file. One line
of input is one user turn; an empty line, ``/exit`` or end of input ends the chat. Older turns are dropped when the
conversation outgrows the model's context.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hfpipe.errors import HfpipeError


class _Transformers:
    def __init__(self, folder: Path):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.eos = GenerationConfig.from_pretrained(folder).eos_token_id
        self.n_ctx = self.model.config.max_position_embeddings

    def reply(self, ids: list[int], max_new: int) -> list[int]:
        import torch

        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                                      attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        return out[0, len(ids):].tolist()


class _LlamaCpp:
    def __init__(self, path: Path, n_ctx: int, eos: list[int]):
        from hfpipe.stages.deploy import llamacpp

        self.llm, self.n_ctx, self.eos = llamacpp.load(path, n_ctx), n_ctx, set(eos)
        self.greedy = llamacpp.greedy

    def reply(self, ids: list[int], max_new: int) -> list[int]:
        return self.greedy(self.llm, ids, max_new, stop=self.eos)[0]


def open_variant(export: Path, variant: str, tokenizer):
    """The engine answering for ``variant`` of the export in ``export``."""
    from transformers import GenerationConfig

    if variant.startswith("gguf-"):
        from hfpipe.posttrain.templates import template_sha256
        from hfpipe.stages.deploy import llamacpp

        files = sorted((export / "gguf").glob(f"*-{variant[5:]}.gguf"))
        if not files:
            have = sorted(p.stem.rsplit("-", 1)[-1] for p in (export / "gguf").glob("*.gguf"))
            raise HfpipeError(f"chat: --variant {variant}: no such GGUF file in {export / 'gguf'} (there: "
                              f"{', '.join('gguf-' + h for h in have) or 'none; set deploy.gguf'})", 2)
        if not llamacpp.available():
            raise HfpipeError(f"chat: --variant {variant} runs in llama.cpp: {llamacpp.INSTALL}", 2)
        import gguf

        field = gguf.GGUFReader(files[0]).get_field("tokenizer.chat_template")
        theirs, ours = template_sha256(field.contents() if field else None), template_sha256(tokenizer.chat_template)
        if theirs != ours:
            raise HfpipeError(f"chat: {files[0].name}'s chat template has sha256 {theirs}, the export's {ours}", 1)
        gen = GenerationConfig.from_pretrained(export)
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
        import json

        n_ctx = json.loads((export / "config.json").read_text())["max_position_embeddings"]
        return _LlamaCpp(files[0], n_ctx, eos)
    folder = export if variant == "full" else export / "quantized" / variant
    if not (folder / "config.json").is_file():
        raise HfpipeError(f"chat: --variant {variant}: {folder} does not exist (deploy.quantize makes int8/int4)", 2)
    return _Transformers(folder)


def chat(export: Path, variant: str, max_new_tokens: int, system: str | None = None, stdin=None, stdout=None) -> int:
    """The read-answer loop; returns the number of answered turns."""
    from transformers import AutoTokenizer

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tokenizer = AutoTokenizer.from_pretrained(export)
    if not tokenizer.chat_template:
        raise HfpipeError(f"chat: the export in {export} has no chat template", 1)
    engine = open_variant(export, variant, tokenizer)
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    tty = stdin.isatty()
    print(f"chat with {export.parent.parent.name}/{variant} ({'llama.cpp' if isinstance(engine, _LlamaCpp) else 'transformers'}); "
          "an empty line or /exit ends it", file=stdout, flush=True)
    turns = 0
    while True:
        if tty:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() in ("", "/exit"):
            break
        messages.append({"role": "user", "content": line.rstrip("\n")})
        while True:  # drop the oldest turns (never the system turn) until prompt + answer fit the context
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            first = 1 if messages[0]["role"] == "system" else 0
            if len(ids) + max_new_tokens <= engine.n_ctx or len(messages) - first <= 1:
                break
            del messages[first:first + 2]
        if len(ids) + max_new_tokens > engine.n_ctx:
            raise HfpipeError(f"chat: the turn takes {len(ids)} tokens; with --max-new-tokens {max_new_tokens} "
                              f"that exceeds the model's context of {engine.n_ctx}", 2)
        new = engine.reply(ids, max_new_tokens)
        text = tokenizer.decode(new, skip_special_tokens=True)
        print(f"assistant> {text}", file=stdout, flush=True)
        messages.append({"role": "assistant", "content": text})
        turns += 1
    return turns
