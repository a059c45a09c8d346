"""Render results/RESULTS.md from every results/*.json (run by `make bench` after the benchmarks)."""

import json

from bench import RESULTS


# Every stage target of the issues and the bench that measures it: one missing from results/ is listed as not measured.
EXPECTED = {"data": "data stage MB/s per core, 1 vs 2 workers", "tokenizer": "tokenizer training MB/s vs tokenizers",
            "pretrain": "pretraining tokens/s vs a plain PyTorch loop; MFU",
            "posttrain": "SFT (>= 0.5x) and DPO tokens/s vs pretraining tokens/s; DPO pairs/s",
            "eval": "eval requests/s and lm-eval start-up time",
            "recipe": "tiny recipe end to end per stage wall time; cached re-run",
            "serve": "router requests/s vs transformers serve direct; continuous batching on CPU",
            "status": "hfpipe status wall, tiny recipe, cache cold and warm"}


def main() -> None:
    rows, figures = [], []
    have = {p.stem for p in RESULTS.glob("*.json")}
    for name in sorted(set(EXPECTED) - have):
        rows.append(f"| {name} | {EXPECTED[name]} | - | - | **not measured** | `python benchmarks/bench_{name}.py` |")
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        for t in r.get("targets", []):
            rows.append(f"| {r['name']} | {t['what']} | {t['value']} | {t['target']} | {'met' if t['met'] else '**not met**'} | `{r['command']}` |")
        for k, v in r.get("figures", {}).items():
            figures.append(f"| {r['name']} | {k} | {v} |")
    text = ["# Benchmark results", "", "| bench | what | value | target | status | command |", "|---|---|---|---|---|---|",
            *rows, "", "## All figures", "", "| bench | figure | value |", "|---|---|---|", *figures, ""]
    (RESULTS / "RESULTS.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
