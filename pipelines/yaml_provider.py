"""chromabeam's steps for Beam YAML: schema-aware PTransforms named by the provider listing.

The listing (``chromabeam/data/providers.yaml``, ``type: python``, dotted names, no
``packages:``) makes these usable from any Beam YAML file offline::

    providers:
      - include: ../chromabeam/data/providers.yaml     # relative to the pipeline file
    pipeline:
      transforms:
        - type: ChromabeamSynthPairs
          config: {input: photos/, output: out/pairs, pairs_per_image: 2}

Steps:
  ChromabeamReadImages    URL → image rows (key, source_uri, image bytes, error)
  ChromabeamDecode        image rows → (key, source_uri, width, height, status, error)
  ChromabeamFilterImages  image rows → image rows through IFFI/pilgram filters (same keys)
  ChromabeamEvaluate      whole job: pred + target (URLs or image-row inputs) → manifest rows
  ChromabeamSynthPairs    whole job: input (URL or image rows) → manifest rows
  ChromabeamStylize       whole job (pipelines/stylize.py) → manifest rows
  ChromabeamRestore       whole job (pipelines/restore.py): input [+ reference] → manifest rows

A whole-job step is ``run_job`` as a composable PTransform (``ManifestJob``): it writes
OUTPUT/images, OUTPUT/manifest parts, report.html and OUTPUT/_SUCCESS (last, after every
part), resumes from published parts, is a no-op re-emitting the manifest when _SUCCESS
exists (``overwrite: true`` redoes it), and emits the manifest rows as ``beam.Row`` so
later YAML steps (Filter, MapToFields, WriteToParquet, …) can use them.

Config is checked field by field when a step is constructed, before the pipeline runs:
``unknown field "weigths" (did you mean "weights"?); expected one of …``. A pipeline
module with ``TASK``, ``add_arguments``, ``options_from_args`` and a task PTransform
(stylize) becomes a step with one ``cli_job(...)`` line plus a listing line; its fields
are derived from its CLI arguments. ChromabeamRestore is spelled out because
``restore.build`` reads URLs itself, and the step also takes upstream image rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.resources
import inspect
import json
import logging
import time
from typing import Any, Callable, ClassVar, Optional

import apache_beam as beam
from apache_beam.typehints.row_type import RowTypeConstraint

from chromabeam.schemas.manifest import manifest_schema
from chromabeam.schemas.records import ImageRecord, ReadError
from chromabeam.transforms import storage
from chromabeam.transforms.ops.imageio import DEFAULT_MAX_PIXELS

log = logging.getLogger("chromabeam")

_REQUIRED = object()


def listing_path() -> str:
    """The provider listing shipped in the package (``type: python`` entries)."""
    return str(importlib.resources.files("chromabeam") / "data" / "providers.yaml")


class ConfigError(ValueError):
    """A step's configuration is wrong; the message names the field (one line)."""


# --------------------------------------------------------------------------- config fields

_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: ``types[0]`` is what the step receives; other listed types are
    converted to it (e.g. ``lut_strength: 1`` → ``"1"``)."""

    name: str
    types: tuple[type, ...] = (str,)
    default: Any = _REQUIRED
    choices: tuple = ()
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, value: Any) -> Any:
        if value is None:
            if self.default is None:
                return None
            raise ConfigError(f'field "{self.name}" must be {self._want()}, got null')
        for t in self.types:
            ok = isinstance(value, bool) if t is bool else isinstance(value, t) and not isinstance(value, bool)
            if t is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if ok:
                value = self.types[0](value)
                break
        else:
            raise ConfigError(f'field "{self.name}" must be {self._want()}, got {type(value).__name__} {value!r}')
        if self.choices and value not in self.choices:
            raise ConfigError(f'field "{self.name}" must be one of {", ".join(map(str, self.choices))}; got {value!r}')
        return value

    def _want(self) -> str:
        return " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in self.types)

    def annotation(self):
        t = self.types[0]
        return Optional[t] if self.default is None else t


def check_config(fields: tuple[Field, ...], config: dict[str, Any]) -> dict[str, Any]:
    """Validated config with defaults filled in; raises ConfigError naming the field."""
    by_name = {f.name: f for f in fields}
    for name in config:
        if name not in by_name:
            close = difflib.get_close_matches(str(name), list(by_name), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise ConfigError(f'unknown field "{name}"{hint}; expected one of {", ".join(by_name)}')
    out = {}
    for f in fields:
        if f.name in config:
            out[f.name] = f.check(config[f.name])
        elif f.required:
            raise ConfigError(f'missing required field "{f.name}" ({f.help or _TYPE_WORDS.get(f.types[0], "")})')
        else:
            out[f.name] = f.default
    return out


class YamlStep(beam.PTransform):
    """Base of chromabeam's YAML steps: keyword config checked against ``fields()``.

    Subclasses declaring ``FIELDS`` get an ``__init__`` whose signature lists the fields
    (Beam derives the step's config schema and docs from it)."""

    FIELDS: ClassVar[tuple[Field, ...]] = ()

    def __init__(self, **config: Any):
        super().__init__()
        self.config = check_config(self.fields(), config)

    @classmethod
    def fields(cls) -> tuple[Field, ...]:
        return cls.FIELDS

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "FIELDS" in cls.__dict__:
            _declare_signature(cls, cls.FIELDS)


def _declare_signature(cls, fields: tuple[Field, ...]) -> None:
    init = cls.__dict__.get("__init__")
    if init is None:
        def init(self, **config):
            YamlStep.__init__(self, **config)

        cls.__init__ = init
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.annotation(),
                          default=inspect.Parameter.empty if f.required else f.default)
        for f in fields
    ]
    init.__signature__ = inspect.Signature(params)
    if cls.__doc__ and "Args:" not in cls.__doc__:
        cls.__doc__ += "\n\nArgs:\n" + "\n".join(f"  {f.name}: {f.help or f.name}" for f in fields)


# --------------------------------------------------------------------------- rows

IMAGE_ROW = RowTypeConstraint.from_fields([
    ("key", str), ("source_uri", Optional[str]), ("image", Optional[bytes]), ("error", Optional[str]),
])
FILTERED_ROW = RowTypeConstraint.from_fields(list(IMAGE_ROW._fields) + [("filter", Optional[str])])
DECODED_ROW = RowTypeConstraint.from_fields([
    ("key", str), ("source_uri", Optional[str]), ("width", Optional[int]), ("height", Optional[int]),
    ("status", str), ("error", Optional[str]),
])


def manifest_row_type(task: str) -> RowTypeConstraint:
    """The Beam row type of ``task``'s manifest, from THE Arrow schema (schemas/manifest.py)."""
    import pyarrow as pa

    py = {pa.string(): str, pa.int32(): int, pa.int64(): int, pa.float64(): float}
    return RowTypeConstraint.from_fields([
        (f.name, Optional[py[f.type]] if f.nullable else py[f.type]) for f in manifest_schema(task)
    ])


def record_to_row(record: ImageRecord | ReadError) -> beam.Row:
    if isinstance(record, ReadError):
        return beam.Row(key=record.key, source_uri=record.source_uri, image=None, error=record.reason)
    return beam.Row(key=record.key, source_uri=record.source_uri, image=record.data, error=None)


def row_to_record(row) -> ImageRecord | ReadError:
    """An upstream row with ``key`` and ``image`` (bytes) columns → a record; ``error`` and
    ``source_uri`` are optional. Unusable rows become ReadErrors (→ error rows), never dropped."""
    from chromabeam.transforms.read import key_problem

    key = getattr(row, "key", None)
    source = getattr(row, "source_uri", None) or f"row:{key}"
    key = None if key is None else str(key)
    problem = key_problem(key)
    if problem:
        return ReadError(key or "(no key)", source, problem)
    error = getattr(row, "error", None)
    if error:
        return ReadError(key, source, str(error))
    image = getattr(row, "image", None)
    if image is None:
        return ReadError(key, source, "image column is null")
    if not isinstance(image, (bytes, bytearray)):
        return ReadError(key, source, f"image column holds {type(image).__name__}, not bytes")
    return ImageRecord(key, source, bytes(image))


def _check_row_input(pcoll: beam.PCollection, step: str, needs: tuple[str, ...] = ("key", "image")) -> None:
    """Fail before running when an upstream schema lacks the columns a step reads."""
    fields = getattr(pcoll.element_type, "_fields", None)
    if fields is None:
        return  # no schema known: rows are checked one by one
    names = [f[0] for f in fields]
    missing = [n for n in needs if n not in names]
    if missing:
        raise ConfigError(f"{step}: input rows lack column(s) {missing}; they have {names}")


def _units_from(pvalue, url: str | None, field: str, step: str, label: str) -> beam.PCollection:
    """(key, ImageRecord | ReadError) units from a URL (root step) or upstream image rows."""
    from chromabeam.transforms.read import ReadImages

    if isinstance(pvalue, beam.pvalue.PBegin):
        if not url:
            raise ConfigError(f'{step}: field "{field}" is required when the step has no input')
        records = pvalue | f"Read{label}" >> ReadImages(url)
    else:
        if url:
            raise ConfigError(f'{step}: give field "{field}" or an input, not both')
        _check_row_input(pvalue, step)
        records = pvalue | f"Records{label}" >> beam.Map(row_to_record)
    return records | f"ByKey{label}" >> beam.Map(lambda r: (r.key, r))


# --------------------------------------------------------------------------- whole jobs

def _success_url(output: str) -> str:
    return storage.join(output, "_SUCCESS")


def manifest_part_urls(output: str) -> list[str]:
    from chromabeam.transforms.write import finished_parts

    return [storage.join(output, "manifest", f"{name}.parquet") for name in sorted(finished_parts(output))]


class ReadManifestPartFn(beam.DoFn):
    """Manifest part URL → its rows as ``beam.Row`` (the task's schema)."""

    def process(self, url: str):
        import pyarrow.parquet as pq

        with storage.open_url(url, "rb") as fh:
            table = pq.read_table(fh)
        for row in table.to_pylist():
            yield beam.Row(**row)


class FinishJobFn(beam.DoFn):
    """Runs once, after every part is written: summary, report.html, then _SUCCESS; yields
    the manifest part URLs so the rows can be re-emitted in parallel."""

    def __init__(self, *, output: str, task: str, started: float, params: dict, extra: dict):
        self._output, self._task, self._started = output, task, started
        self._params, self._extra = params, extra

    def process(self, written: list):
        from chromabeam.pipelines import job
        from chromabeam.pipelines.report import write_report

        job._check_parts(self._output)
        extra = {"parts_written": len(written), "runner": "beam-yaml", **self._extra}
        summary = job.summarize(self._output, self._task, started=self._started, params=self._params, extra=extra)
        write_report(self._output, summary)
        storage.put_atomic(_success_url(self._output), json.dumps(summary, indent=2, sort_keys=True).encode())
        yield from manifest_part_urls(self._output)


class ManifestJob(beam.PTransform):
    """``run_job``'s graph as a composable PTransform: (PBegin | inputs) → manifest rows.

    ``read(pvalue)`` gives (key, payload) units, ``task`` turns them into TaskResults.
    Driver-side work happens at expansion, before the pipeline runs, in run_job's order:
    _SUCCESS check (skip), --overwrite clearing, stale temporaries, finished parts.
    """

    def __init__(self, config, read: Callable[[Any], beam.PCollection], task: beam.PTransform, *,
                 extra_summary: dict | None = None):
        super().__init__()
        self._config, self._read, self._task = config, read, task
        self._extra = dict(extra_summary or {})

    def expand(self, pvalue):
        from chromabeam.pipelines import job
        from chromabeam.pipelines.progress import ProgressFn
        from chromabeam.transforms.write import WriteResults, finished_parts, num_parts, part_name, part_of

        cfg = self._config
        output = cfg.output
        rows = beam.ParDo(ReadManifestPartFn()).with_output_types(manifest_row_type(cfg.task))
        root = pvalue.pipeline if not isinstance(pvalue, dict) else next(iter(pvalue.values())).pipeline
        if storage.exists(_success_url(output)) and not cfg.overwrite:
            log.info("%s already complete (_SUCCESS exists); set overwrite: true to redo it", storage.redact(output))
            return root | "AlreadyComplete" >> beam.Create(manifest_part_urls(output)) | "ManifestRows" >> rows
        if cfg.overwrite:
            job._clear_output(output)
        storage.makedirs(output)
        for sub in ("manifest", "images"):
            storage.remove_temporaries(storage.join(output, sub))
        done = frozenset(finished_parts(output))
        if done:
            log.info("resuming: %d manifest part(s) already published in %s", len(done), storage.redact(output))

        units = self._read(pvalue)
        count = units | "CountRecords" >> beam.combiners.Count.Globally()
        n = beam.pvalue.AsSingleton(count | "NumParts" >> beam.Map(num_parts, cfg.shard_size))
        todo = units | "SkipFinished" >> beam.Filter(lambda unit, n: part_name(part_of(unit[0], n), n) not in done, n=n)
        results = todo | "Task" >> self._task
        results = results | "Progress" >> beam.ParDo(ProgressFn(cfg.task), total=beam.pvalue.AsSingleton(count))
        written = results | "Write" >> WriteResults(cfg.write, n)
        return (
            written
            | "AllParts" >> beam.combiners.ToList()
            | "Finish" >> beam.ParDo(FinishJobFn(output=output, task=cfg.task, started=time.time(),
                                                  params=cfg.params, extra=self._extra))
            | "SpreadParts" >> beam.Reshuffle()
            | "ManifestRows" >> rows
        )


def _output_field() -> Field:
    return Field("output", help="OUTPUT URL: images/, manifest/, report.html, _SUCCESS")


def _job_fields(*, images: bool = True) -> tuple[Field, ...]:
    """Options every job step shares (the CLI's job options)."""
    fields = [_output_field()]
    if images:
        fields += [
            Field("format", default="webdataset", choices=("webdataset", "files"), help="how output images are stored"),
            Field("image_format", default="jpg", choices=("jpg", "png", "webp")),
            Field("quality", (int,), default=95, help="JPEG/WebP quality"),
        ]
    fields += [
        Field("shard_size", (int,), default=256, help="records per output part"),
        Field("max_pixels", (int,), default=DEFAULT_MAX_PIXELS, help="refuse images larger than this"),
        Field("max_error_rate", (float,), default=0.5,
              help="chromabeam run exits non-zero when more than this fraction of rows failed"),
        Field("overwrite", (bool,), default=False, help="redo a job whose OUTPUT/_SUCCESS exists"),
    ]
    return tuple(fields)


def _job_config(step: YamlStep, task: str, params: dict):
    from chromabeam.pipelines.job import JobConfig, JobError

    c = step.config
    try:
        return JobConfig(output=c["output"].rstrip("/"), task=task, layout=c.get("format", "webdataset"),
                         shard_size=c["shard_size"], max_error_rate=c["max_error_rate"], overwrite=c["overwrite"],
                         params={**params, "via": "beam-yaml"})
    except (JobError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _redacted(config: dict, fields: tuple[str, ...]) -> dict:
    return {k: (storage.redact(v) if isinstance(v, str) and k in fields else v) for k, v in config.items()}


class ChromabeamEvaluate(YamlStep):
    """Join predictions and references by key; write and emit PSNR/SSIM/ΔE2000/LPIPS rows.

    Root step with ``pred``/``target`` URLs, or ``input: {pred: STEP, target: STEP}`` where
    both steps give image rows (key, image bytes[, source_uri, error])."""

    FIELDS = (
        Field("pred", default=None, help="predicted images: URL, folder or glob (or the pred input)"),
        Field("target", default=None, help="reference images: URL, folder or glob (or the target input)"),
        *_job_fields(images=False),
    )
    _yaml_requires_inputs = False

    def expand(self, pvalue):
        from chromabeam.pipelines import evaluate
        from chromabeam.transforms.ops import metrics

        c = self.config
        step = "ChromabeamEvaluate"
        if isinstance(pvalue, beam.PCollection):
            raise ConfigError(f"{step} takes two inputs, input: {{pred: STEP, target: STEP}}, or none (pred/target URLs)")
        sides = pvalue if isinstance(pvalue, dict) else {}
        if sides and set(sides) != {"pred", "target"}:
            raise ConfigError(f"{step}: inputs must be named pred and target, got {sorted(sides)}")
        root = beam.pvalue.PBegin(next(iter(sides.values())).pipeline) if sides else pvalue

        def read(_):
            pred = _units_from(sides.get("pred", root), c["pred"], "pred", step, "Pred")
            target = _units_from(sides.get("target", root), c["target"], "target", step, "Target")
            return {"pred": pred, "target": target} | "JoinByKey" >> beam.CoGroupByKey()

        params = _redacted({"pred": c["pred"] or "(upstream rows)", "target": c["target"] or "(upstream rows)"}, ("pred", "target"))
        config = _job_config(self, evaluate.TASK, params)
        _, reason = metrics.lpips_model("cpu")
        notes = {"notes": {"lpips": reason}} if reason else {}
        task = beam.ParDo(evaluate.EvaluateFn(max_pixels=c["max_pixels"]))
        return pvalue | ManifestJob(config, read, task, extra_summary=notes)


class ChromabeamSynthPairs(YamlStep):
    """Reproducible (input, target) training pairs; emits one manifest row per pair.

    Root step with ``input`` (URL, folder or glob) or one upstream step giving image rows."""

    FIELDS = (
        Field("input", default=None, help="images: URL, folder or glob (or one input of image rows)"),
        Field("mode", default="removal", choices=("removal", "preset"),
              help="removal: input = transformed, target = original; preset: two transformed views"),
        Field("pairs_per_image", (int,), default=1),
        Field("seed", (int,), default=0),
        Field("luts", default=None, help=".cube file, folder or glob (any fsspec URL)"),
        Field("filters", default=None, help="all | iffi | none | comma-separated pilgram names"),
        Field("lut_strength", (str, int, float), default="1", help="MIN[,MAX] blend with identity"),
        Field("perturb", default=None, choices=("none", "light", "full"), help="Harmonizer-style perturbations"),
        Field("grade_prob", (float,), default=None, help="chance of a procedural grade"),
        Field("identity_prob", (float,), default=None, help="chance of an unchanged input (removal mode)"),
        *_job_fields(),
    )
    _yaml_requires_inputs = False

    def __init__(self, **config):
        super().__init__(**config)
        from chromabeam.pipelines import synth_pairs
        from chromabeam.pipelines.job import JobError
        from chromabeam.transforms.ops import synth

        c = self.config
        # Same defaults as `chromabeam synth-pairs` (pipelines/cli.py): an explicit LUT pack
        # means "pairs from my LUTs", so the other families stay off unless asked for.
        try:
            own = bool(c["luts"])
            self._luts = synth_pairs.load_luts(c["luts"])
            sc = synth.SynthConfig(
                filters=synth.parse_filters(c["filters"] if c["filters"] is not None else ("none" if own else "all")),
                luts=tuple(self._luts),
                lut_strength=synth.parse_strength(c["lut_strength"]),
                perturb=c["perturb"] or ("none" if own else "light"),
                mode=c["mode"],
                identity_prob=c["identity_prob"] if c["identity_prob"] is not None else (0.0 if own else None),
                grade_prob=c["grade_prob"] if c["grade_prob"] is not None else (0.0 if own else 0.25),
            )
            self._options = synth_pairs.PairsOptions(
                synth=sc, pairs_per_image=c["pairs_per_image"], seed=c["seed"], image_format=c["image_format"],
                quality=c["quality"], max_pixels=c["max_pixels"])
        except (JobError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        self._params = {
            "input": storage.redact(c["input"] or "(upstream rows)"), "mode": c["mode"], "pairs_per_image": c["pairs_per_image"],
            "seed": c["seed"], "luts": sorted(self._luts), "filters": list(sc.filters),
            "lut_strength": list(sc.lut_strength), "perturb": sc.perturb, "grade_prob": sc.grade_prob,
            "identity_prob": sc.identity_prob, "image_format": c["image_format"], "quality": c["quality"],
        }

    def expand(self, pvalue):
        from chromabeam.pipelines import synth_pairs

        def read(pv):
            return _units_from(pv, self.config["input"], "input", "ChromabeamSynthPairs", "")

        config = _job_config(self, synth_pairs.TASK, self._params)
        task = beam.ParDo(synth_pairs.SynthPairsFn(self._options, self._luts))
        return pvalue | ManifestJob(config, read, task)


def cli_job(name: str, module: str, transform: str) -> type:
    """A whole-job YAML step for a pipeline module that has a CLI: ``TASK``,
    ``add_arguments(parser)``, ``options_from_args(args) -> options`` and a task PTransform
    class ``transform`` taking the options. Its fields are the job options plus the
    module's own arguments (``--batch-size`` → ``batch_size``), derived on first use."""

    class CliJob(YamlStep):
        __doc__ = f"Whole {module.rsplit('.', 1)[-1]} job ({module}); emits its manifest rows.\n\n" \
                  "Root step with ``input`` (URL, folder or glob) or one upstream step giving image rows."
        _yaml_requires_inputs = False
        _fields: ClassVar[tuple[Field, ...] | None] = None

        @classmethod
        def fields(cls) -> tuple[Field, ...]:
            if cls._fields is None:
                parser = argparse.ArgumentParser(add_help=False)
                importlib.import_module(module).add_arguments(parser)
                own = tuple(_field_from_action(a) for a in parser._actions)
                cls._fields = (Field("input", default=None, help="images: URL, folder or glob (or one input)"),
                               *own, *_job_fields())
            return cls._fields

        def __init__(self, **config):
            super().__init__(**config)
            from chromabeam.pipelines.job import JobError

            mod = importlib.import_module(module)
            c = self.config
            ns = argparse.Namespace(**{**c, "layout": c["format"], "input": c["input"] or "(upstream rows)"})
            try:
                self._options = mod.options_from_args(ns)
            except (JobError, ValueError, OSError) as exc:
                raise ConfigError(str(exc)) from None
            self._task_name = mod.TASK
            self._transform = getattr(mod, transform)
            self._params = _redacted({k: v for k, v in c.items() if k not in ("output", "overwrite")},
                                     tuple(k for k in c if k not in ("format", "image_format")))

        def expand(self, pvalue):
            def read(pv):
                return _units_from(pv, self.config["input"], "input", name, "")

            config = _job_config(self, self._task_name, self._params)
            return pvalue | ManifestJob(config, read, self._transform(self._options))

    CliJob.__name__ = CliJob.__qualname__ = name
    CliJob.__module__ = __name__
    return CliJob


def _field_from_action(action: argparse.Action) -> Field:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return Field(action.dest, (bool,), default=bool(action.default), help=action.help or "")
    t = action.type if action.type in (int, float, str) else str
    default = _REQUIRED if action.required else action.default
    if default is not _REQUIRED and default is not None and not isinstance(default, t):
        default = t(default)
    return Field(action.dest, (t,) if t is not float else (float,), default=default,
                 choices=tuple(action.choices or ()), help=action.help or "")


ChromabeamStylize = cli_job("ChromabeamStylize", "chromabeam.pipelines.stylize", "Stylize")


class ChromabeamRestore(YamlStep):
    """Remove Instagram-style filters and grades (pipelines/restore.py); emits manifest rows.

    ``input``: URL, or one upstream step of image rows, or ``input: {input: STEP,
    reference: STEP}``. With a reference (URL or input) the rows carry PSNR/SSIM/ΔE2000
    against the clean image of the same key."""

    FIELDS = (
        Field("input", default=None, help="filtered images: URL, folder or glob (or the input step)"),
        Field("reference", default=None, help="clean images with the same keys (URL), for metrics"),
        Field("weights", default=None, help="restorer safetensors URL (default: the shipped weights)"),
        Field("device", default="auto", help="auto | cpu | cuda[:N] (cuda where there is none is an error)"),
        Field("batch_size", (int,), default=1, help="images per model call"),
        *_job_fields(),
    )
    _yaml_requires_inputs = False

    def __init__(self, **config):
        super().__init__(**config)
        from chromabeam.pipelines import restore
        from chromabeam.pipelines.job import JobError
        from chromabeam.transforms.devices import resolve_device

        c = self.config
        if c["batch_size"] < 1:
            raise ConfigError('field "batch_size" must be at least 1')
        try:
            resolve_device(c["device"])  # CUDA asked for but absent: an error before anything runs
            self._url, self._sha, self._name = restore._weights_identity(c["weights"])
        except (JobError, ValueError, OSError) as exc:
            raise ConfigError(str(exc)) from None

    def expand(self, pvalue):
        from chromabeam.pipelines import restore
        from chromabeam.schemas.manifest import to_json
        from chromabeam.transforms.ops import metrics
        from chromabeam.transforms.restore_handler import RestoreModelHandler

        c, step = self.config, "ChromabeamRestore"
        sides = pvalue if isinstance(pvalue, dict) else {} if isinstance(pvalue, beam.pvalue.PBegin) else {"input": pvalue}
        if set(sides) - {"input", "reference"}:
            raise ConfigError(f"{step}: inputs must be named input and reference, got {sorted(sides)}")
        root = beam.pvalue.PBegin(next(iter(sides.values())).pipeline) if sides else pvalue
        with_reference = bool(c["reference"] or "reference" in sides)

        def read(_):
            units = _units_from(sides.get("input", root), c["input"], "input", step, "Input")
            if not with_reference:
                return units
            refs = _units_from(sides.get("reference", root), c["reference"], "reference", step, "Reference")
            return {"input": units, "reference": refs} | "JoinByKey" >> beam.CoGroupByKey()

        # The same task restore.build() assembles (its read needs URLs, so it is not reused).
        handler = RestoreModelHandler(weights_url=self._url, expected_sha256=self._sha, device=c["device"],
                                      max_batch_size=c["batch_size"])
        finish = restore.FinishFn(model_name=self._name, model_sha256=self._sha or "", image_format=c["image_format"],
                                  quality=c["quality"], params=to_json({"device": c["device"], "batch_size": c["batch_size"]}),
                                  with_reference=with_reference)
        task = restore.RestoreTask(handler, finish, max_pixels=c["max_pixels"], with_reference=with_reference)
        params = {"input": storage.redact(c["input"] or "(upstream rows)"),
                  "reference": storage.redact(c["reference"]) if c["reference"] else ("(upstream rows)" if with_reference else None),
                  "weights": storage.redact(self._url), "device": c["device"], "batch_size": c["batch_size"]}
        extra = {"model": {"name": self._name, "sha256": self._sha}}
        if with_reference:
            _, reason = metrics.lpips_model("cpu")
            if reason:
                extra["notes"] = {"lpips": reason}
        return pvalue | ManifestJob(_job_config(self, restore.TASK, params), read, task, extra_summary=extra)


# --------------------------------------------------------------------------- finer steps

class ChromabeamReadImages(YamlStep):
    """Read image records from shards (WebDataset .tar, Parquet key+image, image files).

    Emits rows (key, source_uri, image bytes, error): an unreadable record keeps its
    reason in ``error`` with ``image`` null — nothing is dropped."""

    FIELDS = (
        Field("url", help="input URL, folder or glob (gs://, s3://, file, memory://)"),
        Field("max_bytes", (int,), default=512 * 1024 * 1024, help="refuse records larger than this"),
    )
    _yaml_requires_inputs = False

    def expand(self, pbegin):
        from chromabeam.transforms.read import ReadImages

        return (pbegin
                | "Read" >> ReadImages(self.config["url"], max_bytes=self.config["max_bytes"])
                | "ToRows" >> beam.Map(record_to_row).with_output_types(IMAGE_ROW))


class DecodeRowFn(beam.DoFn):
    def __init__(self, *, max_pixels: int):
        self._max_pixels = max_pixels
        self._errors = beam.metrics.Metrics.counter("chromabeam", "decode_errors")

    def process(self, row):
        from chromabeam.transforms.decode import decode_record

        out = decode_record(row_to_record(row), max_pixels=self._max_pixels)
        if isinstance(out, ReadError):
            self._errors.inc()
            yield beam.Row(key=out.key, source_uri=out.source_uri, width=None, height=None, status="error", error=out.reason)
        else:
            yield beam.Row(key=out.key, source_uri=out.source_uri, width=out.width, height=out.height, status="ok", error=None)


class ChromabeamDecode(YamlStep):
    """Decode each image row (EXIF orientation, RGB, size guard): emits
    (key, source_uri, width, height, status, error) — a dataset check before a big job."""

    FIELDS = (Field("max_pixels", (int,), default=DEFAULT_MAX_PIXELS, help="refuse images larger than this"),)

    def expand(self, rows):
        _check_row_input(rows, "ChromabeamDecode")
        return rows | "Decode" >> beam.ParDo(DecodeRowFn(max_pixels=self.config["max_pixels"])).with_output_types(DECODED_ROW)


class FilterRowFn(beam.DoFn):
    def __init__(self, *, names: tuple[str, ...], strength: float, image_format: str, quality: int, max_pixels: int):
        self._names, self._strength = names, strength
        self._fmt, self._quality, self._max_pixels = image_format, quality, max_pixels

    def process(self, row):
        from chromabeam.transforms.decode import decode_record
        from chromabeam.transforms.ops import synth
        from chromabeam.transforms.ops.imageio import encode_image, extension
        from chromabeam.transforms.write import part_of

        out = decode_record(row_to_record(row), max_pixels=self._max_pixels)
        if isinstance(out, ReadError):
            yield beam.Row(key=out.key, source_uri=out.source_uri, image=None, error=out.reason, filter=None)
            return
        name = self._names[part_of(out.key, len(self._names))]
        spec = {"family": "filter", "id": name, "strength": self._strength, "params": None, "perturb": []}
        try:
            data = encode_image(synth.render(out.pixels, spec), extension(self._fmt), self._quality)
        except Exception as exc:  # one image failing must not stop the job
            yield beam.Row(key=out.key, source_uri=out.source_uri, image=None,
                           error=f"filter {name} failed: {type(exc).__name__}: {exc}", filter=name)
            return
        # The bytes were made here, not read from source_uri: say so (manifests show it).
        yield beam.Row(key=out.key, source_uri=f"{out.source_uri}#filter={name}", image=data, error=None, filter=name)


class ChromabeamFilterImages(YamlStep):
    """Apply Instagram-style filters to image rows, keeping keys (e.g. to make filtered
    copies to restore or to score a "doing nothing" baseline against the originals).

    With several names, each key gets one by a stable hash; the ``filter`` column says which."""

    FIELDS = (
        Field("filters", default="iffi", help="iffi | all | comma-separated pilgram names"),
        Field("strength", (float,), default=1.0, help="blend with the original, 0..1"),
        Field("image_format", default="jpg", choices=("jpg", "png", "webp")),
        Field("quality", (int,), default=95),
        Field("max_pixels", (int,), default=DEFAULT_MAX_PIXELS),
    )

    def __init__(self, **config):
        super().__init__(**config)
        from chromabeam.transforms.ops import synth

        try:
            self._names = synth.parse_filters(self.config["filters"])
        except ValueError as exc:
            raise ConfigError(f'field "filters": {exc}') from None
        if not self._names:
            raise ConfigError('field "filters" names no filter')
        if not 0.0 <= self.config["strength"] <= 1.0:
            raise ConfigError(f'field "strength" must be within [0, 1], got {self.config["strength"]}')

    def expand(self, rows):
        _check_row_input(rows, "ChromabeamFilterImages")
        c = self.config
        fn = FilterRowFn(names=self._names, strength=c["strength"], image_format=c["image_format"],
                         quality=c["quality"], max_pixels=c["max_pixels"])
        return rows | "Filter" >> beam.ParDo(fn).with_output_types(FILTERED_ROW)


# --------------------------------------------------------------------------- registry

STEPS: dict[str, type] = {
    "ChromabeamReadImages": ChromabeamReadImages,
    "ChromabeamDecode": ChromabeamDecode,
    "ChromabeamFilterImages": ChromabeamFilterImages,
    "ChromabeamEvaluate": ChromabeamEvaluate,
    "ChromabeamSynthPairs": ChromabeamSynthPairs,
    "ChromabeamStylize": ChromabeamStylize,
    "ChromabeamRestore": ChromabeamRestore,
}
JOB_STEPS = ("ChromabeamEvaluate", "ChromabeamSynthPairs", "ChromabeamStylize", "ChromabeamRestore")


def check_step(type_name: str, name: str, config: Any, line: Any = None) -> dict:
    """Validate one YAML step's config; ConfigError reads
    ``step "NAME" (TYPE, line N): unknown field "x"; expected one of …``."""
    where = f'step "{name}" ({type_name}' + (f", line {line})" if line not in (None, "unknown") else ")")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: config must be a mapping, got {type(config).__name__}")
    try:
        return check_config(STEPS[type_name].fields(), config)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
