"""The data stage's filter steps by name: ``STEP_BUILDERS``, the one registry a recipe's ``data.chains`` is built
through, and ``domain_steps``, one domain's chain from it.

Every step is a datatrove ``PipelineStep``; filters subclass ``BaseFilter`` and drop with ``(False, reason)``, so every
drop is counted as ``dropped_<reason>`` in datatrove's stats.json. Extra per-step counters use ``stat_update``. The
data stage exposes the constructor arguments as recipe keys. One step family per module:

- ``quality``          FastWordTokenizer, FastGopherQualityFilter (datatrove's Gopher rules, 10x faster in English),
                       ``simplify``
- ``code``             MalwareSignatureFilter, CodeQualityFilter, SecretsFilter, LicenseHeaderTagger
- ``pii``              PIIRedactor (formatter: <EMAIL> <IP> <PHONE> <SECRET>)
- ``language``         LanguageTagger (py3langid: metadata language / language_score, optional keep-list)
- ``decontamination``  EvalDecontaminationFilter (n-gram overlap with the eval plan's tasks: reason "contaminated")
- ``minhash``          ``minhash_pipelines`` / ``minhash_tasks`` / ``run_minhash`` (datatrove's four MinHash passes)
- ``classifier``       QualityClassifierFilter (hashed n-gram logistic regression: metadata quality_score)
- ``routing``          OnlyDomains, OnlyLanguages, ForDomain (route a step to some domains or languages), ``preload``
- ``patterns``         the secret, malware and licence-header patterns the code filters and PII redaction share

Add a step: write its class in its family's module, a builder ``(config) -> step`` below that constructs it, and its
name in ``hfpipe.stages.data.STEP_NAMES``. The Config validates chains against that tuple, so that ``hfpipe
validate``/``status`` never import datatrove; this module checks at import that the two name the same steps.

This package imports datatrove at top level: import it inside the stage's run(), never at a stage module's top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter

from hfpipe.stages.data import STEP_NAMES, Config
from hfpipe.stages.data.mixture import DroppedWriter
from hfpipe.stages.data.steps.classifier import QualityClassifierFilter
from hfpipe.stages.data.steps.code import CodeQualityFilter, LicenseHeaderTagger, MalwareSignatureFilter, SecretsFilter
from hfpipe.stages.data.steps.decontamination import EvalDecontaminationFilter
from hfpipe.stages.data.steps.language import LanguageTagger
from hfpipe.stages.data.steps.pii import PIIRedactor
from hfpipe.stages.data.steps.quality import FastGopherQualityFilter
from hfpipe.stages.data.steps.routing import OnlyLanguages

# ---------------------------------------------------------------------------------------------------------------------
# prose / web. datatrove's prose/web filters, cheapest first: FineWebQualityFilter -> GopherQualityFilter ->
# C4QualityFilter -> GopherRepetitionFilter. Measured on data/tiny/sotu.jsonl (500 KB, 2 loaded cores): FineWeb ~1.5 s,
# Gopher quality ~2.0 s, C4 ~1.6-2.4 s, Gopher repetition ~2.7 s; C4 goes after Gopher quality because it rewrites the
# text (drops lines without terminal punctuation; Gopher judges the original). Drop reasons are datatrove's
# (gopher_short_doc, line_punct_ratio, curly_bracket, too_few_sentences, dup_line_frac, top_2_gram, ...). Each chain
# is one domain's, so code never meets C4's curly-bracket rule.


def _gopher_quality(config: Config) -> PipelineStep:
    return FastGopherQualityFilter(**config.quality.model_dump())  # datatrove's rules on a 10x faster English tokenizer


def _fineweb(config: Config) -> PipelineStep:
    return FineWebQualityFilter(language=config.quality.language)


def _c4(config: Config) -> PipelineStep:
    return C4QualityFilter(language=config.quality.language)


def _gopher_repetition(config: Config) -> PipelineStep:
    return GopherRepetitionFilter(language=config.quality.language)


def _quality_classifier(config: Config) -> PipelineStep:
    return QualityClassifierFilter(threshold=config.quality_threshold)


def _decontaminate(config: Config) -> PipelineStep:
    return EvalDecontaminationFilter(n_grams=config.decontamination_ngrams, tasks=config.decontamination_tasks)


def _language_id(config: Config) -> PipelineStep:
    return LanguageTagger(languages=list(config.keep_languages) or None, key="detected_language")


def _pii(config: Config) -> PipelineStep:
    return PIIRedactor()


# ---------------------------------------------------------------------------------------------------------------------
# code (the default chain, cheapest first: malware signatures -> secrets -> code quality -> licence header tagger)


def _malware(config: Config) -> PipelineStep:
    return MalwareSignatureFilter()


def _code_quality(config: Config) -> PipelineStep:
    return CodeQualityFilter(**config.code.model_dump())


def _secrets(config: Config) -> PipelineStep:
    return SecretsFilter()


def _license_header(config: Config) -> PipelineStep:
    return LicenseHeaderTagger()


# ---------------------------------------------------------------------------------------------------------------------
# the registry: a chain lists these names (config -> datatrove PipelineStep)

STEP_BUILDERS: dict[str, Callable[[Config], PipelineStep]] = {
    # prose / web
    "gopher_quality": _gopher_quality,
    "fineweb": _fineweb,
    "c4": _c4,
    "gopher_repetition": _gopher_repetition,
    "quality_classifier": _quality_classifier,
    "decontaminate": _decontaminate,
    "language_id": _language_id,
    "pii": _pii,
    # code
    "malware": _malware,
    "code_quality": _code_quality,
    "secrets": _secrets,
    "license_header": _license_header,
}
if tuple(STEP_BUILDERS) != STEP_NAMES:  # the Config validated the recipe's chains against STEP_NAMES
    raise ImportError(f"hfpipe.stages.data.STEP_NAMES {STEP_NAMES} and STEP_BUILDERS {tuple(STEP_BUILDERS)} differ")


def domain_steps(domain: str, config: Config, dropped: Path | None = None,
                 ledger: Path | None = None) -> list[tuple[str, PipelineStep]]:
    """(label, datatrove step) of one domain's chain, in the recipe's order; language-specific rules wrapped so that
    they judge only documents in their languages (``rule_languages``). With ``dropped``, every filter keeps what it
    drops through datatrove's ``exclusion_writer`` in ``<dropped>/<step>/<domain>/`` (DroppedWriter); with ``ledger``,
    the decontaminate step writes what it checked and dropped there (the stage's contamination.json)."""
    steps = []
    for name in config.chains.get(domain, ()):
        step, languages = STEP_BUILDERS[name](config), config.rule_languages.get(name)
        if ledger is not None and isinstance(step, EvalDecontaminationFilter):
            step.report_folder = Path(ledger)
        if dropped is not None and isinstance(step, BaseFilter):
            step.exclusion_writer = DroppedWriter(str(dropped / name / domain))
        steps.append((f"{domain}:{name}", OnlyLanguages(step, languages) if languages else step))
    return steps
