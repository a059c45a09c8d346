"""Build hfpipe/datasets/quality_train.jsonl: the training set of the data stage's quality classifier
(hfpipe.stages.data.steps.classifier.QualityClassifierFilter). Deterministic: the same inputs give a byte-identical
file.

Rows are {"text", "label" (1 good prose / 0 low quality), "source"}:

- label 1: paragraphs of State of the Union addresses (data/tiny/sotu.jsonl, public domain), Moby Dick chapters 1-20
  (data/tiny/moby-dick, public domain; chapters 21-30 stay held out for tests) and the body text of the Python 3.11
  library docs HTML (Debian python3.11-doc, PSF licence), grouped into chunks of about 300-1200 characters;
- label 0: the navigation boilerplate of the same Python docs pages (Sphinx "related" bar, sidebar, footer: real
  boilerplate) and spam-like messages composed from the phrase lists below (synthetic, written for this file; only
  reserved example.com domains and 555 phone numbers).

Usage (python3.11-doc: `apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb DIR`):
    .venv/bin/python scripts/collect_quality_data.py DIR/usr/share/doc/python3.11/html
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "hfpipe" / "datasets" / "quality_train.jsonl"
PER_SOURCE = 100

SPAM_OPENERS = ["CONGRATULATIONS!!!", "URGENT: your account", "Dear winner,", "LIMITED TIME OFFER!!!",
                "You have been selected", "Hot deal just for you", "FINAL NOTICE", "Act now!!!", "100% FREE",
                "Cheap meds online", "Make $$$ from home", "Exclusive VIP access"]
SPAM_BODIES = ["click here to claim your FREE prize now", "buy now and get 90% off best price guaranteed",
               "earn $5000 per week working from home no experience needed", "your account will be suspended "
               "unless you verify your password today", "lose 30 pounds in 30 days with this one weird trick",
               "cheap watches cheap pills cheap loans best prices", "you won a brand new iPhone just pay shipping",
               "hot singles in your area are waiting for you", "double your bitcoin in 24 hours guaranteed",
               "no credit check instant approval apply now", "unsubscribe click here remove me from list",
               "best casino bonus free spins sign up today"]
SPAM_CLOSERS = ["Call +1 555 555 0100 NOW!!!", "Visit www.example.com/deal >>> CLICK HERE <<<",
                "Reply to offers@example.com", "Limited stock!!! Order today!!!", "*** Don't miss out ***",
                "Text WIN to 555 555 0111", "Offer expires at midnight!!!", "$$$ $$$ $$$"]


def chunks(paragraphs: list[str], lo: int = 300, hi: int = 1200) -> list[str]:
    """Group consecutive paragraphs into chunks of lo..hi characters (a longer paragraph stands alone)."""
    out, cur = [], ""
    for p in paragraphs:
        p = re.sub(r"\s+", " ", p).strip()
        if not p:
            continue
        cur = f"{cur}\n{p}".strip()
        if len(cur) >= lo:
            out.append(cur[: hi * 2])
            cur = ""
    return out


def spread(items: list, n: int) -> list:
    """n items evenly spread over the list (deterministic)."""
    step = max(1, len(items) // n)
    return items[::step][:n]


def main(html_dir: Path) -> None:
    import lxml.html

    rows = []
    sotu = [json.loads(line)["text"] for line in (ROOT / "data/tiny/sotu.jsonl").read_text().splitlines()]
    rows += [{"text": t, "label": 1, "source": "sotu"}
             for t in spread(chunks([s for doc in sotu for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", doc)]),
                             PER_SOURCE)]
    moby = [(ROOT / f"data/tiny/moby-dick/chapter_{i}.txt").read_text() for i in range(1, 21)]
    rows += [{"text": t, "label": 1, "source": "moby-dick ch. 1-20"}
             for t in spread(chunks([p for ch in moby for p in ch.split("\n\n")]), PER_SOURCE)]

    body, boiler = [], []
    for page in sorted((html_dir / "library").glob("*.html")):
        root = lxml.html.parse(str(page)).getroot()
        body += [p.text_content() for p in root.xpath('//div[@class="body"]//p') if len(p.text_content()) > 80]
        parts = []
        for cls in ("related", "sphinxsidebar", "footer"):
            for el in root.xpath(f'//div[contains(concat(" ", @class, " "), " {cls} ")]')[:1]:
                parts.append(re.sub(r"\n\s*", "\n", re.sub(r"[ \t]+", " ", el.text_content())).strip())
        boiler.append("\n".join(parts)[:2400])
    rows += [{"text": t, "label": 1, "source": "python3.11-doc library body"} for t in spread(chunks(body), PER_SOURCE)]
    rows += [{"text": t, "label": 0, "source": "python3.11-doc library navigation"} for t in spread(boiler, PER_SOURCE)]

    rng = random.Random(0)
    for _ in range(PER_SOURCE):
        lines = [rng.choice(SPAM_OPENERS)] + rng.sample(SPAM_BODIES, rng.randint(2, 4)) + [rng.choice(SPAM_CLOSERS)]
        rows.append({"text": "\n".join(lines), "label": 0, "source": "synthetic spam (this script)"})

    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{OUT}: {len(rows)} rows, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
