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
