"""Routing: apply a step to some domains or languages only, so that one datatrove pass carries every domain's chain.

- ``OnlyDomains(filter, domains)``  (routes a filter to documents of some metadata.domain values; others pass)
- ``OnlyLanguages(filter, languages)`` (routes a filter to documents of some languages: ``rule_languages``)
- ``ForDomain(step, domain)``       (routes any step, filter, formatter, extractor or meter, to one domain's documents)
- ``preload(step)``                 (loads a step's model/index into this process's cache: ``langid_model``,
                                     ``decontamination_index``; tasks run here and workers forked from here share it)
"""

from __future__ import annotations

from itertools import groupby
from typing import Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.stats import Stats


class OnlyDomains(BaseFilter):
    """Run ``step`` (any BaseFilter) on documents whose ``metadata["domain"]`` is in ``domains``; the rest pass.

    Args:
        step: the wrapped filter; its drop reasons and its own counters are reported under this step.
        domains: metadata.domain values the filter applies to, e.g. ("prose", "web").
    """

    def __init__(self, step: BaseFilter, domains: Sequence[str]):
        super().__init__(step.exclusion_writer)
        self.step, self.domains = step, tuple(domains)
        self.name = f"{step.name} [{','.join(self.domains)}]"
        self.type = step.type
        self.stats = Stats(str(self))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("domain") not in self.domains:
            self.stat_update("skipped_other_domain")
            return True
        return self.step.filter(doc)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from super().run(data, rank, world_size)
        self.stats.stats = self.stats.stats + self.step.stats.stats  # the inner filter's own counters
        self.step.stats = Stats(str(self.step))


def doc_language(doc: Document) -> str | None:
    """A document's language for routing: the detected one when a language_id step ran, else the declared one."""
    return doc.metadata.get("detected_language") or doc.metadata.get("language")


class OnlyLanguages(OnlyDomains):
    """Run ``step`` on documents whose language (``doc_language``) is in ``languages``; the rest pass, counted as
    ``skipped_other_language``. Gopher's rules count English stop words and English word lengths: on a Japanese or
    Chinese page they drop everything, so the web chain gates them to English.

    Args:
        step: the wrapped filter; its drop reasons and counters are reported under this step.
        languages: ISO 639-1 codes the filter applies to, e.g. ("en",).
    """

    def __init__(self, step: BaseFilter, languages: Sequence[str]):
        super().__init__(step, ())
        self.languages = tuple(languages)
        self.name = f"{step.name} [{','.join(self.languages)}]"
        self.stats = Stats(str(self))

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc_language(doc) not in self.languages:
            self.stat_update("skipped_other_language")
            return True
        return self.step.filter(doc)


class ForDomain(PipelineStep):
    """Run ``step`` (any PipelineStep: a filter, a formatter, an extractor, a meter) on the documents whose
    ``metadata["domain"]`` is ``domain``; the others pass by untouched, uncounted. Each run of consecutive documents
    of the domain reaches ``step.run`` as one stream (readers emit a source's documents together), so nothing is
    buffered; ``step`` must consume the stream it is given. The stats are the wrapped step's own (this step reports
    them). With it one datatrove pass carries every domain's chain side by side: the data stage's filter pass.

    Args:
        step: the wrapped step.
        domain: the metadata.domain value it applies to.
    """

    def __init__(self, step: PipelineStep, domain: str):
        super().__init__()
        self.step, self.domain = step, domain
        self.name, self.type = f"{step.name} [{domain}]", step.type
        self.stats = step.stats

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for domain, docs in groupby(data, key=lambda doc: doc.metadata.get("domain")):
            if domain == self.domain:
                yield from self.step.run(docs, rank, world_size)
            else:
                yield from docs
        self.stats = self.step.stats  # the step's stats object, even if its run replaced it


def preload(step: PipelineStep) -> None:
    """Load what ``step`` (or the step a ``ForDomain``/``OnlyDomains``/``OnlyLanguages`` wraps) needs into this
    process's caches (py3langid's model, the decontamination index), so that every task run here and every worker
    forked from here shares one copy instead of loading its own."""
    while hasattr(step, "step"):  # ForDomain / OnlyDomains / OnlyLanguages
        step = step.step
    getattr(step, "preload", lambda: None)()
