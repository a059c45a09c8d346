"""Render results/RESULTS.md from every results/*.json (run by `make bench` after the benchmarks)."""

import json

from bench import RESULTS


def main() -> None:
    rows, figures = [], []
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
