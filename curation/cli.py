"""curate: build PixArt training datasets on Ray, export them for PixArt, sample, verify, report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from curation.config import ConfigError
from curation.stats import format_stage_table


def _build(args: argparse.Namespace) -> int:
    from curation.config import load_config, with_updates
    from pipelines import t2i

    config = load_config(args.config, args.set)
    updates = {}
    if args.input:
        updates["input"] = args.input
    if args.output:
        updates["output"] = args.output
    if updates:
        config = with_updates(config, **updates)
    manifest = t2i.run(config, overwrite=args.overwrite)
    print(format_stage_table(manifest.get("stages", {})))
    if manifest.get("unaccounted"):
        print(f"warning: {manifest['unaccounted']} input(s) not accounted for (read vs written + rejected + failed)")
    print(json.dumps({"output": config.output, "counts": manifest["counts"]}, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from curation.pixart.export import export_command

    return export_command(args)


def _embed_prompts(args: argparse.Namespace) -> int:
    from curation.pixart.embed import embed_prompts_command

    return embed_prompts_command(args)


def _sample(args: argparse.Namespace) -> int:
    from curation.pixart.sample import sample_command

    return sample_command(args)


def _verify(args: argparse.Namespace) -> int:
    from curation.verify import verify_dataset

    problems = verify_dataset(args.dataset, fraction=args.fraction)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in {args.dataset}")
    return 1 if problems else 0


def _report(args: argparse.Namespace) -> int:
    from curation.report import write_report

    print(write_report(args.dataset))
    return 0


def _tiny_models(args: argparse.Namespace) -> int:
    from curation.models.tiny import write_tiny_models

    for name, path in write_tiny_models(args.dir).items():
        print(f"{name}: {path}")
    return 0


def _add_build(commands) -> None:
    build = commands.add_parser("build", help="run the curation pipeline on Ray")
    build.add_argument("config", help="YAML recipe, e.g. configs/demo.yaml")
    build.add_argument("--input", action="append", default=[], help="input URI (repeatable); replaces the recipe's")
    build.add_argument("--output", help="output dataset directory or fsspec URL")
    build.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. caption.max_new_tokens=200"
    )
    build.add_argument("--overwrite", action="store_true", help="replace an output built with a different config")
    build.set_defaults(handler=_build)


def _add_pixart(commands) -> None:
    export = commands.add_parser("export", help="export a dataset to another trainer's layout")
    targets = export.add_subparsers(dest="target", required=True)
    pixart = targets.add_parser(
        "pixart", help="PixArt-alpha/sigma InternData layout, ready for PixArt's train scripts"
    )
    from curation.pixart.cli_args import add_embed_prompts_args, add_export_pixart_args, add_sample_args

    add_export_pixart_args(pixart)
    pixart.set_defaults(handler=_export)

    add_embed_prompts_args(commands.add_parser("embed-prompts", help="null + validation-prompt T5 embeddings"))
    commands.choices["embed-prompts"].set_defaults(handler=_embed_prompts)
    add_sample_args(commands.add_parser("sample", help="images from precomputed embeddings with diffusers"))
    commands.choices["sample"].set_defaults(handler=_sample)


def _add_tools(commands) -> None:
    verify = commands.add_parser("verify", help="check a dataset's integrity (non-zero exit on failure)")
    verify.add_argument("dataset")
    verify.add_argument("--fraction", type=float, default=1.0, help="share of shards to open")
    verify.set_defaults(handler=_verify)
    report = commands.add_parser("report", help="write DATASET/report/index.html")
    report.add_argument("dataset")
    report.set_defaults(handler=_report)
    tiny = commands.add_parser("tiny-models", help="write tiny random-weight models of the real architectures")
    tiny.add_argument("dir")
    tiny.set_defaults(handler=_tiny_models)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="curate", description=__doc__)
    root.add_argument("-v", "--verbose", action="store_true")
    commands = root.add_subparsers(dest="command", required=True)
    _add_build(commands)
    _add_pixart(commands)
    _add_tools(commands)
    return root


def _user_errors() -> tuple[type[BaseException], ...]:
    from curation.io.writer import OutputConflictError

    return (ConfigError, OutputConflictError, FileNotFoundError, FileExistsError, ValueError)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _user_errors() as error:
        print(f"curate {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
