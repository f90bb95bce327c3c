"""curate: build PixArt training datasets on Ray, export them for PixArt, sample, verify, report, inspect."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable

from curation.config import ConfigError


def _build(args: argparse.Namespace) -> int:
    from curation.config import load_config, with_updates
    from curation.model_check import check_models
    from curation.terminal import quiet_ray

    config = load_config(args.config, args.set)
    updates = {}
    if args.input:
        updates["input"] = args.input
    if args.output:
        updates["output"] = args.output
    if updates:
        config = with_updates(config, **updates)
    check_local_inputs(config.input)
    if config.tiny_models_dir:
        from curation.models.tiny import ensure_tiny_models

        ensure_tiny_models(config.tiny_models_dir)
    check_models(config, embedded=not (config.ray.address or os.environ.get("RAY_ADDRESS")))
    quiet_ray(args.verbose or args.debug)
    from pipelines import t2i

    try:
        manifest = t2i.run(config, overwrite=args.overwrite)
    except t2i.TooManyFailuresError:
        _print_build_outcome(args, config.output, _read_manifest(config.output), report=None)
        raise
    report = None if args.no_report else _write_report_quietly(config.output)
    _print_build_outcome(args, config.output, manifest, report)
    return 0


def check_local_inputs(inputs: list[str]) -> None:
    """A local input that does not exist is refused before Ray starts (remote ones are listed by the run)."""
    for uri in inputs:
        if "://" not in uri and not any(char in uri for char in "*?[") and not os.path.exists(uri):
            raise FileNotFoundError(f"input {uri!r} does not exist")


def _read_manifest(output: str) -> dict:
    from curation.io.layout import MANIFEST, filesystem, read_json

    fs, root = filesystem(output)
    return read_json(fs, f"{root}/{MANIFEST}") or {}


def _write_report_quietly(output: str) -> str | None:
    """The report of a finished build; a report that fails never fails the build (``curate report`` retries)."""
    from curation.report import write_report

    try:
        return str(write_report(output))
    except Exception as error:  # the dataset is complete: say why there is no report, and carry on
        reason = f"{type(error).__name__}: {error}"
        print(f"curate build: no report ({reason}); retry with: curate report {output}", file=sys.stderr)
        return None


def _print_build_outcome(args: argparse.Namespace, output: str, manifest: dict, report: str | None) -> None:
    if args.json:
        summary = {key: manifest.get(key) for key in ("counts", "funnel", "reject_reasons", "failure_reasons")}
        print(json.dumps({"output": output, **summary, "report": report}, indent=2))
        return
    from curation.terminal import build_summary

    print(build_summary(manifest, output, report))


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
    from curation.inspect import check_dataset
    from curation.verify import verify_dataset

    check_dataset(args.dataset)  # a missing path or a non-dataset: one line, exit 2
    problems = verify_dataset(args.dataset, fraction=args.fraction, seed=args.seed, recompute=args.recompute)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in {args.dataset}")
    return 1 if problems else 0


def _report(args: argparse.Namespace) -> int:
    from curation.inspect import check_dataset
    from curation.report import write_report

    check_dataset(args.dataset)
    print(write_report(args.dataset))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from curation import inspect

    if args.key:
        details = inspect.sample_details(args.dataset, args.key)
        print(json.dumps(details, indent=2, ensure_ascii=False) if args.json else inspect.format_sample(details))
    else:
        summary = inspect.dataset_summary(args.dataset)
        print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else inspect.format_summary(summary))
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
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. caption.jobs.dense.max_new_tokens=200",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an output built with a different config")
    build.add_argument("--json", action="store_true", help="end with a JSON summary instead of the readable one")
    build.add_argument("--no-report", action="store_true", help="do not write DIR/report/index.html at the end")
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


def verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``curate verify`` (also ``python -m curation.verify``)."""
    parser.add_argument("dataset")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of shards whose tars are read")
    parser.add_argument(
        "--recompute",
        type=float,
        default=0.0,
        metavar="F",
        help="re-encode the T5 features and VAE latents of a random fraction F of samples with the manifest's "
        "models (CPU, float32) and compare within a tolerance: catches features of another sample",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shard and sample choices")


def _add_tools(commands) -> None:
    verify = commands.add_parser("verify", help="check a dataset's integrity (non-zero exit on failure)")
    verify_arguments(verify)
    verify.set_defaults(handler=_verify)
    report = commands.add_parser("report", help="write DATASET/report/index.html")
    report.add_argument("dataset")
    report.set_defaults(handler=_report)
    inspect = commands.add_parser("inspect", help="a dataset's summary, or one sample's metadata, captions, features")
    inspect.add_argument("dataset")
    inspect.add_argument("key", nargs="?", help="a sample key (see the index); without it: the dataset summary")
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(handler=_inspect)
    tiny = commands.add_parser("tiny-models", help="write tiny random-weight models of the real architectures")
    tiny.add_argument("dir")
    tiny.set_defaults(handler=_tiny_models)


def _add_output_flags(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="show Ray's INFO logs and the workers' output"
    )
    parser.add_argument("--debug", action="store_true", default=default, help="tracebacks instead of one-line errors")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (nested) subcommand parser of ``parser``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *_subparsers(child)]
    return found


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="curate", description=__doc__)
    _add_output_flags(root, False)
    commands = root.add_subparsers(dest="command", required=True)
    _add_build(commands)
    _add_pixart(commands)
    _add_tools(commands)
    for child in _subparsers(root):  # `curate build ... --debug` as well as `curate --debug build ...`
        _add_output_flags(child, argparse.SUPPRESS)
    return root


def _user_errors() -> tuple[type[BaseException], ...]:
    from curation.io.writer import OutputConflictError

    return (ConfigError, OutputConflictError, FileNotFoundError, FileExistsError, ValueError)


MAX_ERROR_CHARS = 400
_TYPED_MESSAGE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b[^:]*: ")


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain that says something (Ray's task errors keep theirs in ``cause``; Ray
    Data chains an empty ``SystemException`` marker under the error it re-raises)."""
    chain, seen = [error], {id(error)}
    while True:
        inner = getattr(chain[-1], "cause", None) or chain[-1].__cause__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        seen.add(id(inner))
        chain.append(inner)
    telling = [link for link in chain if str(link).strip()]
    return telling[-1] if telling else error


def one_line(error: BaseException) -> str:
    """``Type: message`` of an unexpected error, its last line only (Ray appends the remote traceback before it)."""
    cause = root_cause(error)
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    name = type(cause).__name__
    message = message if _TYPED_MESSAGE.match(message) else f"{name}: {message}"  # Ray ends with the cause's
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _user_errors() as error:
        if args.debug:
            raise
        print(f"curate {args.command}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.debug:
            raise
        print(f"curate {args.command}: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
