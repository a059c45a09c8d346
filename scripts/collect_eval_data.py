"""Rebuild the data of hfpipe's bundled lm-eval tasks (hfpipe/tasks/) from real, redistributable sources.

capitals: "What is the capital of <country>?" with 4 choices, built from GNU miscfiles' countries table
(Debian package `miscfiles`, /usr/share/misc/countries.gz, GPL-2+; rows "UN code:ISO2:ISO3:name:capital").
Rows with no capital or with several capitals ("Porto-Novo (official capital), Cotonou (...)") are dropped.
The 3 distractors are other rows' capitals; they and the position of the answer come from a random.Random seeded
with the country name (string seeds are hashed with SHA-512, so the output is identical on every machine).
A few rows (chosen by the SHA-256 of the country name) form the "dev" split the few-shot examples come from.

Deterministic: the same countries.gz gives byte-identical jsonl files.

Usage (Debian/Ubuntu; downloads the .deb with apt-get, installs nothing):
    python scripts/collect_eval_data.py                      # apt-get download miscfiles into a temp dir
    python scripts/collect_eval_data.py --countries FILE.gz  # or use an existing countries.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import subprocess
import tempfile
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent.parent / "hfpipe" / "tasks"
N_CHOICES = 4  # the answer + 3 distractors
N_DEV = 5  # rows held out as few-shot examples
MIN_ROWS = 200  # the 1.5+dfsg-4 table gives 221 usable rows; far fewer means the format changed


def fetch_countries(workdir: Path) -> tuple[Path, str]:
    """apt-get download miscfiles, unpack it without installing; return countries.gz and the package version."""
    subprocess.run(["apt-get", "download", "miscfiles"], cwd=workdir, check=True)
    deb = next(workdir.glob("miscfiles_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "root")], check=True)
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return workdir / "root/usr/share/misc/countries.gz", version


def read_rows(path: Path) -> list[tuple[str, str]]:
    """(country, capital) for every row with exactly one capital."""
    rows = []
    for line in gzip.open(path, "rt", encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        fields = line.rstrip("\n").split(":")
        if len(fields) != 5:
            raise SystemExit(f"{path}: unexpected line {line!r}")
        country, capital = fields[3].strip(), fields[4].strip()
        if capital and "(" not in capital:
            rows.append((country, capital))
    return rows


def build_capitals(rows: list[tuple[str, str]]) -> dict[str, list[dict]]:
    capitals = sorted({capital for _, capital in rows})
    docs = []
    for country, capital in rows:
        rng = random.Random(f"capitals:{country}")
        choices = rng.sample([c for c in capitals if c != capital], N_CHOICES - 1)
        answer = rng.randrange(N_CHOICES)
        choices.insert(answer, capital)
        docs.append({"country": country, "choices": choices, "answer": answer})
    by_hash = sorted(docs, key=lambda d: hashlib.sha256(d["country"].encode()).hexdigest())
    dev = {d["country"] for d in by_hash[:N_DEV]}
    return {"dev": [d for d in docs if d["country"] in dev], "test": [d for d in docs if d["country"] not in dev]}


def write_jsonl(docs: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--countries", type=Path, help="an existing miscfiles countries.gz (default: apt-get download)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path, version = (args.countries, "given file") if args.countries else fetch_countries(Path(tmp))
        rows = read_rows(path)
        if len(rows) < MIN_ROWS:
            raise SystemExit(f"{path}: only {len(rows)} usable rows (expected >= {MIN_ROWS})")
        splits = build_capitals(rows)
    for split, docs in splits.items():
        write_jsonl(docs, TASKS_DIR / "capitals" / f"{split}.jsonl")
    print(f"capitals: miscfiles {version}: " + ", ".join(f"{s}={len(d)}" for s, d in splits.items()))


if __name__ == "__main__":
    main()
