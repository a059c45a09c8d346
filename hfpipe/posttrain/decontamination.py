"""Decontamination of the post-training sets (sft, preference, rl prompts, reward-model pairs) against the recipe's
eval plan: the data stage's index (every bundled task, plus the registry tasks in ``decontamination_tasks``, filled
from ``eval.tasks`` by the recipe loader; hfpipe.stages.data.contamination) and its matching
(hfpipe.stages.data.steps.decontamination.find_overlap). A training row sharing an n-gram with an eval item is
dropped; held-out rows are never trained on and are left alone. What was checked and dropped, per set and task, goes
to the stage's ``contamination.json`` and from there into the model card's contamination table.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import Field

from hfpipe.stages import StageConfig


class DecontaminationKeys(StageConfig):
    """The recipe keys of a post-training stage's decontamination."""

    decontaminate: bool = Field(True, description="drop training rows (any message) sharing an n-gram with an eval "
                                "item of the eval plan: every bundled task plus decontamination_tasks; the card's "
                                "contamination table counts them per set and task")
    decontamination_tasks: tuple[str, ...] = Field((), description="lm-eval registry tasks matched beside every "
                                                   "bundled task, when their data is in the local Hugging Face cache; "
                                                   "filled in from eval.tasks when the recipe has an eval section and "
                                                   "does not set it")
    decontamination_ngrams: int = Field(13, ge=3, description="n-gram length in words matched against the eval "
                                        "items (shorter items are matched whole)")


def _texts(value) -> list[str]:
    """Every string of a row, in order, but message roles (so that turns join as the model reads them)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() if k != "role" for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return []


class Decontaminator:
    """The eval plan's index, and a ledger of the rows it checked and dropped, per set."""

    def __init__(self, tasks: tuple[str, ...] = (), n_grams: int = 13):
        from hfpipe.stages.data.steps.decontamination import eval_index

        self.index, self.info = eval_index(n=n_grams, extra_tasks=tuple(tasks))
        self.hits: list[dict] = []
        self.checked: Counter = Counter()

    @classmethod
    def from_config(cls, config) -> "Decontaminator | None":
        """For a stage section with DecontaminationKeys; None when ``decontaminate`` is off."""
        if not getattr(config, "decontaminate", False):
            return None
        return cls(tuple(config.decontamination_tasks), config.decontamination_ngrams)

    def keep(self, rows: list[dict], source: str) -> list[dict]:
        """The rows of set ``source`` that share no n-gram with an eval item (each checked row counted)."""
        from hfpipe.stages.data.steps.decontamination import find_overlap

        kept = []
        for row in rows:
            self.checked[source] += 1
            found = find_overlap(self.index, "\n".join(_texts(row)))
            if found is None:
                kept.append(row)
            else:
                self.hits.append({"source": source, "task": found[0], "ngram": found[1]})
        return kept

    def write(self, out_dir: Path, stage: str) -> dict:
        """``out_dir/contamination.json`` (hfpipe.stages.data.contamination.write_report)."""
        from hfpipe.stages.data.contamination import summarize, write_report

        return write_report(out_dir, stage, self.info, summarize(self.hits, dict(self.checked)))

    def dropped(self) -> int:
        return len(self.hits)
