"""Decontamination against the recipe's eval plan (step ``decontaminate``): ``EvalDecontaminationFilter``, n-gram
overlap with every bundled lm-eval task (hfpipe/tasks/**) and the registry tasks the recipe evaluates (their data read
from the local Hugging Face cache, never downloaded), reason "contaminated" (datatrove's NGramsDecontFilter, index
built in memory). ``eval_index`` / ``find_overlap`` are the same index and matching for the post-training sets
(hfpipe.posttrain.data), so every stage that reads training text checks it against one plan.
"""

from __future__ import annotations

import ast
import json
import os
from collections import Counter
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


def registry_items(names: Iterable[str], tasks_dir: str | Path = TASKS_DIR) -> tuple[list[tuple[str, str, str]],
                                                                                  dict[str, str]]:
    """(task, query, gold answer text) of lm-eval registry tasks (or groups) whose data is in the local Hugging Face
    cache, read through lm-eval's own task objects (``eval_docs``, ``doc_to_text``, ``doc_to_target``,
    ``doc_to_choice``) with the Hub switched offline, and {name: why not} for those that could not be read."""
    items, not_checked = [], {}
    names = list(dict.fromkeys(names))
    if not names:
        return items, not_checked
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (os.environ.get("HF_DATASETS_OFFLINE"), hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        from lm_eval.tasks import TaskManager, get_task_dict

        manager = TaskManager(include_path=str(tasks_dir))
        for name in names:
            try:
                found = get_task_dict([name], manager)
                leaves = _leaf_tasks(found)
                for task_name, task in leaves:
                    for doc in task.eval_docs:
                        query, target = str(task.doc_to_text(doc)), task.doc_to_target(doc)
                        if task.OUTPUT_TYPE == "multiple_choice":
                            choices = task.doc_to_choice(doc)
                            target = choices[target] if isinstance(target, int) else target
                        if isinstance(target, list):
                            target = target[0] if target else ""
                        items.append((task_name, query, str(target)))
            except Exception as e:  # noqa: BLE001 - not in the cache, unknown name: the report says why
                not_checked[name] = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    finally:
        if saved[0] is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = saved[0]
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved[1], saved[2]
    return items, not_checked


def _leaf_tasks(found: dict) -> list[tuple[str, object]]:
    out = []
    for key, value in found.items():
        if isinstance(value, dict):
            out += _leaf_tasks(value)
        else:
            out.append((getattr(value, "config", None) and value.config.task or str(key), value))
    return out


def decontamination_index(tasks_dir: str, n: int, min_item_words: int, find_query_ngrams: bool,
                          extra_tasks: tuple[str, ...] = ()) -> dict:
    """EvalDecontaminationFilter's index, built once per process and shared read-only by every task (the starter
    recipe built it six times per run, 0.29 s each; once, with each template compiled once, it takes 0.05 s); a
    changed task file (size or mtime) builds it anew. ``extra_tasks``: registry tasks indexed beside the bundled
    ones (registry_items)."""
    return eval_index(tasks_dir, n, min_item_words, find_query_ngrams, extra_tasks)[0]


def eval_index(tasks_dir: str | Path = TASKS_DIR, n: int = 13, min_item_words: int = 8,
               find_query_ngrams: bool = False, extra_tasks: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """(index, info): the index of every bundled task under ``tasks_dir`` plus the registry tasks ``extra_tasks``
    whose data is local, and info {n_grams, tasks: [indexed task names], not_checked: {name: reason}} for the
    contamination report."""
    tasks_dir = str(tasks_dir)
    stamp = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(Path(tasks_dir).rglob("*"))
                  if f.is_file())
    return _decontamination_index(tasks_dir, n, min_item_words, find_query_ngrams, tuple(extra_tasks), stamp)


def find_overlap(index: dict, text: str) -> tuple[str, str] | None:
    """(task, n-gram) of the first indexed n-gram in ``text`` (normalised as the index is), or None."""
    words = simplify(text).split()
    # only positions whose word starts an indexed n-gram are joined and looked up (hashing every n-gram of every
    # length, as datatrove does, ran at 0.25 MB/s)
    for i in [i for i, w in enumerate(words) if w in index]:
        for length, grams in index[words[i]].items():
            gram = " ".join(words[i: i + length])
            if (task := grams.get(gram)) is not None:
                return task, gram
    return None


@lru_cache(maxsize=8)
def _decontamination_index(tasks_dir: str, n: int, min_item_words: int, find_query_ngrams: bool,
                           extra_tasks: tuple[str, ...], stamp: tuple) -> tuple[dict, dict]:
    index, tasks = {}, set()
    registry, not_checked = registry_items(extra_tasks, tasks_dir)
    for task, query, gold in [*eval_items(tasks_dir), *registry]:
        tasks.add(task)
        q, a = simplify(query).split(), simplify(gold).split()  # EvalDecontaminationFilter.tokens
        if len(q) + len(a) < n:
            grams = [q + a] if len(q) + len(a) >= min_item_words else []
        else:
            grams = list(ngrams(a, n)) + [q[len(q) - n + 1 + i:] + a[: i + 1] for i in range(n - 1)
                                         if len(q) >= n - 1 - i and len(a) >= i + 1]
            grams += list(ngrams(q, n)) if find_query_ngrams else []
        for g in grams:
            index.setdefault(g[0], {}).setdefault(len(g), {})[" ".join(g)] = task
    return index, {"n_grams": n, "tasks": sorted(tasks), "not_checked": not_checked}


class EvalDecontaminationFilter(NGramsDecontFilter):
    """Drop documents sharing an n-gram with an evaluation item: reason ``contaminated``, with
    ``metadata["contaminated_ngram"]``/``["contaminated_task"]`` and a ``contaminated_<task>`` counter (datatrove's
    NGramsDecontFilter, whose index builder needs lighteval; here the index is built in memory from ``tasks_dir`` and
    the registry tasks ``tasks``).

    Texts are normalised as datatrove does (lowercase, no punctuation, numbers -> 0) and word-tokenized. Indexed per
    item (query + " " + answer, datatrove's convention): the answer's n-grams and the n-grams spanning query and
    answer (plus the query's own with ``find_query_ngrams``). An item shorter than ``n_grams`` words but at least
    ``min_item_words`` long is indexed whole (short QA items such as "What is the capital of X? Answer: Y").

    With ``report_folder``, each task appends to ``<report_folder>/<rank>.jsonl`` one line per dropped document
    ({source, task, ngram}) and, per stream it filtered, the documents it checked per source ({checked}): the data
    stage's contamination.json is summed from them.

    Args:
        tasks_dir: folder of lm-eval task YAMLs with local data files (default: hfpipe/tasks).
        n_grams: n-gram length in words (13 as in GPT-3's decontamination).
        min_item_words: shortest item (words) still matched whole; shorter ones are ignored (too generic).
        find_query_ngrams: also flag documents containing a question's own n-grams without its answer.
        tasks: lm-eval registry task names indexed beside the bundled ones (when their data is in the local cache).
        report_folder: where the per-task ledger of checks and drops goes (None: none written).
        language: word tokenizer language.
    """

    name = "💥 Eval decontamination"

    def __init__(self, tasks_dir: str | Path = TASKS_DIR, n_grams: int = 13, min_item_words: int = 8,
                 find_query_ngrams: bool = False, tasks: tuple[str, ...] = (), report_folder: str | Path | None = None,
                 language: str = "en", exclusion_writer=None):
        config = NGramsDecontConfig(n_grams=n_grams, find_query_ngrams=find_query_ngrams, find_overlap_ngrams=True,
                                    hash_config=SHA1_HASH)
        super().__init__(str(tasks_dir), config=config, exclusion_writer=exclusion_writer,
                         language=FastWordTokenizer())  # unused (``tokens``): avoids loading spaCy
        self.tasks_dir, self.min_item_words, self.extra_tasks = Path(tasks_dir), min_item_words, tuple(tasks)
        self.report_folder = Path(report_folder) if report_folder is not None else None
        self._hits: list[dict] = []

    def tokens(self, text: str) -> list[str]:
        return simplify(text).split()

    def _index(self) -> tuple[dict, dict]:
        return eval_index(self.tasks_dir, self.config.n_grams, self.min_item_words, self.config.find_query_ngrams,
                          self.extra_tasks)

    def load_index_hashes(self):
        """Index every item's n-grams as text, keyed by first word: {word: {length: {n-gram: task}}}."""
        self._index_hashes = self._index()[0]

    def preload(self) -> None:
        """Build the index into this process's cache (forked workers inherit it); the step itself stays light."""
        self._index()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._index_hashes is None:
            self.load_index_hashes()
        found = find_overlap(self._index_hashes, doc.text)
        if found is None:
            return True
        task, gram = found
        doc.metadata["contaminated_ngram"], doc.metadata["contaminated_task"] = gram, task
        self.stat_update(f"contaminated_{task}")
        self._hits.append({"source": str(doc.metadata.get("source", "")), "task": task, "ngram": gram})
        return False, "contaminated"

    def run(self, data, rank: int = 0, world_size: int = 1):
        checked: Counter = Counter()

        def counted(docs):
            for doc in docs:
                checked[str(doc.metadata.get("source", ""))] += 1
                yield doc

        self._hits = []
        yield from super().run(counted(data), rank, world_size)
        if self.report_folder is not None:
            self.report_folder.mkdir(parents=True, exist_ok=True)
            with open(self.report_folder / f"{rank:05d}.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(h, ensure_ascii=False) + "\n" for h in self._hits)
                f.write(json.dumps({"checked": dict(checked)}) + "\n")


def read_ledger(folder: Path) -> tuple[list[dict], dict[str, int]]:
    """(hits, checked per source) summed over every task's ledger in ``folder`` (EvalDecontaminationFilter)."""
    hits, checked = [], Counter()
    for path in sorted(Path(folder).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "checked" in row:
                checked.update(row["checked"])
            else:
                hits.append(row)
    return hits, dict(checked)
