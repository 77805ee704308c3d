"""The ``chromabeam`` command. Each subcommand takes its own options first; any flag it
does not know (``--runner``, ``--direct_num_workers``, ``--temp_location``, …) goes to
Beam's PipelineOptions."""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys

from chromabeam.transforms import storage
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS

log = logging.getLogger("chromabeam")

EXAMPLES = {
    "evaluate": "chromabeam evaluate 'gs://bucket/restored/*.tar' gs://bucket/clean/ gs://bucket/eval-2026-11-23",
    "synth-pairs": "chromabeam synth-pairs 'gs://bucket/in/*.tar' gs://bucket/pairs --pairs-per-image 2 --seed 7",
    "restore": "chromabeam restore 's3://catalog/filtered/*.jpg' s3://catalog/restored --device cuda",
    "stylize": "chromabeam stylize photos/ out/ --style warm.json,ref.jpg",
    "train": "chromabeam train restorer gs://bucket/pairs weights/ --steps 20000 --device cuda",
    "run": "chromabeam run examples/restore.yaml",
    "demo": "chromabeam demo demo-output",
    "preset": "chromabeam preset create ref.jpg looks/warm.json",
    "report": "chromabeam report gs://bucket/eval-2026-11-23",
    "inspect": "chromabeam inspect gs://bucket/eval-2026-11-23 --where \"psnr < 25\" --limit 20",
}



class CliError(Exception):
    """A usage or input problem: printed in one line, exit status 2."""


def _common(p: argparse.ArgumentParser, *, images: bool = True) -> None:
    g = p.add_argument_group("job options")
    if images:
        g.add_argument("--format", dest="layout", choices=["webdataset", "files"], default="webdataset",
                       help="how output images are stored (default: WebDataset .tar shards)")
        g.add_argument("--image-format", choices=["jpg", "png", "webp"], default="jpg")
        g.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    g.add_argument("--shard-size", type=int, default=256, help="records per output part (default 256)")
    g.add_argument("--max-error-rate", type=float, default=0.5,
                   help="exit non-zero (after writing the manifest) when more than this fraction of rows failed")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse images larger than this")
    g.add_argument("--overwrite", action="store_true", help="redo a job whose OUTPUT/_SUCCESS exists")
    g.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                   help='per-protocol fsspec options, e.g. \'{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}\'')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chromabeam",
        description="Beam pipelines for filter removal, colour stylization, training pairs and quality metrics.",
        epilog="Unknown --flags are passed to Apache Beam (e.g. --runner, --direct_num_workers).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_, description=help_, formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="example:\n  " + EXAMPLES[name] + "\n\nUnknown --flags are passed to Apache Beam.",
        )

    p = add("evaluate", "Join predictions and references by key; write PSNR/SSIM/ΔE2000/LPIPS per image.")
    p.add_argument("pred", metavar="PRED", help="predicted images: URL, folder or glob")
    p.add_argument("target", metavar="TARGET", help="reference images: URL, folder or glob")
    p.add_argument("output", metavar="OUTPUT")
    _common(p, images=False)

    p = add("synth-pairs", "Synthesize (filtered, original) training pairs from image shards.")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    g = p.add_argument_group("pair options")
    g.add_argument("--mode", choices=["removal", "preset"], default="removal",
                   help="removal: input = transformed, target = original; preset: two transformed views")
    g.add_argument("--pairs-per-image", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--luts", metavar="URL", help=".cube file, folder or glob (any fsspec URL)")
    g.add_argument("--filters", metavar="NAMES",
                   help="all | iffi | none | comma-separated pilgram names (default: all, or none with --luts)")
    g.add_argument("--lut-strength", default="1", metavar="MIN[,MAX]", help="blend with identity, drawn per pair")
    g.add_argument("--perturb", choices=["none", "light", "full"], default=None,
                   help="Harmonizer-style perturbations after the main transform (default: light, none with --luts)")
    g.add_argument("--grade-prob", type=float, default=None,
                   help="chance of a procedural grade (default 0.25, 0 with --luts)")
    g.add_argument("--identity-prob", type=float, default=None,
                   help="chance of an unchanged input in removal mode (default 0.05, 0 with --luts)")
    _common(p)

    from chromabeam.models import train_dncm, train_restorer
    from chromabeam.pipelines import preset, restore, stylize

    p = add("restore", "Remove Instagram-style filters and colour grades (blind, at full resolution).")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    restore.add_arguments(p)
    _common(p)

    p = add("stylize", "Transfer colour style with DNCM (Neural Preset).")
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT")
    stylize.add_arguments(p)
    _common(p)

    p = add("train", "Train the dncm or restorer model on synthesized pairs.")
    models = p.add_subparsers(dest="model", metavar="MODEL", required=True)
    for name, trainer, help_ in (("dncm", train_dncm, "DNCM colour style transfer (self-supervised, preset pairs)"),
                                 ("restorer", train_restorer, "blind filter removal (removal pairs)")):
        m = models.add_parser(name, help=help_, description=help_)
        m.add_argument("pairs", metavar="PAIRS", help="a synth-pairs OUTPUT (URL)")
        m.add_argument("weights_out", metavar="WEIGHTS_OUT", help="folder (URL) for the safetensors weights and card")
        trainer.add_train_arguments(m)

    preset.add_preset_arguments(sub)

    from chromabeam.pipelines import run_yaml

    run_yaml.add_run_arguments(add("run", "Run a Beam YAML pipeline with chromabeam's transforms."))

    p = add("demo", "Run the main job on bundled photos, offline.")
    p.add_argument("output", metavar="OUTPUT", nargs="?", default="demo-output")

    from chromabeam.pipelines import inspect as inspect_cmd
    from chromabeam.pipelines import report

    report.add_report_arguments(add("report", "Rebuild OUTPUT/report.html from the manifest and _SUCCESS."))
    inspect_cmd.add_inspect_arguments(add("inspect", "Summarize a manifest; --where prints matching rows (DuckDB SQL)."))
    return parser


NO_BEAM = {"report", "inspect", "train", "preset"}  # commands that run no pipeline: any leftover flag is a mistake


def unknown_flags(beam_args: list[str]) -> list[str]:
    """Flags neither chromabeam nor any Beam PipelineOptions class knows (typos would
    otherwise be dropped by Beam and the job would run with defaults)."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser
    except ImportError:  # a Beam without that parser: let Beam judge
        return []
    parser = _BeamArgumentParser(allow_abbrev=False)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    seen = set()
    for cls in subclasses(PipelineOptions):
        if cls.__name__ in seen:
            continue
        seen.add(cls.__name__)
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:  # an option two classes both define
            pass
    return [a for a in parser.parse_known_args(beam_args)[1] if a.startswith("-")]


def _job_config(args, task: str, params: dict):
    from chromabeam.pipelines.job import JobConfig

    return JobConfig(
        output=args.output.rstrip("/"), task=task, layout=getattr(args, "layout", "webdataset"),
        shard_size=args.shard_size, max_error_rate=args.max_error_rate, overwrite=args.overwrite, params=params,
    )


def cmd_evaluate(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import evaluate
    from chromabeam.pipelines.job import exit_status

    params = {"pred": storage.redact(args.pred), "target": storage.redact(args.target)}
    config = _job_config(args, evaluate.TASK, params)
    summary = evaluate.run(args.pred, args.target, config, beam_args, max_pixels=args.max_pixels)
    _print_summary(summary, config.output)
    return exit_status(summary, args.max_error_rate)


def cmd_synth_pairs(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import synth_pairs
    from chromabeam.pipelines.job import exit_status
    from chromabeam.transforms.ops import synth

    # An explicit LUT pack means "pairs from my LUTs": the other families stay off unless asked for.
    own = bool(args.luts)
    luts = synth_pairs.load_luts(args.luts)
    config = synth.SynthConfig(
        filters=synth.parse_filters(args.filters if args.filters is not None else ("none" if own else "all")),
        luts=tuple(luts),
        lut_strength=synth.parse_strength(args.lut_strength),
        perturb=args.perturb or ("none" if own else "light"),
        mode=args.mode,
        identity_prob=args.identity_prob if args.identity_prob is not None else (0.0 if own else None),
        grade_prob=args.grade_prob if args.grade_prob is not None else (0.0 if own else 0.25),
    )
    options = synth_pairs.PairsOptions(
        synth=config, pairs_per_image=args.pairs_per_image, seed=args.seed,
        image_format=args.image_format, quality=args.quality, max_pixels=args.max_pixels,
    )
    params = {
        "input": storage.redact(args.input), "mode": args.mode, "pairs_per_image": args.pairs_per_image,
        "seed": args.seed, "luts": sorted(luts), "filters": list(config.filters), "lut_strength": list(config.lut_strength),
        "perturb": config.perturb, "grade_prob": config.grade_prob, "identity_prob": config.identity_prob,
        "image_format": args.image_format, "quality": args.quality,
    }
    job = _job_config(args, synth_pairs.TASK, params)
    summary = synth_pairs.run(args.input, job, options, luts, beam_args)
    _print_summary(summary, job.output)
    return exit_status(summary, args.max_error_rate)


def cmd_demo(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import demo

    return demo.run(args.output.rstrip("/"), beam_args)


def _print_summary(summary: dict, output: str) -> None:
    c = summary["counts"]
    state = "already complete, nothing to do" if summary.get("skipped") else f"{summary['duration_s']:.1f} s"
    print(f"{summary['task']}: {c['rows']} rows ({c['ok']} ok, {c['error']} error) → {storage.redact(output)} [{state}]")
    for reason, n in list(summary.get("errors_by_reason", {}).items())[:5]:
        print(f"  {n} × {reason}")


# The shipped weights were trained briefly on CPU; say so wherever they are used by default.
EARLY_WEIGHTS = ("chromabeam {cmd}: note: the shipped {model} weights were trained on one CPU core for about an "
                 "hour; on held-out photos they beat doing nothing but do not reach all of the project's quality targets "
                 "(see docs/{doc}); pass --weights to use your own")


def cmd_restore(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import restore

    if getattr(args, "weights", None) is None:
        print(EARLY_WEIGHTS.format(cmd="restore", model="restorer", doc="restorer.md"), file=sys.stderr)
    return restore.command(args, beam_args)


def cmd_stylize(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import stylize

    if getattr(args, "weights", None) is None:
        look = getattr(args, "method", "look") == "look"
        print(EARLY_WEIGHTS.format(cmd="stylize", model="restorer" if look else "DNCM", doc="stylize.md"), file=sys.stderr)
    return stylize.command(args, beam_args)


def cmd_train(args, beam_args: list[str]) -> int:
    from chromabeam.models import train_dncm, train_restorer

    return {"dncm": train_dncm, "restorer": train_restorer}[args.model].train_command(args)


def cmd_preset(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import preset

    return preset.preset_command(args)


def cmd_run(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import run_yaml

    return run_yaml.run_command(args, beam_args)


def cmd_report(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import report

    return report.report_command(args)


def cmd_inspect(args, beam_args: list[str]) -> int:
    from chromabeam.pipelines import inspect as inspect_cmd

    return inspect_cmd.inspect_command(args)


COMMANDS = {
    "evaluate": cmd_evaluate,
    "synth-pairs": cmd_synth_pairs,
    "demo": cmd_demo,
    "report": cmd_report,
    "inspect": cmd_inspect,
    "run": cmd_run,
    "restore": cmd_restore,
    "stylize": cmd_stylize,
    "train": cmd_train,
    "preset": cmd_preset,
}


def configure_logging(verbose: bool) -> None:
    """INFO (DEBUG with ``--verbose``) for chromabeam; the storage and Beam libraries quieter."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Importing Beam may already have set up the root logger (a root-level warning does),
    # which makes basicConfig a no-op and would hide INFO progress lines: set the level anyway.
    logging.getLogger().setLevel(level)
    for noisy in ("apache_beam", "gcsfs", "s3fs", "aiobotocore", "botocore", "urllib3", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    configure_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 2
    from chromabeam.pipelines.job import JobError

    unknown = unknown_flags(beam_args) if args.command not in NO_BEAM else [a for a in beam_args if a.startswith("-")]
    if unknown:
        flag = unknown[0].split("=", 1)[0]
        known = [o for a in parser._subparsers._group_actions[0].choices[args.command]._actions for o in a.option_strings]
        hint = difflib.get_close_matches(flag, known, n=1)
        print(f"chromabeam {args.command}: unknown option {flag}" + (f" (did you mean {hint[0]}?)" if hint else "")
              + f"; see chromabeam {args.command} --help", file=sys.stderr)
        return 2

    try:
        if getattr(args, "storage_options", None):
            storage.set_storage_options(args.storage_options)
        return COMMANDS[args.command](args, beam_args)
    except (CliError, JobError, storage.StorageError, ValueError) as exc:
        print(f"chromabeam {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chromabeam: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
