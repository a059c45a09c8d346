"""Quality classifier (step ``quality_classifier``): ``QualityClassifierFilter``, a logistic regression on hashed word
n-grams (metadata quality_score), trained at construction from a committed file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from hfpipe.resources import DATASETS, package_file

QUALITY_TRAIN_FILE = package_file(DATASETS, "quality_train.jsonl")


class QualityClassifierFilter(BaseFilter):
    """Score prose quality with a tiny logistic regression on hashed word 1-2-grams (scikit-learn), trained
    deterministically at construction from ``train_file`` (jsonl rows {"text", "label": 1 good / 0 bad}; default
    hfpipe/datasets/quality_train.jsonl: SOTU, Moby Dick and Python-docs paragraphs vs. Sphinx navigation
    boilerplate and spam). Sets ``metadata["quality_score"]`` (P(good), 4 decimals); drops ``quality_score`` below
    ``threshold``.

    Args:
        threshold: minimum P(good) kept; 0 keeps everything (score only).
        train_file: training jsonl.
        n_features: hashing space size (2**n_features_log2).
        c: inverse L2 regularisation strength of the logistic regression.
        max_chars: only the first max_chars characters are scored.
    """

    name = "🏅 Quality classifier"
    _requires_dependencies = [("sklearn", "scikit-learn")]

    def __init__(self, threshold: float = 0.5, train_file: str | Path = QUALITY_TRAIN_FILE,
                 n_features_log2: int = 18, c: float = 4.0, max_chars: int = 20000, exclusion_writer=None):
        super().__init__(exclusion_writer)
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.linear_model import LogisticRegression

        self.threshold, self.max_chars = threshold, max_chars
        rows = [json.loads(line) for line in Path(train_file).read_text(encoding="utf-8").splitlines() if line]
        self.vectorizer = HashingVectorizer(n_features=2 ** n_features_log2, ngram_range=(1, 2), alternate_sign=False,
                                            lowercase=True, norm="l2")
        self.model = LogisticRegression(C=c, solver="liblinear", class_weight="balanced", random_state=0)
        self.model.fit(self.vectorizer.transform([r["text"] for r in rows]), [int(r["label"]) for r in rows])

    def score(self, texts: Sequence[str]) -> list[float]:
        probs = self.model.predict_proba(self.vectorizer.transform([t[: self.max_chars] for t in texts]))[:, 1]
        return [round(float(p), 4) for p in probs]

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        doc.metadata["quality_score"] = score = self.score([doc.text])[0]
        return score >= self.threshold or (False, "quality_score")
