"""What post-training does to the language model: held-out bits per byte before and after a stage, and the KL of the
trained policy to the starting one.

- ``heldout_bpb``: bits per byte on the bundled held-out text (hfpipe/tasks/heldout/{prose,code,udhr}.jsonl, the
  eval stage's heldout_* tasks), scored by lm-eval's own HFLM ``loglikelihood_rolling`` on the in-memory model, so the
  number is the eval stage's ``bits_per_byte`` (lm-eval's aggregation: -sum(log-likelihood) / sum(UTF-8 bytes) /
  ln 2);
- ``check_bpb_rise``: the recipe's limit on how far a stage may raise it (fail, or warn on the hfpipe logger);
- ``policy_kl``: mean per-token KL(policy || start) over the held-out prompts, exact over the vocabulary at every
  position of the chat-templated prompt and its reference answer (teacher-forced, so before = 0 and no sampling).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Literal

from pydantic import Field

from hfpipe.errors import HfpipeError
from hfpipe.resources import TASKS, package_file
from hfpipe.stages import StageConfig

HELDOUT_DOMAINS = ("prose", "code", "udhr")


class HeldoutKeys(StageConfig):
    """The recipe keys of a post-training stage's guard on the language model it starts from."""

    heldout_bpb_max_rise: float | None = Field(None, ge=0.0, description="largest allowed rise of held-out bits per "
                                               "byte (prose, code, UDHR; measured before and after the stage) as a "
                                               "fraction of the value before, e.g. 0.1 = 10%; null = measure only")
    heldout_bpb_action: Literal["fail", "warn"] = Field("fail", description="when heldout_bpb_max_rise is exceeded: "
                                                        "fail the stage (exit 1, nothing saved) or warn and keep it")


def heldout_texts() -> dict[str, list[str]]:
    """{domain: documents} of the bundled held-out sets."""
    folder = package_file(TASKS, "heldout")
    return {d: [json.loads(line)["text"] for line in (folder / f"{d}.jsonl").read_text(encoding="utf-8").splitlines()
                if line.strip()] for d in HELDOUT_DOMAINS}


def heldout_bpb(model, tokenizer, batch_size: int = 8) -> dict[str, float]:
    """{domain: bits per byte} of ``model`` on the bundled held-out documents (lm-eval HFLM, rolling windows of the
    model's context)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = {}
    for domain, docs in heldout_texts().items():
        requests = [Instance(request_type="loglikelihood_rolling", doc={"text": t}, arguments=(t,), idx=i)
                    for i, t in enumerate(docs)]
        lls = lm.loglikelihood_rolling(requests, disable_tqdm=True)
        out[domain] = -sum(lls) / sum(len(t.encode("utf-8")) for t in docs) / math.log(2)
    model.train(was_training)
    return out


def bpb_metrics(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Flat metrics: heldout_bpb_<domain>_before / _after."""
    return {**{f"heldout_bpb_{d}_before": round(v, 5) for d, v in before.items()},
            **{f"heldout_bpb_{d}_after": round(v, 5) for d, v in after.items()}}


def check_bpb_rise(stage: str, before: dict[str, float], after: dict[str, float], max_rise: float | None,
                   action: str, key: str) -> list[str]:
    """The domains whose bits per byte rose by more than ``max_rise`` (a fraction of before). ``action`` "fail":
    one line naming them and the recipe key (exit 1); "warn": a warning on the hfpipe logger. None: no limit."""
    if max_rise is None:
        return []
    over = [d for d in before if after[d] > before[d] * (1 + max_rise)]
    if over:
        detail = ", ".join(f"{d} {before[d]:.3f} -> {after[d]:.3f} (+{100 * (after[d] / before[d] - 1):.0f}%)"
                           for d in over)
        message = f"{stage}: held-out bits per byte rose more than {100 * max_rise:g}% ({detail}); limit {key}"
        if action == "fail":
            raise HfpipeError(message, 1)
        logging.getLogger("hfpipe").warning(message)
    return over


def policy_kl(policy, start, tokenizer, rows: list[dict], max_length: int, batch_size: int = 8) -> float:
    """Mean per-token KL(policy || start) in nats over the chat-templated held-out prompts (``rows``: {"prompt",
    optional "answer"}), every position's full next-token distribution, sequences cut at ``max_length``."""
    import torch

    texts = []
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        texts.append(text + (row.get("answer") or ""))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    modes = (policy.training, start.training)
    policy.eval(), start.eval()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            chunk = ids[i:i + batch_size]
            width = max(len(s) for s in chunk)
            x = torch.tensor([s + [pad] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            p = torch.log_softmax(policy(input_ids=x.to(policy.device), attention_mask=mask.to(policy.device))
                                  .logits.float(), -1)
            q = torch.log_softmax(start(input_ids=x.to(start.device), attention_mask=mask.to(start.device))
                                  .logits.float(), -1).to(p.device)
            kl = (p.exp() * (p - q)).sum(-1)  # [batch, positions]
            m = mask.to(kl.device).bool()
            total += kl[m].sum().item()
            count += int(m.sum())
    policy.train(modes[0]), start.train(modes[1])
    return total / max(count, 1)
