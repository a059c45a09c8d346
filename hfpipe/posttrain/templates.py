"""Chat templates for assistant-only loss: the model's own template with {% generation %} markers around assistant
turns, which is what TRL masks the loss by. A stage trains with it and saves the model with the template it came
with (hfpipe.posttrain.trainer.save_and_check)."""

from __future__ import annotations

from hfpipe.errors import HfpipeError

# The per-message line of ChatML templates that mark nothing (SmolLM2's, among others), and its marked replacement.
_CHATML_LINE = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
_CHATML_MARKED = ("{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
                  "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
                  + _CHATML_LINE + "{% endif %}")


def training_chat_template(tokenizer, key: str) -> str:
    """The template with {% generation %} around assistant turns (what TRL's assistant-only loss masks by).

    Kept as is when it has markers; else TRL's own patched copy for the families it knows; else a ChatML template of
    the plain per-message form (SmolLM2's) gets the markers, rendering the same text. Anything else is one error
    naming ``key``."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if template is None:
        raise HfpipeError(f"{key}: the model's tokenizer has no chat template", 2)
    if has_generation_markers(template):
        return template
    if _CHATML_LINE in template:
        return template.replace(_CHATML_LINE, _CHATML_MARKED)
    try:
        return get_training_chat_template(tokenizer) or template
    except ValueError:
        raise HfpipeError(f"{key}: the model's chat template has no {{% generation %}} markers and is not one hfpipe or "
                          "TRL can patch; add them to the template or set assistant_only_loss: false", 2) from None


# ----------------------------------------------------------------------------------------------------------------------
# One chat-template contract from the tokenizer stage to every runtime

CONTRACT_FILE = "chat_template.sha256"  # written by every stage that checks the contract, read by the next one


def template_sha256(template: str | None) -> str | None:
    import hashlib

    return hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None


def expected_template(inputs) -> tuple[str, str] | None:
    """(sha256, where it comes from) of the chat template this stage must use: the tokenizer stage's when it is
    upstream, else the one the upstream stage recorded (model stages, eval and deploy write ``CONTRACT_FILE``; each
    checked it against its own upstream, back to the tokenizer stage); None for a run that starts from a base model."""
    import json

    m = (inputs.manifests.get("tokenizer") or {}).get("metrics") or {}
    if m.get("chat_template_sha256"):
        return m["chat_template_sha256"], "the tokenizer stage"
    for stage in (inputs.model_stage, "deploy"):
        folder = inputs.upstream.get(stage) if stage else None
        if folder is not None and (folder / CONTRACT_FILE).is_file():
            rec = json.loads((folder / CONTRACT_FILE).read_text())
            return rec["sha256"], rec.get("origin") or f"the {stage} stage"
    return None


def check_template(stage: str, inputs, template: str | None, out_dir=None, what: str = "the chat template") -> str | None:
    """The contract: ``template`` (what this stage uses or writes) has the sha256 of the tokenizer stage's template;
    a mismatch fails this stage with both hashes. With ``out_dir`` the hash and its origin are recorded there for the
    next stage. Returns the sha256."""
    import json
    from pathlib import Path

    sha = template_sha256(template)
    expected = expected_template(inputs)
    if expected is not None and sha != expected[0]:
        raise HfpipeError(f"{stage}: {what} has sha256 {sha}, but {expected[1]} fixed {expected[0]}; one chat template "
                          "must run from the tokenizer stage to every runtime (the template changed after the "
                          "tokenizer stage: re-run from there, or give the tokenizer stage this template)", 1)
    if out_dir is not None and sha is not None:
        origin = expected[1] if expected else (f"the {inputs.model_stage} model" if inputs.model_stage
                                               else "the base model")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / CONTRACT_FILE).write_text(json.dumps({"sha256": sha, "origin": origin}) + "\n")
    return sha
