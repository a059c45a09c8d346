"""`hfpipe` command line: run, status, card, validate, schema.

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
    runner.setup_logging()
    runner.run(recipe, _runs_dir(args), only=args.only, start=args.start, until=args.until, force=args.force or ())
    path = write_card(recipe, _runs_dir(args), _cards_dir(args))
    if path:
        print(f"model card: {path}")
    return 0


def cmd_status(args) -> int:
    from hfpipe import runner
    from hfpipe.recipe import load_recipe

    rows = runner.status(load_recipe(args.recipe, args.overrides), _runs_dir(args))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['stage']:<11} {r['status']:<8} {r['fingerprint'][:12]}  {r['path']}")
    return 0


def cmd_card(args) -> int:
    from hfpipe.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    path = write_card(recipe, _runs_dir(args), _cards_dir(args))
    if path is None:
        raise HfpipeError(f"{args.recipe}: no stage of this recipe has finished yet; run `hfpipe run {args.recipe}` first", 1)
    print(path)
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
    p.set_defaults(func=cmd_run)
    p = with_recipe("status", "per stage: done / stale / pending, fingerprint, folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    with_recipe("card", "re-render model_cards/<name>.md from the finished run").set_defaults(func=cmd_card)
    with_recipe("validate", "check the recipe without running anything").set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="JSON schema of the recipe (all sections, or one)")
    p.add_argument("stage", nargs="?")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
