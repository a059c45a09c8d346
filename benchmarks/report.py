"""Render results/RESULTS.md from every results/*.json (run by `make bench` after the benchmarks)."""

import json

from bench import RESULTS

# Every target of the issues and the bench that measures it: one missing from results/ is listed as not measured.
EXPECTED = {"data": "data stage MB/s per core; 2 workers vs 1", "tokenizer": "tokenizer stage vs tokenizers direct",
            "pretrain": "pretrain stage vs a plain PyTorch loop; MFU",
            "posttrain": "SFT tokens/s vs pretraining; SFT with checkpoints vs without",
            "eval": "eval stage (latency off / on) vs lm_eval.simple_evaluate direct",
            "recipe": "cached re-run vs first run", "serve": "router vs transformers serve direct",
            "status": "hfpipe status wall, tiny recipe, cache warm",
            "scale": "pretrain peak RSS and tokens/s, corpus x1 vs x16",
            "generation": "SmolLM2-135M decode tokens/s: hfpipe serve, llama.cpp Q8_0 / Q4_K_M, physical bound"}


def cell(v) -> str:
    return "-" if v is None else str(v)


def main() -> None:
    rows, figures = [], []
    have = {p.stem for p in RESULTS.glob("*.json")}
    for name in sorted(set(EXPECTED) - have):
        rows.append(f"| {name} | {EXPECTED[name]} | - | - | - | - | - | **not measured** | - | - | "
                    f"`python benchmarks/bench_{name}.py` |")
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        load = r.get("load_avg_1min", {})
        if not r.get("targets"):
            rows.append(f"| {r['name']} | {EXPECTED.get(r['name'], '')} | see figures | - | - | - | figures only | - | "
                        f"{r.get('commit', '-')} {r.get('when', '')} | {cell(load.get('before'))} / "
                        f"{cell(load.get('after'))} | `{r['command']}` |")
        for t in r.get("targets", []):
            status = "met" if t["met"] else "**missed**"
            if "commit" not in r:  # written before the protocol (and its commit record) existed
                status = f"**not re-measured** (old protocol: {status})"
            rows.append(f"| {r['name']} | {t['what']} | {t['value']} | {cell(t.get('min'))} | {cell(t.get('max'))} | "
                        f"{cell(t.get('n'))} | {t['target']} | {status} | {r.get('commit', '-')} {r.get('when', '')} | "
                        f"{cell(load.get('before'))} / {cell(load.get('after'))} | `{r['command']}` |")
        for k, v in r.get("figures", {}).items():
            if k != "runs":
                figures.append(f"| {r['name']} | {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    text = ["# Benchmark results", "",
            "Protocol: benchmarks/README.md (warm-up, >= 8 alternated repetitions, the median of the paired ratios; "
            "min, max and n beside it; one `make bench` run, a missed target stays missed).", "",
            "| bench | what | median | min | max | n | target | status | commit, date | load before / after | command |",
            "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
            "## All figures", "", "| bench | figure | value |", "|---|---|---|", *figures, ""]
    (RESULTS / "RESULTS.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
