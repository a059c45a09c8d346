"""Language identification with py3langid (step ``language_id``): ``LanguageTagger`` sets metadata language /
language_score, with an optional keep-list. py3langid's naive Bayes model ships inside the wheel.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


@lru_cache(maxsize=1)
def langid_model():
    """py3langid's model, loaded once per process: every task of every pass in a process, and every worker forked
    from it, shares one read-only identifier (each load takes 0.35-0.45 s, lzma-compressed; the starter recipe loaded
    it six times per run, once per task of each filter pass)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


class LanguageTagger(BaseFilter):
    """Identify the language with py3langid (97 languages, ISO 639-1 codes): sets ``metadata[key]`` and
    ``metadata[key + "_score"]`` (a probability) and counts ``language_<code>``.

    With ``languages`` set, keeps documents whose detected language is listed and whose score is at least
    ``min_score``; drops others with reason ``language_not_kept`` or ``language_low_score``.

    Args:
        languages: ISO 639-1 codes to keep; None keeps every document (tag only).
        min_score: probability floor for a kept language.
        max_chars: only the first max_chars characters are classified (speed; the verdict is stable long before).
        key: metadata key to write ("language"; use e.g. "detected_language" to keep a source-declared one).
    """

    name = "🌍 Language ID (py3langid)"
    _requires_dependencies = ["py3langid"]

    def __init__(self, languages: Sequence[str] | None = None, min_score: float = 0.5, max_chars: int = 5000,
                 key: str = "language", exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.languages = set(languages) if languages else None
        self.min_score, self.max_chars, self.key = min_score, max_chars, key
        self._model = None  # loaded on first use: cheap to construct and to ship to workers

    @property
    def model(self):
        if self._model is None:
            self._model = langid_model()
        return self._model

    def preload(self) -> None:
        """Load the model into this process's cache (forked workers inherit it)."""
        langid_model()

    def classify(self, text: str) -> tuple[str, float]:
        lang, score = self.model.classify(text[: self.max_chars])
        return lang, round(float(score), 4)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang, score = self.classify(doc.text)
        doc.metadata[self.key], doc.metadata[f"{self.key}_score"] = lang, score
        self.stat_update(f"language_{lang}")
        if self.languages is None:
            return True
        if lang not in self.languages:
            return False, "language_not_kept"
        return True if score >= self.min_score else (False, "language_low_score")

    def __getstate__(self):  # never pickle the loaded model to workers
        return {**self.__dict__, "_model": None}
