"""``chromabeam run PIPELINE.yaml [beam options]``: a Beam YAML pipeline with chromabeam's steps.

What it adds to ``python -m apache_beam.yaml.main --yaml_pipeline_file=…``:
  - the provider listing is always there (no ``providers: - include:`` needed);
  - every chromabeam step's config is checked before anything is built, and any problem
    (YAML, Jinja, config, construction) is one line naming the step and field;
  - plain/Direct runs use the in-process FnApiRunner (no Prism download), like every
    other command;
  - after the run, one summary line per chromabeam job (from its OUTPUT/_SUCCESS) and the
    same exit status rule as the other commands (``max_error_rate`` per job step).
Jinja works as in Beam: ``--jinja_variables '{"date": "2026-11-23"}'`` (``datetime`` is
predefined), and ``options:`` in the file become pipeline options.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Any, Iterator

log = logging.getLogger("chromabeam")


class RunError(Exception):
    """A problem with the pipeline file or its steps: printed in one line, exit status 2."""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``run``'s arguments; unknown ``--flags`` stay Beam pipeline options."""
    parser.add_argument("pipeline", metavar="PIPELINE.yaml", help="Beam YAML file (path or fsspec URL)")
    parser.add_argument("--jinja_variables", "--jinja-variables", type=_json_object, default=None, metavar="JSON",
                        help="JSON object of Jinja variables for the pipeline file")
    parser.add_argument("--json_schema_validation", "--json-schema-validation", default="generic",
                        choices=["none", "generic"],
                        help="Beam's validation of the pipeline's shape (default: generic)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the file, its shape and every chromabeam step's config; build and run nothing")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"date\": \"2026-11-23\"}'")
    return value


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (Beam nests causes across lines)."""
    message = getattr(exc, "message", None)  # jsonschema's str() appends the whole schema
    text = (message if isinstance(message, str) else str(exc)).strip() or type(exc).__name__
    return re.sub(r"\s*\n\s*", " | ", text)


def _read_file(path: str) -> str:
    from chromabeam.transforms import storage

    try:
        return storage.read_bytes(path).decode("utf-8")
    except storage.StorageError as exc:  # its message names the URL
        raise RunError(one_line(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"cannot read {path}: {one_line(exc)}") from None


def _leading_comment_lines(template: str) -> int:
    """Lines Beam's Jinja step drops from the top (comments and blank lines), so that
    line numbers can be reported as they are in the file."""
    n = 0
    for line in template.splitlines():
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            break
        n += 1
    return n


def file_lines(message: str, offset: int) -> str:
    """Shift Beam's "line N" (counted after its Jinja step) to the file's line numbers."""
    if not offset:
        return message
    return re.sub(r"\bline (\d+)", lambda m: f"line {int(m.group(1)) + offset}", message)


def load_spec(path: str, jinja_variables: dict | None = None) -> tuple[str, dict, int]:
    """Read, Jinja-expand and parse a pipeline file → (expanded text, spec with line info).

    Also returns the number of leading comment lines Beam's Jinja step strips."""
    import jinja2
    import yaml
    from apache_beam.yaml.yaml_transform import SafeLineLoader, expand_jinja

    template = _read_file(path)
    offset = _leading_comment_lines(template)
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    try:
        text = expand_jinja(template, jinja_variables or {}, [folder])
    except jinja2.UndefinedError as exc:
        raise RunError(f"{path}: Jinja: {one_line(exc)}; pass it with --jinja_variables '{{\"name\": value}}'") from None
    except jinja2.TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise RunError(f"{path}{f':{line + offset}' if line else ''}: Jinja: {one_line(exc)}") from None
    try:
        spec = yaml.load(text, Loader=SafeLineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1 + offset}" if mark is not None else path
        raise RunError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or one_line(exc)}") from None
    if not isinstance(spec, dict) or "pipeline" not in spec:
        raise RunError(f"{path}: a Beam YAML file needs a top-level 'pipeline:' mapping")
    return text, spec, offset


def _steps(node: Any) -> Iterator[dict]:
    """Every transform spec under ``node`` (lists, chains, composites)."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for key in ("transforms", "pipeline", "source", "sink"):
            if key in node:
                yield from _steps(node[key])
    elif isinstance(node, list):
        for item in node:
            yield from _steps(item)


def check_steps(spec: dict, offset: int = 0) -> list[tuple[str, str, dict]]:
    """Validate each chromabeam step's config → [(step name, type, config)]; RunError on the first problem."""
    from apache_beam.yaml.yaml_transform import SafeLineLoader

    from chromabeam.pipelines.yaml_provider import STEPS, ConfigError, check_step

    found = []
    for step in _steps(spec["pipeline"]):
        type_name = step.get("type")
        if type_name not in STEPS:
            continue
        name = step.get("name", type_name)
        config = SafeLineLoader.strip_metadata(step.get("config", {}))
        try:
            line = SafeLineLoader.get_line(step)
            line = line + offset if isinstance(line, int) else line
            found.append((name, type_name, check_step(type_name, name, config, line)))
        except ConfigError as exc:
            raise RunError(str(exc)) from None
    return found


def check(path: str, *, jinja_variables: dict | None = None, validation: str = "generic") -> list[tuple[str, str, dict]]:
    """Everything that can be checked without building: Jinja, YAML, Beam's shape
    validation and each chromabeam step's config."""
    from apache_beam.yaml import yaml_transform

    _, spec, offset = load_spec(path, jinja_variables)
    if validation != "none":
        try:
            yaml_transform.validate_against_schema(spec, validation)
        except Exception as exc:
            raise RunError(f"{path}: {file_lines(one_line(exc), offset)}") from None
    return check_steps(spec, offset)


def make_pipeline(spec: dict, beam_args: list[str], display: dict):
    """Pipeline with Beam YAML's options handling; plain/Direct runs on the FnApiRunner."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.yaml.yaml_transform import SafeLineLoader

    options = PipelineOptions(beam_args, pickle_library="cloudpickle",
                              **SafeLineLoader.strip_metadata(spec.get("options", {})))
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options, display_data=display)
    return beam.Pipeline(options=options, display_data=display)


def build(path: str, beam_args: list[str], *, jinja_variables: dict | None = None,
          validation: str = "generic"):
    """Check and construct the pipeline → (pipeline, chromabeam job steps [(name, type, config)])."""
    from apache_beam.yaml import yaml_provider as beam_providers
    from apache_beam.yaml import yaml_transform

    from chromabeam.pipelines.yaml_provider import listing_path

    text, spec, offset = load_spec(path, jinja_variables)
    steps = check_steps(spec, offset)
    pipeline = make_pipeline(spec, beam_args, {"yaml": text})
    try:
        providers = beam_providers.load_providers(listing_path())
        yaml_transform.expand_pipeline(pipeline, spec, providers=providers, validate_schema=validation,
                                       pipeline_path=path)
    except Exception as exc:  # Beam reports config, input and construction errors as ValueError/TypeError/…
        log.debug("pipeline construction failed", exc_info=True)
        raise RunError(file_lines(one_line(exc), offset)) from None
    return pipeline, steps


def run_command(args: argparse.Namespace, beam_args: list[str]) -> int:
    """``chromabeam run``: 0 when it ran and every job is within its max_error_rate, 1 when a
    job failed too many rows, 2 for a bad file/config, 3 when the pipeline failed."""
    from chromabeam.pipelines.yaml_provider import JOB_STEPS

    try:
        if args.dry_run:
            # Nothing is constructed: job steps clear (overwrite) and prepare OUTPUT when built.
            steps = check(args.pipeline, jinja_variables=args.jinja_variables, validation=args.json_schema_validation)
            print(f"chromabeam run: {args.pipeline}: OK ({len(steps)} chromabeam step(s) checked; --dry-run)")
            return 0
        pipeline, steps = build(args.pipeline, beam_args, jinja_variables=args.jinja_variables,
                                validation=args.json_schema_validation)
    except RunError as exc:
        print(f"chromabeam run: {exc}", file=sys.stderr)
        return 2
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:
        log.debug("pipeline failed", exc_info=True)
        print(f"chromabeam run: pipeline failed: {_last_line(exc)}", file=sys.stderr)
        return 3
    state = str(getattr(result, "state", "DONE"))
    if "DONE" not in state:
        print(f"chromabeam run: pipeline ended in state {state}", file=sys.stderr)
        return 3
    status = 0
    for name, type_name, config in steps:
        if type_name in JOB_STEPS:
            status = max(status, _report(name, config))
    return status


def _last_line(exc: BaseException) -> str:
    """The innermost reason of a worker failure (its last non-empty line)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _report(name: str, config: dict) -> int:
    from chromabeam.pipelines.job import exit_status
    from chromabeam.transforms import storage

    output = config["output"].rstrip("/")
    success = storage.join(output, "_SUCCESS")
    if not storage.exists(success):
        print(f"chromabeam run: step {name!r}: no _SUCCESS in {storage.redact(output)}", file=sys.stderr)
        return 3
    summary = json.loads(storage.read_bytes(success))
    c = summary["counts"]
    print(f"{name}: {summary['task']}: {c['rows']} rows ({c['ok']} ok, {c['error']} error) → {storage.redact(output)}")
    return exit_status(summary, config["max_error_rate"])
