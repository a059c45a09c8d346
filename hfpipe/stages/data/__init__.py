"""Data stage: raw sources -> filtered, deduplicated, balanced, provenance-tagged jsonl.gz shards, with datatrove.

Run just this stage: ``hfpipe run recipes/starter-data.yaml --only data`` (or any recipe with a ``data`` section).

Phases (each a banner in build_passes(), which builds every datatrove pass without running it, and run(), which runs
them on the recipe's executor; ``recipe.data.to_datatrove()`` returns the same passes):
1. resolve + validate every source in this process (hfpipe.stages.data.readers): each raw file decodes and parses,
   or one line names file:line;
2. one filter pass, the domains side by side: each domain's readers (HTML/WARC through trafilatura first) -> the
   domain's chain (``chains``: step names built by the one registry, hfpipe.stages.data.steps.STEP_BUILDERS; code is
   never judged by prose rules; Gopher and the other English rules judge only English documents: ``rule_languages``)
   -> work/filtered/<domain>/ (plain jsonl);
3. exact dedup (datatrove's signature -> find -> filter passes), then MinHash near-dedup (signature -> buckets ->
   cluster -> filter) of the exact filter's output, writing a ledger of what is left;
4. balance: a seeded, deterministic sample that reaches the recipe's domain/language shares -> data/*.jsonl.gz
   (and parquet on request);
5. stats.json (per step docs and bytes in/out and drop reasons, per domain and language totals, achieved shares),
   mixture.png, and a self-check that reads the output back.
The ``decontaminate`` step (every default chain, code included) matches the eval plan (every bundled task, plus the
registry tasks of ``decontamination_tasks``, filled from ``eval.tasks``) and writes what it checked and dropped per
source and task to ``contamination.json`` (hfpipe.stages.data.contamination), which the card shows as a table.
Every filter keeps what it drops (datatrove's ``exclusion_writer``) in ``dropped/<step>/`` with the reason:
``hfpipe inspect RECIPE data --dropped-by STEP`` shows them (hfpipe.stages.data.samples).
Every pass runs on the recipe's executor: local (tasks x workers) by default, or Slurm / Ray.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from hfpipe.stages.data.readers import build_readers, source_files
from hfpipe.errors import HfpipeError
from hfpipe.stages import EXECUTION_ONLY, Inputs, StageConfig, progress

OUTPUTS = ("data/*.jsonl.gz",)  # compared by `hfpipe reproduce` (see hfpipe/stages/__init__.py)
RESULTS = ("stats.json", "contamination.json")
READS: tuple[str, ...] = ()
CARD = {"name": "datatrove", "paper": "Gopher quality rules: Rae et al. 2021, arXiv:2112.11446",
        "citation": "Penedo et al., DataTrove: large scale data processing, 2024"}
REQUIRED_METADATA = ("source", "domain", "language", "license", "origin")
FILE_FORMATS = ("text", "jsonl", "parquet", "html", "warc", "python-stdlib")


class Source(StageConfig):
    name: str = Field(min_length=1, description="source name, stored as metadata.source on every doc")
    format: Literal["text", "jsonl", "parquet", "html", "warc", "python-stdlib", "hub"] = Field(
        description="text: one doc per file (prose or code); jsonl/parquet: one doc per row with a 'text' field; "
                    "html: one page per file, main text extracted; warc: one doc per HTML response record, main "
                    "text extracted; python-stdlib: the running interpreter's stdlib (path = glob inside it); "
                    "hub: a Hugging Face dataset by id (needs the network)")
    path: str = Field("", description="a file, a folder (every file below it) or a glob; relative to the recipe "
                                      "file's folder (python-stdlib: a glob inside the stdlib folder, default *.py)")
    domain: str = Field(min_length=1, description="metadata.domain (prose, code, web, dialog, ...): picks the chain")
    language: str = Field(min_length=1, description="metadata.language: ISO 639-1 code, the programming language "
                                                    "for code, or 'from-path' (the locale folder: de-DE/x.html -> de)")
    license: str = Field(min_length=1, description="metadata.license, an SPDX id or a short licence statement")
    dataset: str = Field("", description="hub only: the dataset id")
    split: str = Field("train", description="hub only: the split to stream")
    subset: str | None = Field(None, description="hub only: the dataset config name")
    text_key: str = Field("text", description="hub only: the column holding the text")
    revision: str | None = Field(None, description="hub only: the dataset revision to read (a commit sha pins it; a "
                                 "branch or tag is pinned to the commit the local Hub cache holds, else unpinned)")

    @model_validator(mode="after")
    def _path_or_dataset(self):
        if self.format == "hub" and not self.dataset:
            raise ValueError(f"source {self.name}: format 'hub' needs 'dataset' (a Hub dataset id)")
        if self.format not in ("hub", "python-stdlib") and not self.path:
            raise ValueError(f"source {self.name}: format {self.format!r} needs 'path'")
        return self


class QualityFilter(StageConfig):
    """datatrove's GopherQualityFilter (step 'gopher_quality'); the defaults are the Gopher paper's thresholds."""

    language: str = Field("en", description="language of the word tokenizer datatrove uses to count words")
    min_doc_words: int = Field(50, ge=0, description="words; shorter docs are dropped (gopher_short_doc)")
    max_doc_words: int = Field(100_000, ge=1, description="words; longer docs are dropped (gopher_long_doc)")
    min_avg_word_length: float = Field(3, ge=0, description="characters; mean word length floor")
    max_avg_word_length: float = Field(10, ge=0, description="characters; mean word length ceiling")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="'#' or ellipses per word")
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1, description="fraction of lines starting with a bullet")
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1, description="fraction of lines ending with an ellipsis")
    max_non_alpha_words_ratio: float = Field(0.8, ge=0, le=1, description="minimum fraction of words (punctuation "
                                             "tokens count as words) holding a letter, despite the datatrove name")
    min_stop_words: int = Field(2, ge=0, description="distinct English stop words (the, be, to, of, ...) required")


class Balance(StageConfig):
    """Target shares of the output's UTF-8 bytes, reached by a seeded sample (never by repeating data)."""

    enabled: bool = Field(False, description="sample the deduplicated corpus towards the shares below")
    domain_shares: dict[str, float] = Field(default_factory=dict, description="domain -> fraction of output bytes; "
                                            "unnamed domains share the rest (dropped if the named ones sum to 1)")
    language_shares: dict[str, float] = Field(default_factory=dict, description="language -> fraction of output "
                                              "bytes; unnamed languages share the rest (dropped if these sum to 1)")
    max_bytes: int | None = Field(None, ge=1, description="cap on output bytes (UTF-8 text), e.g. for quick runs")

    @field_validator("domain_shares", "language_shares")
    @classmethod
    def _shares(cls, shares):
        if any(not 0 <= v <= 1 for v in shares.values()) or sum(shares.values()) > 1 + 1e-6:
            raise ValueError("shares must each be in [0, 1] and sum to at most 1")
        return shares


SLURM_TIME = r"^(\d+-)?\d+(:\d{1,2}){0,2}$"  # [D-]HH:MM:SS, MM:SS or minutes, as sbatch --time takes it


class Slurm(StageConfig):
    """datatrove's SlurmPipelineExecutor, one per pass, chained with depends= (hfpipe.stages.data.engines)."""

    partition: str = Field("", description="Slurm partition (required with executor: slurm)")
    time: str = Field("04:00:00", pattern=SLURM_TIME, description="time limit per task, HH:MM:SS (sbatch --time)")
    max_wait: str = Field("72:00:00", pattern=SLURM_TIME, description="time limit of the whole chain of passes, "
                          "queueing included, [D-]HH:MM:SS: hfpipe then cancels its jobs and fails (exit 1)")
    cpus_per_task: int = Field(1, ge=1, description="CPUs per task")
    mem_per_cpu_gb: int = Field(2, ge=1, description="GB of memory per CPU")
    qos: str = Field("normal", description="quality of service")
    venv_path: str | None = Field(None, description="virtualenv (its folder or bin/activate, relative to the recipe) "
                                  "activated by the job script; default: the one running hfpipe")
    sbatch_args: dict[str, str] = Field(default_factory=dict, description="extra #SBATCH options")
    options: dict[str, Any] = Field(default_factory=dict, description="any other argument of datatrove's "
                                    "SlurmPipelineExecutor, passed as it is (srun_args, tasks_per_job, max_array_size, "
                                    "env_command, condaenv, requeue, mail_user, ...); checked before the run")
    poll_s: float = Field(5, gt=0, description="seconds between checks of the jobs' states (squeue)")


class Ray(StageConfig):
    """datatrove's RayPipelineExecutor on RAY_ADDRESS's cluster, or on a local runtime started for the stage."""

    address: str | None = Field(None, description="Ray cluster to connect to (default: $RAY_ADDRESS, else a local "
                                "runtime started for the stage and stopped after it)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local runtime (default: this machine's)")
    cpus_per_task: int = Field(1, ge=1, description="CPUs reserved per task")
    mem_per_cpu_gb: float = Field(2, gt=0, description="GB of memory per CPU")
    options: dict[str, Any] = Field(default_factory=dict, description="any other argument of datatrove's "
                                    "RayPipelineExecutor, passed as it is (time, tasks_per_job, nodes_per_task, "
                                    "gpus_per_task, ray_remote_kwargs, ...); checked before the run")


class CodeFilter(StageConfig):
    """Settings of step code_quality (hfpipe.stages.data.steps.code.CodeQualityFilter)."""

    max_line_length: int = Field(1000, ge=1, description="characters; any longer line marks generated/minified code")
    max_avg_line_length: float = Field(100, gt=0, description="characters; mean line length ceiling (minified code)")
    min_alnum_fraction: float = Field(0.25, ge=0, le=1, description="floor on the alphanumeric share of characters")
    autogen_header_lines: int = Field(5, ge=0, description="leading lines searched for 'auto-generated' markers")


class MinHash(StageConfig):
    """datatrove's MinHash near-dedup (signature -> buckets -> cluster -> filter), after exact dedup."""

    enabled: bool = Field(True, description="drop near-duplicates (one kept per cluster of similar documents)")
    n_grams: int = Field(5, ge=1, description="words per shingle (datatrove's default)")
    num_buckets: int = Field(14, ge=1, description="LSH bands; 14 x 8 hashes ~ a 0.72 Jaccard similarity threshold "
                                                   "(datatrove's defaults); the buckets pass runs one task per band")
    hashes_per_bucket: int = Field(8, ge=1, description="hashes per band: more = fewer, closer candidate pairs")


class Dedup(StageConfig):
    exact: bool = Field(True, description="drop exact duplicates (same text) across all sources, keeping one")
    minhash: MinHash = Field(default_factory=MinHash, description="near-duplicate removal settings")


# The step names a chain may list. The Config validates chains against this tuple without importing datatrove (`hfpipe
# validate` and `status` stay fast); each name's builder is in the one registry, hfpipe.stages.data.steps.STEP_BUILDERS
# (it imports datatrove, and checks at import that it holds exactly these names, in this order).
STEP_NAMES = ("gopher_quality", "fineweb", "c4", "gopher_repetition", "quality_classifier", "decontaminate",
              "language_id", "pii", "malware", "code_quality", "secrets", "license_header")
ENGLISH_RULES = ("gopher_quality", "gopher_repetition", "c4", "fineweb", "quality_classifier")


class Config(StageConfig):
    sources: tuple[Source, ...] = Field(min_length=1, description="raw inputs; a doc's metadata says which one")
    chains: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {"prose": ("language_id", "gopher_quality", "decontaminate", "pii"),
                                 "web": ("language_id", "gopher_quality", "decontaminate", "pii"),
                                 "dialog": ("language_id", "decontaminate", "pii"),
                                 "code": ("malware", "secrets", "code_quality", "decontaminate", "license_header",
                                          "pii")},
        description="domain -> filter steps in order (cheapest per MB first, then the ones that drop most; pii last, "
                    "it drops nothing); unlisted domains pass unfiltered")
    rule_languages: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {name: ("en",) for name in ENGLISH_RULES},
        description="step -> languages it judges (the language_id step's detected language when it ran earlier in "
                    "the chain, else the source's); other documents pass it (counted skipped_other_language): "
                    "Gopher's stop words and word lengths are English rules that would drop every Japanese page")
    quality: QualityFilter = Field(default_factory=QualityFilter, description="settings of step gopher_quality")
    code: CodeFilter = Field(default_factory=CodeFilter, description="settings of step code_quality")
    quality_threshold: float = Field(0.5, ge=0, le=1, description="step quality_classifier: docs scoring below it "
                                     "(probability of 'good prose' from the bundled classifier) are dropped")
    decontamination_ngrams: int = Field(13, ge=3, description="step decontaminate: n-gram length matched against the "
                                        "eval items (shorter items are matched whole)")
    decontamination_tasks: tuple[str, ...] = Field((), description="step decontaminate: lm-eval registry tasks "
                                                   "matched beside every bundled task (hfpipe/tasks), when their data "
                                                   "is in the local Hugging Face cache (else the report says not "
                                                   "checked); filled in from eval.tasks when the recipe has an eval "
                                                   "section and does not set it")
    keep_languages: tuple[str, ...] = Field((), description="step language_id: ISO 639-1 codes to keep; empty = "
                                            "only tag metadata.detected_language")
    extract_timeout_s: float = Field(5, gt=0, description="seconds per HTML page for trafilatura before skipping it")
    dedup: Dedup = Field(default_factory=Dedup, description="exact and MinHash near-dedup across all sources; "
                                                             "true/false = all defaults / none")
    balance: Balance = Field(default_factory=Balance, description="mixture shares per domain and language")
    parquet: bool = Field(False, description="also write data/*.parquet next to the jsonl.gz shards")
    keep_dropped: bool = Field(True, description="keep every document a filter or dedup drops, with the reason, in "
                               "dropped/<step>/ (`hfpipe inspect RECIPE data --dropped-by STEP`); false where they "
                               "would fill the disk")
    executor: Literal["local", "slurm", "ray"] = Field("local", description="where datatrove runs the tasks (not in "
                                                       "the fingerprint: byte-identical output, tests/test_cluster.py)",
                                                       json_schema_extra=EXECUTION_ONLY)
    tasks: int = Field(1, ge=1, le=100_000, description="datatrove tasks per pass; one output shard per task")
    workers: int = Field(1, ge=1, le=256, description="tasks of a pass running at once: local processes (1 = in "
                         "this process), Slurm array throttle (%N), Ray tasks in flight")
    slurm: Slurm = Field(default_factory=Slurm, description="options of executor: slurm",
                         json_schema_extra=EXECUTION_ONLY)
    ray: Ray = Field(default_factory=Ray, description="options of executor: ray", json_schema_extra=EXECUTION_ONLY)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources):
        if len({s.name for s in sources}) < len(sources):
            raise ValueError("source names must be unique (they prefix document ids)")
        return sources

    @field_validator("dedup", mode="before")
    @classmethod
    def _dedup_switch(cls, value):  # `dedup: true|false` (older recipes): every method on / off
        return {"exact": value, "minhash": {"enabled": value}} if isinstance(value, bool) else value

    @field_validator("chains")
    @classmethod
    def _known_steps(cls, chains):
        unknown = sorted({s for steps in chains.values() for s in steps} - set(STEP_NAMES))
        if unknown:
            raise ValueError(f"unknown filter step(s) {unknown}; known: {sorted(STEP_NAMES)}")
        return chains

    @field_validator("rule_languages")
    @classmethod
    def _known_rule_steps(cls, rules):
        unknown = sorted(set(rules) - (set(STEP_NAMES) - {"pii"}))  # pii rewrites text; it judges nothing
        if unknown:
            raise ValueError(f"rule_languages: {unknown} are not filter steps; filters: "
                             f"{sorted(set(STEP_NAMES) - {'pii'})}")
        return rules

    def to_datatrove(self, output_dir: str | Path | None = None) -> list[DataPass]:
        """The stage's datatrove passes, as run() builds them (build_passes): each a DataPass(name, pipeline, tasks,
        ...) whose ``pipeline`` (datatrove steps) a datatrove executor runs as ``tasks`` tasks, in order; the last
        writes ``<output_dir>/data/*.jsonl.gz``, the stage's output. ``output_dir`` default runs/<name>/data. The
        sources are read and validated now."""
        name, seed, recipe_dir = self.recipe_context()
        return build_passes(self, recipe_dir, Path(output_dir or f"runs/{name}/data"), seed).passes

    @model_validator(mode="after")
    def _slurm_partition(self):
        if self.executor == "slurm" and not self.slurm.partition:
            raise ValueError("executor 'slurm' needs slurm.partition")
        return self


def input_files(config: Config, recipe_dir: Path) -> list[Path]:
    """Every raw file the stage reads: their content hashes enter the fingerprint."""
    return source_files(config.sources, recipe_dir)


# ---------------------------------------------------------------------------------------------------------------------
# executors: local by default; Slurm and Ray built only when the recipe selects them


def make_executor(config: Config, pipeline: list, tasks: int, logging_dir: Path):
    """One pass's datatrove executor, every recipe option passed through (hfpipe.stages.data.engines)."""
    from hfpipe.stages.data.engines import make_executor as build

    return build(config, pipeline, tasks, logging_dir)


def preflight(config: Config, recipe_dir: Path) -> None:
    """Before the run starts: every data.slurm.options / data.ray.options key is an argument of datatrove's
    executor; executor: slurm needs sbatch, executor: ray needs ray (the hfpipe[ray] extra)."""
    import shutil as sh

    from hfpipe.stages.data.engines import check_options

    if config.executor == "slurm" and not sh.which("sbatch"):
        raise HfpipeError("data.executor: slurm, but sbatch is not on PATH (a single-node Slurm here: `make slurm-up`)", 2)
    if config.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise HfpipeError("data.executor: ray, but ray is not installed (pip install 'hfpipe[ray]')", 2) from None
    check_options(config)


# ---------------------------------------------------------------------------------------------------------------------
# run


class DataPass(NamedTuple):
    """One datatrove pass of the stage: run ``pipeline`` as ``tasks`` tasks on any datatrove executor, logging to
    ``datatrove_logs/<name>``; the passes run in order, each reading what the earlier ones wrote."""

    name: str  # 1_filter, 2_dedup_signatures, 3_dedup_find, 5_minhash_1..3, 6_dedup, 5_balance_write
    pipeline: list  # datatrove PipelineSteps: readers, filters, formatters, dedup steps, writers
    tasks: int
    stats: list | None  # per step of pipeline: its name in stats.json (None: not a row); None: no table
    phase: str  # what the console shows while it runs
    total_from: str | None  # the earlier pass whose written documents are this one's progress total


class DataPlan(NamedTuple):
    passes: list[DataPass]
    docs_in: dict  # domain -> documents the sources hold (before any filter)
    bytes_in: dict
    named: list  # per step of the filter pass: (domain, stats name) or None
    domains: list[str]


def build_passes(config: Config, recipe_dir: Path, out_dir: Path, seed: int) -> DataPlan:
    """Every datatrove pass of the stage, built and not run: what run() executes on the recipe's executor, and what
    ``recipe.data.to_datatrove(out_dir)`` hands a user to run on theirs (``hfpipe export --stage data --to datatrove``
    writes a script that does). Sources are read and validated here (phase 1): a bad one fails before any pass."""
    from datatrove.pipeline.dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

    from hfpipe.stages.data import mixture as mix
    from hfpipe.stages.data.readers import MARKUP_FORMATS, make_extractor
    from hfpipe.stages.data.steps import domain_steps
    from hfpipe.stages.data.steps.minhash import minhash_pipelines, minhash_tasks
    from hfpipe.stages.data.steps.routing import ForDomain

    out_dir = Path(out_dir)
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    passes: list[DataPass] = []

    # The passes hand each other plain jsonl under work/ (deleted at the end): datatrove's default gzip (level 9)
    # took 7.0 of 52 s (13%) of a cProfiled run of the starter recipe, for files read once or twice, then deleted.
    def write(folder: Path, output_filename: str = "${rank}.jsonl"):
        return JsonlWriter(str(folder), output_filename=output_filename, compression=None)

    def read(folder: Path):
        return JsonlReader(str(folder), glob_pattern="**/*.jsonl", recursive=True, add_file_path=False)

    # ---------------------------------------------------------------- 1. resolve + validate
    readers, docs_in, bytes_in = build_readers(config, recipe_dir, work)
    dropped = out_dir / "dropped" if config.keep_dropped else None
    if any(config.chains.get(d) and "gopher_quality" in config.chains[d] for d in readers):
        try:  # build the word tokenizer now: a bad language fails here, before any pass
            from datatrove.utils.word_tokenizers import load_word_tokenizer

            tokenizer = load_word_tokenizer(config.quality.language)
            if config.quality.language != "en":  # English is judged by FastWordTokenizer: spaCy is never loaded
                tokenizer.word_tokenize("warm up")  # load it (workers=1 reuses it; forked workers inherit it)
        except (ImportError, ValueError) as e:
            raise HfpipeError(f"data.quality.language {config.quality.language!r}: {e}".replace("\n", " ")) from None

    # ---------------------------------------------------------------- 2. filter pass, every domain side by side
    # markup readers -> trafilatura (per domain) -> other readers -> each domain's chain (steps routed to the domain's
    # documents by ForDomain) -> work/filtered/<domain>/. A domain's documents meet the same steps in the same order as
    # in a pass of their own. One pass instead of one per domain: no start-up and drain per domain (85-107 ms each with
    # 2 workers), and one task's longer shard of a domain (web: the WARC) overlaps the other task's work on other
    # domains; on the starter recipe 2 workers went from 1.78-1.91x to 1.95-1.97x the speed of 1
    # (benchmarks/bench_data.py, quiet runs)
    pipeline, named = [], []  # named[i]: (domain, stats name) of pipeline[i]; None for readers and the writer

    def add(*steps_, domain: str | None = None, name: str | None = None) -> None:
        pipeline.extend(ForDomain(step, domain) if domain else step for step in steps_)
        named.extend([(domain, name)] * len(steps_) if domain else [None] * len(steps_))

    markup = {d: [r for s, r in rs if s.format in MARKUP_FORMATS] for d, rs in readers.items()}
    plain = {d: [r for s, r in rs if s.format not in MARKUP_FORMATS] for d, rs in readers.items()}
    # progress: a document counts where its source's reader emits it (markup pages before extraction drops any)
    markup_sources = frozenset(s.name for s in config.sources if s.format in MARKUP_FORMATS)
    plain_sources = frozenset(s.name for s in config.sources if s.format not in MARKUP_FORMATS)
    add(*(r for rs in markup.values() for r in rs))  # markup first: trafilatura sees only their documents
    for domain in (d for d, rs in markup.items() if rs):
        add(mix.Meter(f"{domain}:html", ticks=markup_sources), domain=domain, name=f"meter:{domain}:html")
        add(make_extractor(config.extract_timeout_s), domain=domain, name=f"{domain}:extract:trafilatura")
    add(*(r for rs in plain.values() for r in rs))
    for domain in readers:
        add(mix.Meter(f"{domain}:read", ticks=plain_sources), domain=domain, name=f"meter:{domain}:read")
        for label, step in domain_steps(domain, config, dropped, ledger=work / "contamination"):
            add(step, domain=domain, name=label)
            add(mix.Meter(label), domain=domain, name=f"meter:{label}")
    filtered = work / "filtered"
    add(write(filtered, "${domain}/${rank}.jsonl"))
    passes.append(DataPass("1_filter", pipeline, config.tasks, None, "filtering", "sources"))

    # ---------------------------------------------------------------- 3. dedup
    # exact (signature -> find -> filter), then MinHash near-dedup (signature -> buckets -> cluster -> filter) of what
    # exact dedup keeps: both MinHash passes that read documents read work/filtered through the exact-dedup filter (same
    # documents, same order per task), not a written copy; the last pass writes the ledger of what is left
    dd, exact = config.dedup, ExactDedupConfig(content_getter=_dedup_key)
    pipeline, names = [read(filtered), mix.Meter("dedup_in", ticks=True)], [None, "meter:dedup_in"]

    def dropped_by(step: str):
        return mix.DroppedWriter(str(dropped / step)) if dropped is not None else None

    if dd.exact:
        passes.append(DataPass("2_dedup_signatures", [read(filtered), ExactDedupSignature(str(work / "sigs"), exact)],
                               config.tasks, None, "deduplicating", None))
        passes.append(DataPass("3_dedup_find", [ExactFindDedups(str(work / "sigs"), str(work / "dups"), exact)], 1,
                               None, "deduplicating", None))
        pipeline += [ExactDedupFilter(str(work / "dups"), exact, exclusion_writer=dropped_by("dedup_exact")),
                     mix.Meter("dedup:exact")]
        names += ["dedup:exact", "meter:dedup:exact"]
    if dd.minhash.enabled:
        m = dd.minhash
        minhash = minhash_pipelines(work / "minhash", lambda: read(filtered), None, n_grams=m.n_grams,
                                    num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket, seed=seed,
                                    exclusion_writer=dropped_by("dedup_minhash"))
        if dd.exact:  # signatures of what exact dedup keeps, in the order the MinHash filter below sees it
            minhash[0].insert(1, ExactDedupFilter(str(work / "dups"), exact))
        for i, (passed, n) in enumerate(zip(minhash[:3], minhash_tasks(config.tasks, m.num_buckets)[:3])):
            passes.append(DataPass(f"5_minhash_{i + 1}", passed, n, None, "deduplicating", None))
        pipeline += [minhash[3][1], mix.Meter("dedup:minhash")]  # datatrove's MinhashDedupFilter
        names += ["dedup:minhash", "meter:dedup:minhash"]
    pipeline += [mix.Ledger(str(work / "ledger"), seed), write(work / "deduped")]
    passes.append(DataPass("6_dedup", pipeline, config.tasks, names + [None, None], "deduplicating", "1_filter"))

    # ---------------------------------------------------------------- 4. balance
    # a seeded sample towards the target shares -> data/*.jsonl.gz (+ parquet)
    b = config.balance
    pipeline, names = [read(work / "deduped"), mix.Meter("balance_in", ticks=True)], [None, "meter:balance_in"]
    if b.enabled:
        pipeline += [mix.BalanceSampler(str(work / "ledger"), seed, b.domain_shares, b.language_shares,
                                        b.max_bytes), mix.Meter("balance")]
        names += ["balance", "meter:balance"]
    pipeline.append(JsonlWriter(str(out_dir / "data"), output_filename="${rank}.jsonl", compression=None))
    if config.parquet:
        pipeline.append(ParquetWriter(str(out_dir / "data"), output_filename="${rank}.parquet"))
    pipeline.append(mix.GzipShard(str(out_dir / "data")))  # -> ${rank}.jsonl.gz, no timestamp: bit-identical reruns
    passes.append(DataPass("5_balance_write", pipeline, config.tasks, names + [None] * (2 + config.parquet),
                           "balancing and writing" if b.enabled else "writing", "6_dedup"))
    return DataPlan(passes, docs_in, bytes_in, named, list(readers))


def run(config: Config, inputs: Inputs, out_dir: Path) -> dict:
    from hfpipe.stages.data import mixture as mix
    from hfpipe.stages.data.engines import Passes
    from hfpipe.stages.data.steps.routing import preload

    out_dir = Path(out_dir)
    work, logs = out_dir / "work", out_dir / "datatrove_logs"
    # ---------------------------------------------------------------- 1-4. the passes (build_passes), then each run on
    # the recipe's executor (hfpipe.stages.data.engines): local and Ray run a pass when it is handed over; Slurm submits
    # the whole chain (depends=) at engine.wait(), so the passes' stats are read after that
    progress("reading sources")
    plan = build_passes(config, inputs.recipe_dir, out_dir, inputs.seed)
    docs_in, bytes_in, named = plan.docs_in, plan.bytes_in, plan.named
    engine = Passes(config, inputs.recipe_dir)
    # Only tasks run in this process count towards progress (one local worker); Hub sources are not counted up front
    counted = config.executor == "local" and min(config.workers, config.tasks) == 1
    where = "" if counted else f" ({config.tasks} tasks, {config.executor}" + \
        (f", {min(config.workers, config.tasks)} workers)" if config.executor == "local" else ")")
    hub = any(s.format == "hub" for s in config.sources)

    def filter_rows() -> list[dict]:  # after the filter pass (Slurm: after the whole chain)
        _contamination_report(config, work / "contamination", out_dir)
        blocks, steps = mix.merged_stats(logs / "1_filter"), []
        for domain in plan.domains:  # stats.json rows domain by domain, as from a pass of its own
            rows = mix.step_table(blocks, [n[1] if n and n[0] == domain else None for n in named])
            steps += rows
            dead = next((r for r in rows if r["docs_in"] and not r["docs_out"]), None)
            if dead:  # a chain never silently drops a whole domain
                _write_stats(out_dir, {"steps": steps})
                raise HfpipeError(f"data: step '{dead['step']}' dropped every {domain} document "
                                  f"({dead['docs_in']} in, 0 out; see stats.json)")
        return steps

    steps, tables, phase = [], [], None  # tables: (pass logging dir, step names) of the metered passes
    for p in plan.passes:
        if p.name == "1_filter" and config.executor == "local":  # models and indexes loaded once here, shared by
            for step in p.pipeline:  # every local task
                preload(step)
        if p.total_from == "sources":
            progress(p.phase + where, total=sum(docs_in.values()) if counted and not hub else None, unit="docs")
        elif p.total_from:
            progress(p.phase + where, total=_written(logs / p.total_from) if counted else None, unit="docs")
        elif p.phase != phase:
            progress(p.phase + where)
        phase = p.phase
        engine.run(p.pipeline, p.tasks, logs / p.name)
        if p.name == "1_filter" and not engine.deferred:
            steps = filter_rows()
        if p.stats is not None:
            tables.append((logs / p.name, p.stats))
    engine.wait()  # Slurm: the chain is submitted and watched until every pass is done; Ray: its runtime stops
    steps = (filter_rows() if engine.deferred else steps) + \
        [row for folder, n in tables for row in mix.step_table(mix.merged_stats(folder), n)]
    b = config.balance
    dropped = out_dir / "dropped" if config.keep_dropped else None
    # ---------------------------------------------------------------- 5. stats + plot + self-check
    # the output reads back, every doc carries its metadata
    progress("checking the output")
    if dropped is not None:
        mix.gzip_tree(dropped)
    totals = _read_back(out_dir, docs_in, bytes_in, mix.read_ledger(work / "ledger"))
    achieved = {axis: _shares(totals[axis]) for axis in ("domain", "language")}
    stats = {"steps": steps, "domains": totals["domain"], "languages": totals["language"],
             "shares": {"achieved": achieved, "target": {"domain": dict(b.domain_shares),
                                                         "language": dict(b.language_shares)} if b.enabled else {}}}
    _write_stats(out_dir, stats)
    mix.plot_mixture(out_dir / "mixture.png", achieved, stats["shares"].get("target") or {"domain": {}, "language": {}})
    shutil.rmtree(work)
    _relative_logs(logs, out_dir)

    counters = sorted({k for step in steps for k in step if k.startswith(("dropped", "redacted_", "language_"))})
    totals_by = {k: sum(step.get(k, 0) for step in steps) for k in counters}
    removed = {name: sum(r["docs_in"] - r["docs_out"] for r in steps if r["step"] == f"dedup:{name}")
               for name in ("exact", "minhash")}
    return {"docs_in": sum(docs_in.values()), "bytes_in": sum(bytes_in.values()),
            "docs_out": sum(d["docs_out"] for d in totals["domain"].values()),
            "bytes_out": sum(d["bytes_out"] for d in totals["domain"].values()),
            "output_files": len(list((out_dir / "data").glob("*.jsonl.gz"))),
            "docs_dropped_duplicate": removed["exact"], "docs_dropped_near_duplicate": removed["minhash"],
            **{f"docs_{k}": v for k, v in totals_by.items() if k.startswith("dropped")},
            **{f"pii_{k}": v for k, v in totals_by.items() if k.startswith("redacted_")},
            **{f"detected_{k}": v for k, v in totals_by.items() if k.startswith("language_")},
            **{f"docs_out_{d}": row["docs_out"] for d, row in sorted(totals["domain"].items())},
            **{f"share_{d}": round(v, 4) for d, v in sorted(achieved["domain"].items())}}


def _contamination_report(config: Config, ledger: Path, out_dir: Path) -> None:
    """contamination.json (hfpipe.stages.data.contamination): per source and eval task, the documents the
    decontaminate step checked and dropped, with an overlapping n-gram; written when a chain has the step."""
    if not any("decontaminate" in steps for steps in config.chains.values()):
        return
    from hfpipe.stages.data.contamination import summarize, write_report
    from hfpipe.stages.data.steps.decontamination import eval_index, read_ledger

    info = eval_index(n=config.decontamination_ngrams, extra_tasks=config.decontamination_tasks)[1]
    hits, checked = read_ledger(ledger) if ledger.is_dir() else ([], {})
    write_report(out_dir, "data", info, summarize(hits, checked))


def _written(logging_dir: Path) -> int | None:
    """Documents the last step of a pass (its writer) wrote, from datatrove's stats (None when it recorded none)."""
    from hfpipe.stages.data import mixture as mix

    blocks = mix.merged_stats(logging_dir)
    return int(blocks[-1].get("total", 0)) or None if blocks else None


def headline(metrics: dict) -> str:
    """The console's figure for this stage: documents kept of those read."""
    return f"{metrics['docs_out']:,} of {metrics['docs_in']:,} docs kept"


def inspect(folder: Path, stages: dict[str, Path], *, domain: str | None = None, dropped_by: str | None = None,
            n: int = 3, seed: int = 0) -> list[str]:
    """For `hfpipe inspect RECIPE data`: a sample of the documents this stage kept, or of those ``dropped_by`` a step
    dropped, with their reason, language, domain, quality score and PII redactions (hfpipe.stages.data.samples)."""
    from hfpipe.stages.data.samples import render_sample

    return render_sample(folder, domain=domain, dropped_by=dropped_by, n=n, seed=seed)


def _relative_logs(logs: Path, out_dir: Path) -> None:
    """datatrove's executor.json records the executor's folders as absolute paths of the machine that ran it: write
    them relative to the stage folder, so the promoted folder names no machine's paths."""
    prefixes = sorted({str(out_dir), str(out_dir.resolve())}, key=len, reverse=True)
    for path in logs.glob("*/executor.json"):
        text = path.read_text()
        for prefix in prefixes:
            text = text.replace(prefix + "/", "").replace(prefix, ".")
        path.write_text(text)


def _dedup_key(doc) -> bytes:  # the exact-dedup key: the UTF-8 text (datatrove's xxhash64 wants bytes)
    return doc.text.encode("utf-8")


def _write_stats(out_dir: Path, stats: dict) -> None:
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=False) + "\n")


def _shares(rows: dict[str, dict]) -> dict[str, float]:
    total = sum(r["bytes_out"] for r in rows.values()) or 1
    return {k: r["bytes_out"] / total for k, r in sorted(rows.items()) if r["bytes_out"]}


def _read_back(out_dir: Path, docs_in: dict, bytes_in: dict, ledger: list) -> dict:
    """Read the output shards back and total them per domain and language."""
    out_files = sorted((out_dir / "data").glob("*.jsonl.gz"))
    totals = {"domain": {d: {"docs_in": docs_in.get(d, 0), "bytes_in": bytes_in.get(d, 0), "docs_deduped": 0,
                             "bytes_deduped": 0, "docs_out": 0, "bytes_out": 0} for d in sorted({*docs_in, *bytes_in})},
              "language": {}}
    for _, nbytes, domain, lang in ledger:
        for axis, key in (("domain", domain), ("language", lang)):
            row = totals[axis].setdefault(key, {"docs_deduped": 0, "bytes_deduped": 0, "docs_out": 0, "bytes_out": 0})
            row["docs_deduped"], row["bytes_deduped"] = row["docs_deduped"] + 1, row["bytes_deduped"] + nbytes
    for f in out_files:
        raw = gzip.decompress(f.read_bytes())
        for lineno, line in enumerate(raw.rstrip(b"\n").split(b"\n") if raw else [], 1):
            doc = json.loads(line)
            missing = [k for k in REQUIRED_METADATA if k not in doc.get("metadata", {})]
            if not doc.get("text") or missing:
                raise HfpipeError(f"data self-check: {f}:{lineno} has no text or lacks metadata {missing}")
            m, nbytes = doc["metadata"], len(doc["text"].encode())
            for axis, key in (("domain", m["domain"]), ("language", m["language"])):
                row = totals[axis].setdefault(key, {"docs_deduped": 0, "bytes_deduped": 0, "docs_out": 0,
                                                    "bytes_out": 0})
                row["docs_out"], row["bytes_out"] = row["docs_out"] + 1, row["bytes_out"] + nbytes
    if not any(r["docs_out"] for r in totals["domain"].values()):
        raise HfpipeError("data: no document survived (balance shares or max_bytes leave nothing; see stats.json)")
    return totals


# ---------------------------------------------------------------------------------------------------------------------
# dry run


def describe(c: Config, recipe) -> dict:
    """For `hfpipe run --dry-run`: the datatrove executor, sources, chains and dedup, resolved offline."""
    sources = [{"name": s.name, "format": s.format, "domain": s.domain, "language": s.language,
                **({"dataset": s.dataset, "subset": s.subset, "split": s.split} if s.format == "hub" else {"path": s.path})}
               for s in c.sources]
    if c.executor == "slurm":
        s = c.slurm
        engine = {"executor": "datatrove.executor.SlurmPipelineExecutor", "tasks": c.tasks, "partition": s.partition,
                  "time": s.time, "cpus_per_task": s.cpus_per_task, "mem_per_cpu_gb": s.mem_per_cpu_gb, "qos": s.qos,
                  "venv_path": s.venv_path or "(the virtualenv running hfpipe)", "sbatch_args": dict(s.sbatch_args),
                  "workers": c.workers, "max_wait": s.max_wait, "options": dict(s.options),
                  "note": "one sbatch array job per pass, chained with depends= (afterok) and submitted at once; a "
                          "failed, cancelled or timed-out task ends the stage with its log, the rest is cancelled"}
    elif c.executor == "ray":
        engine = {"executor": "datatrove.executor.RayPipelineExecutor", "tasks": c.tasks, "workers": c.workers,
                  "cpus_per_task": c.ray.cpus_per_task, "mem_per_cpu_gb": c.ray.mem_per_cpu_gb,
                  "address": c.ray.address or "$RAY_ADDRESS, else a local runtime", "options": dict(c.ray.options),
                  "note": "connects to ray.address / RAY_ADDRESS (ray start --head / ray up), else starts a local "
                          "Ray runtime for the stage"}
    else:
        engine = {"executor": "datatrove.executor.LocalPipelineExecutor", "tasks": c.tasks,
                  "workers": min(c.workers, c.tasks)}
    expect = {"output_bytes_cap": c.balance.max_bytes} if c.balance.enabled and c.balance.max_bytes else {}
    return {"engine": engine, "sources": sources, "chains": {k: list(v) for k, v in c.chains.items()},
            "dedup": c.dedup.model_dump(), "expected": expect,
            "needs_network": any(s.format == "hub" for s in c.sources)}


def card_facts(folder: Path, stages: dict[str, Path]) -> dict:
    """For the model card: stats.json as tables, and the mixture plot."""
    from hfpipe.card import read_json, tables

    stats = read_json(folder / "stats.json")
    return {"section": {"stats": tables(stats) if isinstance(stats, dict) else None},
            "images": {"mixture": folder / "mixture.png"}}


def pins(config: Config, recipe_dir: Path) -> dict[str, dict]:
    """For the fingerprint: every Hub source by the commit its revision resolves to (hfpipe.models.pin)."""
    from hfpipe.models import pin

    return {f"data.sources[{i}]": pin(s.dataset, recipe_dir, revision=s.revision, repo_type="dataset")
            for i, s in enumerate(config.sources) if s.format == "hub"}
