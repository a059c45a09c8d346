"""Decontamination against the bundled lm-eval tasks (step ``decontaminate``): ``EvalDecontaminationFilter``, n-gram
overlap with hfpipe/tasks/**, reason "contaminated" (datatrove's NGramsDecontFilter, index built in memory).
"""

from __future__ import annotations

import ast
import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from datatrove.data import Document
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
from datatrove.utils.text import ngrams

from hfpipe.resources import TASKS, package_file
from hfpipe.stages.data.steps.minhash import SHA1_HASH
from hfpipe.stages.data.steps.quality import FastWordTokenizer, simplify

TASKS_DIR = package_file(TASKS)


def _yaml_load(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # !function etc.: not needed here
    return yaml.load(path.read_text(encoding="utf-8"), Loader=Loader) or {}


def eval_items(tasks_dir: str | Path = TASKS_DIR) -> Iterable[tuple[str, str, str]]:
    """(task, query, gold answer text) for every row of every lm-eval task YAML under tasks_dir whose data files
    (``dataset_kwargs.data_files``, jsonl) ship beside it. Templates are rendered with jinja2 as lm-eval does."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    compiled: dict[str, jinja2.Template] = {}  # each task's few templates compiled once, not once per row

    def render(template, doc):
        if isinstance(template, str) and template in doc:
            return doc[template]
        if isinstance(template, str):
            if template not in compiled:
                compiled[template] = env.from_string(template)
            out = compiled[template].render(**doc)
            return ast.literal_eval(out) if out.startswith("[") else out
        return template

    for spec in sorted(Path(tasks_dir).rglob("*.yaml")):
        cfg = _yaml_load(spec)
        files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
        files = files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files
        task = cfg.get("task", spec.stem)
        for rel in files:
            with open(spec.parent / rel, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    doc = json.loads(line)
                    try:
                        query = str(render(cfg.get("doc_to_text", ""), doc))
                        choices = render(cfg["doc_to_choice"], doc) if cfg.get("doc_to_choice") else None
                        target = render(cfg.get("doc_to_target", ""), doc)
                    except (jinja2.TemplateError, ValueError, SyntaxError):  # unrenderable: index the raw values
                        query, choices, target = "", None, " ".join(str(v) for v in doc.values())
                    if choices is not None and (isinstance(target, int) or str(target).isdigit()):
                        target = choices[int(target)]
                    yield task, query, str(target)


def decontamination_index(tasks_dir: str, n: int, min_item_words: int, find_query_ngrams: bool) -> dict:
    """EvalDecontaminationFilter's index, built once per process and shared read-only by every task (the starter
    recipe built it six times per run, 0.29 s each; once, with each template compiled once, it takes 0.05 s); a
    changed task file (size or mtime) builds it anew."""
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(Path(tasks_dir).rglob("*"))
                  if f.is_file())
    return _decontamination_index(tasks_dir, n, min_item_words, find_query_ngrams, stamp)


@lru_cache(maxsize=8)
def _decontamination_index(tasks_dir: str, n: int, min_item_words: int, find_query_ngrams: bool, stamp: tuple) -> dict:
    index = {}
    for task, query, gold in eval_items(tasks_dir):
        q, a = simplify(query).split(), simplify(gold).split()  # EvalDecontaminationFilter.tokens
        if len(q) + len(a) < n:
            grams = [q + a] if len(q) + len(a) >= min_item_words else []
        else:
            grams = list(ngrams(a, n)) + [q[len(q) - n + 1 + i:] + a[: i + 1] for i in range(n - 1)
                                         if len(q) >= n - 1 - i and len(a) >= i + 1]
            grams += list(ngrams(q, n)) if find_query_ngrams else []
        for g in grams:
            index.setdefault(g[0], {}).setdefault(len(g), {})[" ".join(g)] = task
    return index


class EvalDecontaminationFilter(NGramsDecontFilter):
    """Drop documents sharing an n-gram with a bundled evaluation item: reason ``contaminated``, with
    ``metadata["contaminated_ngram"]``/``["contaminated_task"]`` and a ``contaminated_<task>`` counter (datatrove's
    NGramsDecontFilter, whose index builder needs lighteval; here the index is built in memory from ``tasks_dir``).

    Texts are normalised as datatrove does (lowercase, no punctuation, numbers -> 0) and word-tokenized. Indexed per
    item (query + " " + answer, datatrove's convention): the answer's n-grams and the n-grams spanning query and
    answer (plus the query's own with ``find_query_ngrams``). An item shorter than ``n_grams`` words but at least
    ``min_item_words`` long is indexed whole (short QA items such as "What is the capital of X? Answer: Y").

    Args:
        tasks_dir: folder of lm-eval task YAMLs with local data files (default: hfpipe/tasks).
        n_grams: n-gram length in words (13 as in GPT-3's decontamination).
        min_item_words: shortest item (words) still matched whole; shorter ones are ignored (too generic).
        find_query_ngrams: also flag documents containing a question's own n-grams without its answer.
        language: word tokenizer language.
    """

    name = "💥 Eval decontamination"

    def __init__(self, tasks_dir: str | Path = TASKS_DIR, n_grams: int = 13, min_item_words: int = 8,
                 find_query_ngrams: bool = False, language: str = "en", exclusion_writer=None):
        config = NGramsDecontConfig(n_grams=n_grams, find_query_ngrams=find_query_ngrams, find_overlap_ngrams=True,
                                    hash_config=SHA1_HASH)
        super().__init__(str(tasks_dir), config=config, exclusion_writer=exclusion_writer,
                         language=FastWordTokenizer())  # unused (``tokens``): avoids loading spaCy
        self.tasks_dir, self.min_item_words = Path(tasks_dir), min_item_words

    def tokens(self, text: str) -> list[str]:
        return simplify(text).split()

    def load_index_hashes(self):
        """Index every item's n-grams as text, keyed by first word: {word: {length: {n-gram: task}}}."""
        self._index_hashes = decontamination_index(str(self.tasks_dir), self.config.n_grams, self.min_item_words,
                                                   self.config.find_query_ngrams)

    def preload(self) -> None:
        """Build the index into this process's cache (forked workers inherit it); the step itself stays light."""
        decontamination_index(str(self.tasks_dir), self.config.n_grams, self.min_item_words,
                              self.config.find_query_ngrams)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._index_hashes is None:
            self.load_index_hashes()
        index, words = self._index_hashes, self.tokens(doc.text)
        # only positions whose word starts an indexed n-gram are joined and looked up (hashing every n-gram of every
        # length, as datatrove does, ran at 0.25 MB/s)
        for i in [i for i, w in enumerate(words) if w in index]:
            for length, grams in index[words[i]].items():
                gram = " ".join(words[i: i + length])
                if (task := grams.get(gram)) is not None:
                    doc.metadata["contaminated_ngram"], doc.metadata["contaminated_task"] = gram, task
                    self.stat_update(f"contaminated_{task}")
                    return False, "contaminated"
        return True
