"""`hfpipe` command line: run, status, gc, card, inspect, validate, compare, schema, push, reproduce, serve, chat, loadtest.

Exit codes: 0 ok, 1 a stage failed while running, 2 bad usage or recipe. Errors are one line; --debug shows the
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hfpipe.errors import HfpipeError


def _runs_dir(args) -> Path:
    return Path(args.runs_dir or os.environ.get("HFPIPE_RUNS_DIR", "runs"))


def _cards_dir(args) -> Path:
    return Path(args.cards_dir or os.environ.get("HFPIPE_CARDS_DIR", "model_cards"))


def write_card(recipe, runs_dir: Path, cards_dir: Path) -> Path | None:
    """Render model_cards/<name>.md from the finished stages of the recipe (None if nothing has finished)."""
    from hfpipe import card, runner

    stages = runner.finished_stages(recipe, runs_dir)
    if not stages:
        return None
    path = cards_dir / f"{recipe.name}.md"
    card.write_card(card.build_card(recipe.name, recipe.to_yaml(), stages), path)
    return path


def cmd_run(args) -> int:
    from hfpipe import runner
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.dry_run:  # offline: plan + per-stage launch commands, nothing run (hfpipe/dryrun.py)
        from hfpipe import dryrun

        info = dryrun.describe(recipe, _runs_dir(args))
        print(json.dumps(info, indent=2) if args.json else dryrun.render(info))
        return 0
    console = _console(args)
    rows = runner.run(recipe, _runs_dir(args), only=args.only, start=args.start, until=args.until,
                      force=args.force or (), console=console)
    path = write_card(recipe, _runs_dir(args), _cards_dir(args))
    for line in runner.summary_lines(rows, path):
        console.line(line)
    return 0


def _console(args):
    """The terminal console of a command that runs stages (runner.Console): live lines, library output into each
    stage's stage.log (shown as well with -v), the ``hfpipe`` logger's warnings on it."""
    from hfpipe import runner

    console = runner.Console.terminal(verbose=args.verbose)
    runner.setup_logging(console)
    return console


def cmd_status(args) -> int:
    from hfpipe import runner
    from hfpipe.recipe import load_recipe

    rows = runner.status(load_recipe(args.recipe, args.overrides), _runs_dir(args))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            pins = f"  unpinned: {', '.join(r['unpinned'])}" if r["unpinned"] else ""
            print(f"{r['stage']:<11} {r['status']:<8} {r['fingerprint'][:12]}  {r['path']}{pins}")
        stale = [r for r in rows if r["stale_folders"]]
        if stale:
            print(f"stale: {sum(r['stale_folders'] for r in stale)} folder(s), "
                  f"{_size(sum(r['stale_bytes'] for r in stale))} ({', '.join(r['stage'] for r in stale)}); "
                  f"`hfpipe gc {args.recipe}` frees them")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def cmd_gc(args) -> int:
    from hfpipe import runner
    from hfpipe.recipe import load_recipe

    rows = runner.gc(load_recipe(args.recipe, args.overrides), _runs_dir(args), dry_run=args.dry_run)
    for r in rows:
        print(f"{'would remove' if args.dry_run else 'removed'} {r['path']} ({_size(r['bytes'])}; {r['why']})")
    total = _size(sum(r["bytes"] for r in rows))
    print(f"{'would free' if args.dry_run else 'freed'} {total} in {len(rows)} folder(s)")
    return 0


def cmd_card(args) -> int:
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    path = write_card(recipe, _runs_dir(args), _cards_dir(args))
    if path is None:
        raise HfpipeError(f"{args.recipe}: no stage of this recipe has finished yet; run `hfpipe run {args.recipe}` first", 1)
    print(path)
    return 0


# what `hfpipe inspect RECIPE WHAT` shows -> the stage whose `inspect(folder, stages, **options)` shows it
INSPECT = {"data": "data", "tokens": "tokenizer"}


def cmd_inspect(args) -> int:
    """A sample of a finished stage's output, for a person: the data stage's kept or dropped documents (with why), or
    documents cut into the tokenizer's tokens."""
    from hfpipe import runner
    from hfpipe.recipe import load_recipe
    from hfpipe.stages import load_module

    recipe = load_recipe(args.recipe, args.overrides)
    stage = INSPECT[args.what]
    if args.dropped_by and args.what != "data":
        raise HfpipeError(f"inspect {args.what}: --dropped-by applies to `inspect RECIPE data` only", 2)
    if stage not in recipe.stages():
        raise HfpipeError(f"inspect {args.what}: recipe '{recipe.name}' has no {stage} stage", 2)
    finished = runner.finished_stages(recipe, _runs_dir(args))
    if stage not in finished:
        raise HfpipeError(f"inspect {args.what}: the {stage} stage of '{recipe.name}' has not finished with the current "
                          f"recipe; run `hfpipe run {args.recipe} --until {stage}` first", 1)
    options = {"domain": args.domain, "n": args.n, "seed": recipe.seed if args.seed is None else args.seed}
    options.update({"dropped_by": args.dropped_by} if args.what == "data" else {"color": sys.stdout.isatty()})
    for line in load_module(stage).inspect(finished[stage], finished, **options):
        print(line)
    return 0


def cmd_validate(args) -> int:
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print(f"{args.recipe}: ok ({recipe.name}: {', '.join(recipe.stages()) or 'no stages'})")
    return 0


def cmd_schema(args) -> int:
    from hfpipe.recipe import json_schema

    schema = json_schema()
    if args.stage:
        defs = schema.get("$defs", {})
        ref = schema["properties"].get(args.stage)
        if ref is None:
            raise HfpipeError(f"schema: unknown section '{args.stage}' (sections: {', '.join(schema['properties'])})", 2)
        schema = {"section": args.stage, "schema": ref, "$defs": defs}
    print(json.dumps(schema, indent=2))
    return 0


def cmd_compare(args) -> int:
    from hfpipe.compare import compare_cards

    print(compare_cards(args.card_a, args.card_b, max_items=args.max_items))
    return 0


def cmd_push(args) -> int:
    from hfpipe.hub import push
    from hfpipe.recipe import load_recipe

    done = push(load_recipe(args.recipe, args.overrides), _runs_dir(args), args.repo_id, revision=args.revision,
                private=args.private, dry_run=args.dry_run, force=args.force)
    if done["dry_run"]:
        print(f"dry run: would upload {len(done['files'])} files ({done['bytes']} bytes) from {done['folder']} to "
              f"{done['endpoint']}/{done['repo_id']} at revision {done['revision']}")
        for f in done["files"]:
            print(f"  {f}")
    else:
        print(f"pushed {len(done['files'])} files to {done['url']} (commit {done['commit']})")
    return 0


def cmd_reproduce(args) -> int:
    from hfpipe.reproduce import format_report, reproduce

    report = reproduce(Path(args.card), _runs_dir(args), overrides=args.overrides,
                       recipe_dir=Path(args.recipe_dir) if args.recipe_dir else None,
                       into=Path(args.into) if args.into else None, console=_console(args))
    print(format_report(report))
    return 0 if report["identical"] else 1


def _serve_section(recipe, command: str):
    if recipe.serve is None:
        raise HfpipeError(f"{command}: recipe '{recipe.name}' has no serve section; add `serve: {{}}` (defaults: "
                          f"transformers serve on the full export)", 2)
    return recipe.serve


def cmd_serve(args) -> int:
    """The serve stage's stack in the foreground: backends + router until Ctrl-C / SIGTERM (then both are stopped)."""
    import time

    from hfpipe.stages.serve import router
    from hfpipe.hub import export_folder
    from hfpipe.recipe import load_recipe
    from hfpipe.stages.serve import commands, route_rule

    recipe = load_recipe(args.recipe, args.overrides)
    config = _serve_section(recipe, "serve")
    variants = args.variant or list(config.variants)
    stray = [v for v in variants if v not in config.variants]
    if stray:
        raise HfpipeError(f"serve: --variant {stray[0]} is not in serve.variants {list(config.variants)}", 2)
    export, _ = export_folder(recipe, _runs_dir(args), command="serve")
    folders = router.variant_dirs(export, variants)
    if args.print_commands:
        for variant, cmds in commands(config, folders, recipe.name).items():
            print(f"# {variant}\n" + "\n".join(f"{engine}: {cmd}" for engine, cmd in cmds.items()))
        return 0
    why = router.engine_available(config.engine)
    if why:
        raise HfpipeError(f"serve: {config.engine} cannot start here: {why}", 2)
    host, port = args.host or config.host, args.port or config.port
    if not router.is_loopback(host):
        print(f"hfpipe: warning: the router listens on {host}, beyond this machine; it has no authentication",
              file=sys.stderr)
    log_dir = _runs_dir(args) / recipe.name / "_serve"  # not "serve-*": that is the stage folders' pattern
    with router.Stack(folders, config, log_dir, route_rule(config, recipe.seed, variants), recipe.name, host=host,
                       port=port) as stack:
        print(f"serving {recipe.name} ({', '.join(variants)}; {config.engine}; rule {stack.rule.rule}) at "
              f"{stack.url}/v1 -- metrics {stack.url}/metrics, route log {log_dir}/route.jsonl; Ctrl-C stops",
              flush=True)
        while True:
            dead = [b for b in stack.backends if b.proc.poll() is not None]
            if dead:
                raise HfpipeError(f"serve: the {dead[0].variant} backend exited with code {dead[0].proc.returncode}: "
                                  f"{router.last_line(dead[0].log)} (log: {dead[0].log})", 1)
            time.sleep(1)


def cmd_chat(args) -> int:
    """Talk to the finished export in the terminal, through its chat template (llama.cpp for a GGUF variant)."""
    from hfpipe.hub import export_folder
    from hfpipe.recipe import load_recipe
    from hfpipe.stages.deploy.chat import chat

    recipe = load_recipe(args.recipe, args.overrides)
    export, _ = export_folder(recipe, _runs_dir(args), command="chat")
    chat(export, args.variant, args.max_new_tokens, system=args.system)
    return 0


def cmd_export(args) -> int:
    """One stage as the files the upstream command line takes (hfpipe/interop/export.py)."""
    from hfpipe.interop.export import export
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    for path in export(recipe, args.stage, args.to, Path(args.dir), _runs_dir(args), args.overrides):
        print(path)
    return 0


def cmd_import(args) -> int:
    """An alignment-handbook / open-r1 recipe as an hfpipe recipe (hfpipe/interop/importer.py), validated."""
    from hfpipe.interop.importer import check_imported, import_recipe

    text, _, _ = import_recipe(args.file)
    check_imported(text, Path(args.file))
    if args.output:
        Path(args.output).write_text(text)
        print(args.output)
    else:
        print(text, end="")
    return 0


def cmd_loadtest(args) -> int:
    """Against --url: print the figures. Otherwise run the recipe's serve stage (start, load-test, stop; into the card)."""
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    config = _serve_section(recipe, "loadtest")
    if args.url:
        from hfpipe.stages.serve.loadtest import run_loadtest
        from hfpipe.stages import resolve_path

        lt = config.loadtest
        prompts = resolve_path(lt.prompts, recipe.recipe_dir) if lt.prompts else None
        result = run_loadtest(args.url, requests=lt.requests, concurrency=lt.concurrency, max_seconds=lt.max_seconds,
                              max_tokens=lt.max_tokens, prompts_file=prompts, stream=lt.stream,
                              timeout_s=lt.request_timeout_s)
        result.pop("_records")
        print(json.dumps(result, indent=2))
        return 0 if result["errors"] == 0 and result["requests_ok"] > 0 else 1
    from hfpipe import runner

    runner.run(recipe, _runs_dir(args), only=["serve"], force=["serve"] if args.force else (), console=_console(args))
    path = write_card(recipe, _runs_dir(args), _cards_dir(args))
    from hfpipe.stages.serve import LOADTEST

    folder = runner.finished_stages(recipe, _runs_dir(args))["serve"]
    summary = json.loads((folder / LOADTEST).read_text())
    print(f"loadtest: {summary['requests_ok']}/{summary['requests_sent']} ok, p50 {summary['latency_p50_s']:.3f} s, "
          f"p95 {summary['latency_p95_s']:.3f} s, {summary['requests_per_s']:.2f} req/s, "
          f"{summary['completion_tokens_per_s']:.1f} tokens/s ({folder / LOADTEST}; card: {path})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hfpipe import __version__

    parser = argparse.ArgumentParser(prog="hfpipe", description="One YAML recipe runs the whole LLM pipeline.")
    parser.add_argument("--version", action="version", version=f"hfpipe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--runs-dir", default=None, help="where stage folders go (default: $HFPIPE_RUNS_DIR or ./runs)")
    parser.add_argument("--cards-dir", default=None, help="where cards go (default: $HFPIPE_CARDS_DIR or ./model_cards)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_recipe(name, help_):
        p = sub.add_parser(name, help=help_)
        p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. pretrain.learning_rate=3e-4")
        return p

    p = with_recipe("run", "run the recipe; finished stages whose inputs did not change are skipped")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage (earlier ones must be done)")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.add_argument("--force", action="append", metavar="STAGE", help="re-run this stage even if done ('all' for every stage)")
    p.add_argument("--dry-run", action="store_true", help="validate and plan offline; print each stage's launch "
                   "command, engine settings, expected tokens/steps/checkpoints; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print it as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the libraries' output (it always goes "
                   "to each stage's stage.log)")
    p.set_defaults(func=cmd_run)
    p = with_recipe("status", "per stage: done / stale / pending, fingerprint, folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = with_recipe("gc", "remove stage folders no current fingerprint points to, and work folders of dead runs")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed and the space it frees")
    p.set_defaults(func=cmd_gc)
    with_recipe("card", "re-render model_cards/<name>.md from the finished run").set_defaults(func=cmd_card)
    p = sub.add_parser("inspect", help="a sample of a finished stage's output: the data stage's documents, kept or "
                       "dropped with the step and reason (data), or cut into tokens (tokens)")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("what", choices=sorted(INSPECT), help="data: documents of the data stage; tokens: documents "
                   "tokenized by the tokenizer stage, token boundaries marked")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides (the run they name must have finished)")
    p.add_argument("--domain", default=None, help="only documents of this domain (metadata.domain)")
    p.add_argument("--dropped-by", default=None, metavar="STEP", help="documents this step dropped, with the reason "
                   "(a chain step such as gopher_quality, or dedup_exact / dedup_minhash)")
    p.add_argument("-n", type=int, default=3, help="how many documents (default 3)")
    p.add_argument("--seed", type=int, default=None, help="of the sample (default: the recipe's seed)")
    p.set_defaults(func=cmd_inspect)
    with_recipe("validate", "check the recipe without running anything").set_defaults(func=cmd_validate)
    p = sub.add_parser("compare", help="evaluation scores of two model cards or eval runs side by side; with two eval "
                       "stage folders also the items whose answers changed")
    p.add_argument("card_a", help="model card written by hfpipe (.md, or the folder with its README.md), or an eval "
                   "stage folder (results.json and samples_<task>.jsonl)")
    p.add_argument("card_b")
    p.add_argument("--max-items", type=int, default=20, help="changed items shown (default 20)")
    p.set_defaults(func=cmd_compare)
    p = with_recipe("push", "upload the finished export (weights, tokenizer, card) to the Hugging Face Hub")
    p.add_argument("--repo-id", required=True, help="namespace/name on the Hub (HF_ENDPOINT honoured)")
    p.add_argument("--revision", default=None, help="branch to create (default: run-<deploy fingerprint[:12]>)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    p.add_argument("--force", action="store_true", help="replace the content of an existing revision")
    p.set_defaults(func=cmd_push)
    p = sub.add_parser("reproduce", help="re-run the recipe embedded in a model card; compare fingerprints and weights")
    p.add_argument("card", help="model card (model_cards/<name>.md or an export's README.md)")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides (a changed key is reported as a difference)")
    p.add_argument("--recipe-dir", default=None, help="folder the recipe's relative paths are relative to "
                   "(default: recipes/ beside the card's model_cards/ folder, else the card's folder)")
    p.add_argument("--into", default=None, metavar="DIR", help="run into this folder, reusing the stages a previous "
                   "reproduce finished there (default: a new runs/reproduce/<name>-<time>/)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the libraries' output")
    p.set_defaults(func=cmd_reproduce)
    p = with_recipe("serve", "serve the finished export: the recipe's engine per variant behind the hfpipe router "
                    "(OpenAI-compatible /v1, Prometheus /metrics); runs until Ctrl-C")
    p.add_argument("--variant", action="append", metavar="NAME", help="serve only this variant (repeatable; default: "
                   "serve.variants)")
    p.add_argument("--host", default=None, help="router address (default: serve.host, loopback)")
    p.add_argument("--port", type=int, default=None, help="router port (default: serve.port)")
    p.add_argument("--print-commands", action="store_true", help="print the transformers / vLLM / TGI command lines "
                   "for each variant and exit")
    p.set_defaults(func=cmd_serve)
    p = with_recipe("chat", "talk to the finished export in the terminal through its chat template (greedy; "
                    "llama.cpp for GGUF variants); one line is one turn, an empty line ends it")
    p.add_argument("--variant", default="full", help="full (default), int8 / int4 (deploy.quantize) or "
                   "gguf-<type> (deploy.gguf, e.g. gguf-q4_k_m; needs hfpipe[gguf])")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    p.add_argument("--system", default=None, help="a system turn to start the conversation with")
    p.set_defaults(func=cmd_chat)
    p = with_recipe("loadtest", "bounded load test: run the serve stage (start, test, stop; figures into the card), "
                    "or test a running endpoint with --url")
    p.add_argument("--url", default=None, help="loopback base URL of a running server (http://127.0.0.1:8000); "
                   "prints the figures, writes nothing")
    p.add_argument("--force", action="store_true", help="re-run the serve stage even if it is done")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the libraries' output")
    p.set_defaults(func=cmd_loadtest)
    p = sub.add_parser("export", help="one stage as the files its library's command line takes: trl sft|dpo|kto|"
                       "reward|grpo|rloo --config, lm_eval --include_path, accelerate launch --config_file, a datatrove "
                       "pipeline script")
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("dir", help="folder to write the export into")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--stage", required=True, help="sft, preference or rl (--to trl), eval (lm-eval), pretrain "
                   "(accelerate), data (datatrove)")
    p.add_argument("--to", required=True, choices=["trl", "lm-eval", "accelerate", "datatrove"])
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="an alignment-handbook / open-r1 recipe (TRL script arguments) as an hfpipe "
                       "recipe, every argument kept")
    p.add_argument("file", help="the recipe's YAML file")
    p.add_argument("-o", "--output", default=None, help="write the recipe here (default: print it)")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("schema", help="JSON schema of the recipe (all sections, or one)")
    p.add_argument("stage", nargs="?")
    p.set_defaults(func=cmd_schema)
    return parser


class _Terminated(BaseException):
    """SIGTERM outside pretraining's own handler: unwind like Ctrl-C (the stage's .partial folder stays unpromoted)."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _default_sigterm_in_child() -> None:
    """A process forked from the CLI (datatrove's local workers, its extraction subprocesses) dies of SIGTERM as
    multiprocessing expects when it terminates a pool: raising _Terminated there instead ran the worker's exit
    handlers, which waited forever on the pool's manager, and `hfpipe run` hung at the end of a data pass."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if not getattr(main, "_fork_hook", False):  # once per process (main() may be called again in one)
        os.register_at_fork(after_in_child=_default_sigterm_in_child)
        main._fork_hook = True
    try:
        return args.func(args)
    except HfpipeError as e:
        if args.debug:
            raise
        print(f"hfpipe: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hfpipe: interrupted; finished stages are kept, re-run to continue", file=sys.stderr)
        return 130
    except _Terminated:
        print("hfpipe: stopped by SIGTERM; finished stages are kept, re-run the same command to continue", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
