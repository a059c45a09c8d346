"""Which capability each eval task measures, for the model card's evaluation table: an area (knowledge, reasoning,
multilingual, math, coding, safety, jailbreak, tool use, structured output, held-out perplexity) and one line saying
what the task measures.

hfpipe's bundled tasks carry both in their lm-eval task YAML (``metadata: {area, description}``, hfpipe/tasks/), and
the eval stage records them in results.json from the task config lm-eval reports (a results.json written before it
did: read from the bundled YAML). Tasks of lm-eval's own registry carry none: ``REGISTRY`` names the well-known ones
(exact names, then name prefixes for families such as ``mmlu_*``); any other task is ``other``.
"""

from __future__ import annotations

import functools

from hfpipe.resources import TASKS, package_file

AREAS = ("knowledge", "reasoning", "multilingual", "math", "coding", "safety", "jailbreak", "tool use",
         "structured output", "held-out perplexity")
OTHER = "other"

# lm-eval registry task (or family prefix, ending in "_") -> (area, what it measures)
REGISTRY: dict[str, tuple[str, str]] = {
    "mmlu": ("knowledge", "57-subject multiple-choice exam questions (MMLU)"),
    "mmlu_": ("knowledge", "one MMLU subject's multiple-choice exam questions"),
    "mmlu_pro": ("knowledge", "harder 10-way multiple-choice exam questions (MMLU-Pro)"),
    "arc_easy": ("knowledge", "grade-school science questions, easy set (ARC)"),
    "arc_challenge": ("reasoning", "grade-school science questions that need reasoning (ARC-Challenge)"),
    "openbookqa": ("knowledge", "science questions needing a fact and common sense (OpenBookQA)"),
    "sciq": ("knowledge", "science exam questions with a support paragraph (SciQ)"),
    "triviaqa": ("knowledge", "trivia questions answered without context (TriviaQA)"),
    "nq_open": ("knowledge", "Google search questions answered without context (Natural Questions)"),
    "boolq": ("knowledge", "yes/no questions about a Wikipedia paragraph (BoolQ)"),
    "hellaswag": ("reasoning", "choosing the plausible continuation of an everyday scene (HellaSwag)"),
    "piqa": ("reasoning", "physical common sense: which of two solutions works (PIQA)"),
    "winogrande": ("reasoning", "pronoun resolution that needs common sense (WinoGrande)"),
    "siqa": ("reasoning", "social common sense about people's motives and reactions (Social IQa)"),
    "commonsense_qa": ("reasoning", "common-sense multiple-choice questions (CommonsenseQA)"),
    "copa": ("reasoning", "choosing the cause or effect of a premise (COPA)"),
    "bbh": ("reasoning", "23 hard BIG-Bench tasks (BBH)"),
    "bbh_": ("reasoning", "one hard BIG-Bench task (BBH)"),
    "lambada_openai": ("reasoning", "predicting a passage's last word from its whole context (LAMBADA)"),
    "gsm8k": ("math", "grade-school word problems, final number exact (GSM8K)"),
    "gsm8k_cot": ("math", "grade-school word problems with chain-of-thought prompts (GSM8K)"),
    "minerva_math": ("math", "competition mathematics (MATH, Minerva prompts)"),
    "minerva_math_": ("math", "one subject of competition mathematics (MATH)"),
    "hendrycks_math": ("math", "competition mathematics (MATH)"),
    "mathqa": ("math", "multiple-choice math word problems (MathQA)"),
    "humaneval": ("coding", "Python functions from docstrings, checked by unit tests (HumanEval)"),
    "mbpp": ("coding", "short Python programs from a description, checked by tests (MBPP)"),
    "truthfulqa": ("safety", "avoiding common misconceptions and falsehoods (TruthfulQA)"),
    "truthfulqa_": ("safety", "avoiding common misconceptions and falsehoods (TruthfulQA)"),
    "toxigen": ("safety", "telling toxic from benign statements about groups (ToxiGen)"),
    "crows_pairs": ("safety", "preference for stereotyped sentences (CrowS-Pairs; lower is better)"),
    "crows_pairs_": ("safety", "preference for stereotyped sentences (CrowS-Pairs; lower is better)"),
    "ifeval": ("structured output", "following verifiable format instructions (IFEval)"),
    "xnli": ("multilingual", "natural-language inference in 15 languages (XNLI)"),
    "xnli_": ("multilingual", "natural-language inference in one language (XNLI)"),
    "xcopa": ("multilingual", "causal common sense in 11 languages (XCOPA)"),
    "xcopa_": ("multilingual", "causal common sense in one language (XCOPA)"),
    "xstorycloze": ("multilingual", "story endings in 11 languages (XStoryCloze)"),
    "xstorycloze_": ("multilingual", "story endings in one language (XStoryCloze)"),
    "xwinograd": ("multilingual", "pronoun resolution in 6 languages (XWinograd)"),
    "belebele": ("multilingual", "reading comprehension in 122 languages (Belebele)"),
    "belebele_": ("multilingual", "reading comprehension in one language (Belebele)"),
    "mgsm_": ("multilingual", "grade-school math in one language (MGSM)"),
    "global_mmlu_": ("multilingual", "MMLU translated into one language (Global-MMLU)"),
    "m_mmlu_": ("multilingual", "MMLU machine-translated into one language"),
    "wikitext": ("held-out perplexity", "word perplexity and bits per byte on Wikipedia articles (WikiText-2)"),
    "pile_": ("held-out perplexity", "bits per byte on one subset of the Pile"),
}


def area_of(task: str, metadata: dict | None = None) -> tuple[str, str]:
    """(area, what it measures) of a task: its task metadata (as lm-eval reports it, else from the bundled task YAML)
    first, then REGISTRY (exact name, then the longest matching family prefix), else ("other", "")."""
    meta = metadata if isinstance(metadata, dict) and metadata.get("area") else bundled_metadata(task)
    if meta.get("area"):
        return str(meta["area"]), str(meta.get("description") or "")
    if task in REGISTRY:
        return REGISTRY[task]
    prefixes = [p for p in REGISTRY if p.endswith("_") and task.startswith(p)]
    return REGISTRY[max(prefixes, key=len)] if prefixes else (OTHER, "")


@functools.lru_cache(maxsize=None)
def bundled_metadata(task: str) -> dict:
    """The ``metadata`` of hfpipe's bundled task YAML ``hfpipe/tasks/<task>.yaml`` ({} when there is none)."""
    import yaml

    class Loader(yaml.SafeLoader):  # lm-eval's `!function module.name` tags: not needed here
        pass

    Loader.add_constructor("!function", lambda loader, node: None)
    path = package_file(TASKS, f"{task}.yaml")
    try:
        meta = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader).get("metadata")
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    return meta if isinstance(meta, dict) else {}
