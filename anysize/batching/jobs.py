"""Batch jobs: reading a jobs file and checking every row before any work.

A jobs file is JSONL (``.jsonl``/``.ndjson``: one object per line), JSON (``.json``: an array of
job objects, or one object), CSV (``.csv``: a header row, then one job per row; an empty cell is an
absent field, ``options`` a JSON object) or a plain prompt file (anything else: one prompt per
non-empty line; a line that is a JSON object is refused, since it is a job in the wrong file). The fields (:data:`FIELDS`) are those
of :func:`anysize.generate`; a field a row leaves out takes the command's default (the CLI's flags),
and a missing seed is ``seed + i`` for job ``i`` (0-based), as ``anysize generate`` numbers several
prompts.

Checking is in two passes, both over every row, so all bad rows are reported at once:
:func:`parse` needs no model (types, ranges, names, method options, ids) and
:func:`resolve` needs the loaded model (sizes against its pixel factor, method/model/size
compatibility, scheduler kind, memory, defaults filled in); :func:`resolve` also gives each job
its id. An id is given, or the first 16 hex digits of the SHA-256 of the job's full
configuration (:meth:`Job.spec`, canonical JSON), so the same job gets the same id in every run,
on every rank and with any row order, and a changed job gets a new one.

This module imports neither torch nor diffusers at import time.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import AnysizeError, InvalidArgumentError
from ..prompts import check_prompt, decode_prompt_file

__all__ = ["FIELDS", "Job", "JobError", "InvalidJobsError", "Row", "parse", "read_rows", "resolve"]

#: the fields of a job, in the order the docs list them
FIELDS = ("id", "prompt", "negative", "seed", "size", "width", "height", "method", "options", "steps", "guidance",
          "scheduler", "lora", "regions", "control")
#: other spellings accepted for a field (the API's names)
ALIASES = {"negative_prompt": "negative", "method_options": "options"}
#: a job id: a file name without a directory or control characters, not hidden (anysize's temporaries
#: start with "."), at most 200 characters (as the ids of ``anysize eval`` manifests, which name files too)
ID_RE = re.compile(r"^[^./\\\x00-\x1f][^/\\\x00-\x1f]{0,199}$")
#: file suffix -> format
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}


@dataclasses.dataclass(frozen=True)
class Row:
    """One raw row of a jobs file: its 1-based number among the jobs, its line in the file, its fields."""

    number: int
    line: int
    values: Mapping[str, Any]

    def where(self) -> str:
        return f"row {self.number} (line {self.line})"


@dataclasses.dataclass(frozen=True)
class JobError:
    """A row that cannot run, and why (one line)."""

    row: int
    line: int
    message: str
    id: str | None = None

    def __str__(self) -> str:
        return f"row {self.row} (line {self.line}): {self.message}"


class InvalidJobsError(AnysizeError):
    """Rows of a jobs file that cannot run: all of them, one line each, with their row numbers."""

    def __init__(self, errors: Sequence[JobError], source: str, total: int):
        self.errors = list(errors)
        n = len(self.errors)
        head = (f"{n} of {total} job{'s' if total != 1 else ''} in {source} {'is' if n == 1 else 'are'} invalid "
                "(nothing was run; fix them, or pass --skip-invalid to run the others):")
        super().__init__("\n".join([head] + [f"  {e}" for e in self.errors]))


@dataclasses.dataclass
class Job:
    """One checked job. Before :func:`resolve`, ``steps``/``guidance``/``width``/``height`` may be None
    (the model's defaults) and ``id`` None (a hash); after it every field is set."""

    row: int
    line: int
    prompt: str
    negative: str | None
    seed: int
    width: int | None
    height: int | None
    method: str
    options: dict[str, Any]
    steps: int | None
    guidance: float | None
    scheduler: str
    id: str | None = None
    #: set by resolve: what identifies the model (its source, family, dtype), part of the spec
    model: dict[str, Any] | None = None
    #: the job's LoRAs as the metadata records them (path, file, sha256, scale); see :func:`_job_loras`
    loras: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: regional prompts (:meth:`anysize.regions.Region.to_dict` of each), None: none
    regions: list[dict[str, Any]] | None = None
    #: ControlNets: [{"model", "image", "scale", "start", "end"[, "mode"]}] (see :func:`parse_control`)
    control: list[dict[str, Any]] | None = None

    def spec(self) -> dict[str, Any]:
        """Everything the image depends on, canonical (hashed into the id, stored in ``<id>.json``).

        The LoRAs enter it (with their weights' hashes, so a changed file is a new job) only when
        there are some: a job without LoRAs keeps the id it had before LoRAs were a field."""
        spec = {
            "prompt": self.prompt, "negative": self.negative, "seed": self.seed, "width": self.width,
            "height": self.height, "method": self.method, "options": self.options, "steps": self.steps,
            "guidance": self.guidance, "scheduler": self.scheduler, "model": self.model,
            **({"control": self.control} if self.control else {}),  # absent without: older ids stay the same
        }
        if self.loras:
            spec["loras"] = [{k: one[k] for k in ("path", "sha256", "scale")} for one in self.loras]
        if self.regions is not None:  # only then: the ids of jobs without regions stay what they were
            spec["regions"] = self.regions
        return spec

    def config_key(self) -> str:
        """What one network call needs to share: jobs with the same key can be batched together."""
        key = {
            "method": self.method, "options": self.options, "width": self.width, "height": self.height,
            "steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler,
            "negative": self.negative is not None, "loras": self.loras,
            "control": self.control,
        }
        if self.regions is not None:  # one call's images share their regions
            key["regions"] = self.regions
        return canonical(key)


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, non-ASCII kept, so equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(spec).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ reading


def read_rows(path: str | Path) -> tuple[list[Row], list[JobError]]:
    """The rows of a jobs file (format from the suffix, see the module doc); rows that cannot even
    be read (bad JSON, a CSV row with too many cells) come back as errors, so they are reported with
    the others. An unreadable or empty file is an :class:`InvalidArgumentError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read jobs file {path}: {e.strerror or e}") from None
    text = decode_prompt_file(data, str(path))
    kind = FORMATS.get(path.suffix.lower(), "prompts")
    rows, errors = {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows, "prompts": _prompt_rows}[kind](text, path)
    if not rows and not errors:
        what = {"jsonl": "one JSON object per line", "json": "an array of job objects",
                "csv": "a header, then one row per job", "prompts": "one prompt per non-empty line"}[kind]
        raise InvalidArgumentError(f"jobs file {path} has no jobs ({what})")
    return rows, errors


def _jsonl_rows(text: str, path: Path):
    rows, errors = [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        number = len(rows) + len(errors) + 1
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(JobError(number, line_no, f"not JSON: {e.msg} at column {e.colno}"))
            continue
        if not isinstance(value, dict):
            errors.append(JobError(number, line_no, f"a job is a JSON object {{\"prompt\": ...}}, got {type(value).__name__}"))
            continue
        rows.append(Row(number, line_no, value))
    return rows, errors


def _json_rows(text: str, path: Path):
    """A ``.json`` file: an array of job objects (each element a row, its line where it starts) or one object."""
    decoder = json.JSONDecoder()

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip_space(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def bad(e: json.JSONDecodeError):
        return InvalidArgumentError(f"jobs file {path} is not JSON: {e.msg} at line {e.lineno} column {e.colno}")

    start = skip_space(0)
    if start == len(text):
        return [], []
    if text[start] != "[":  # one job object (or a wrong value, refused below)
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as e:
            raise bad(e) from None
        if skip_space(end) != len(text):
            raise InvalidArgumentError(f"jobs file {path}: more after the JSON value at line {line_of(skip_space(end))}"
                                       " (for one job per line name the file .jsonl)")
        if not isinstance(value, dict):
            raise InvalidArgumentError(f"jobs file {path} holds a JSON {type(value).__name__}: give an array of job "
                                       "objects [{\"prompt\": ...}, ...]")
        return [Row(1, line_of(start), value)], []
    rows, errors = [], []
    pos = skip_space(start + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise bad(e) from None
        number = len(rows) + len(errors) + 1
        if isinstance(value, dict):
            rows.append(Row(number, line_of(pos), value))
        else:
            errors.append(JobError(number, line_of(pos), f"a job is a JSON object {{\"prompt\": ...}}, got {type(value).__name__}"))
        pos = skip_space(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip_space(pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise InvalidArgumentError(f"jobs file {path} is not JSON: expected ',' or ']' at line {line_of(pos)}")
    if pos >= len(text) or skip_space(pos + 1) != len(text):
        raise InvalidArgumentError(f"jobs file {path} is not JSON: the array {'is not closed' if pos >= len(text) else 'is followed by more'}")
    return rows, errors


def _csv_rows(text: str, path: Path):
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    rows, errors = [], []
    for cells in reader:
        if header is None:
            if not any(c.strip() for c in cells):
                continue
            header = [c.strip() for c in cells]
            header_line = reader.line_num
            blank = [i + 1 for i, c in enumerate(header) if not c]
            if blank:
                raise InvalidArgumentError(f"jobs file {path}: column {blank[0]} of the header (line {header_line}) has no name")
            if len(set(header)) != len(header):
                dup = next(c for c in header if header.count(c) > 1)
                raise InvalidArgumentError(f"jobs file {path}: column {dup!r} appears twice in the header")
            continue
        if not any(c.strip() for c in cells):
            continue
        number = len(rows) + len(errors) + 1
        if len(cells) > len(header):
            errors.append(JobError(number, reader.line_num, f"{len(cells)} cells for the header's {len(header)} columns"))
            continue
        values = {k: v for k, v in zip(header, cells) if v != ""}
        rows.append(Row(number, reader.line_num, {**values, "__csv__": True}))
    return rows, errors


def _prompt_rows(text: str, path: Path):
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            if _is_json_object(line):  # a job in a prompt file would run with its JSON text as the prompt
                raise InvalidArgumentError(
                    f"jobs file {path}: line {line_no} is a JSON object, but a {path.suffix or 'suffix-less'} file is read "
                    "as one prompt per line; name it .jsonl (one job per line) or .json (an array of jobs)")
            rows.append(Row(len(rows) + 1, line_no, {"prompt": line.strip()}))
    return rows, []


def _is_json_object(line: str) -> bool:
    line = line.strip()
    if not (line.startswith("{") and line.endswith("}")):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def rows_from_dicts(jobs: Iterable[Mapping[str, Any]]) -> tuple[list[Row], list[JobError]]:
    """Rows from Python dicts (the API's ``jobs=[{...}, ...]``), numbered from 1 (line = row)."""
    rows, errors = [], []
    for i, value in enumerate(jobs, 1):
        if not isinstance(value, Mapping):
            errors.append(JobError(i, i, f"a job is a dict {{'prompt': ...}}, got {type(value).__name__}"))
        else:
            rows.append(Row(i, i, dict(value)))
    return rows, errors


# ------------------------------------------------------------------------------------------ pass 1: no model


def _field_values(row: Row) -> dict[str, Any]:
    values = {}
    for key, value in row.values.items():
        if key == "__csv__":
            continue
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise InvalidArgumentError(f"unknown field {key!r}; the fields: {', '.join(FIELDS)}")
        if name in values:
            raise InvalidArgumentError(f"field {name!r} given twice (as {key!r} and its other spelling)")
        values[name] = value
    return values


def _csv_number(name: str, value: Any, kind: type) -> Any:
    """A CSV cell (text) read as an int or float; JSON values pass unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return kind(value.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise InvalidArgumentError(f"{name} must be {what}, got {value!r}") from None


def _job_loras(value, csv_row: bool) -> list[dict[str, Any]]:
    """A row's ``lora`` (or the command's ``--lora`` default): one ``"PATH[:SCALE]"``, or a list of
    such strings and ``{"path": ..., "scale": ...}`` objects (a CSV cell: the text, or a JSON list);
    each checked and hashed (:func:`anysize.lora.check_loras`), as the metadata records it."""
    from ..lora import check_loras, parse_lora

    if value is None:
        return []
    if csv_row and isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"lora must be PATH[:SCALE] or a JSON list of them: {e.msg}") from None
    items = value if isinstance(value, list) else [value]
    loras = []
    for i, item in enumerate(items):
        where = "lora" if len(items) == 1 else f"lora {i + 1} of {len(items)}"
        if isinstance(item, str):
            item = parse_lora(item, where)
        elif not isinstance(item, Mapping):
            raise InvalidArgumentError(
                f"{where} must be \"PATH[:SCALE]\" or {{\"path\": ..., \"scale\": ...}}, got {item!r}")
        loras += check_loras(item, where)
    return [one.describe() for one in loras]


def _one(row: Row, defaults: Mapping[str, Any], index: int) -> Job:
    from ..api import check_seed
    from ..options import require
    from ..schedulers import SCHEDULERS
    from .. import methods
    from ..cli.inputs import parse_size
    from ..errors import check_choice

    values = _field_values(row)
    csv_row = bool(row.values.get("__csv__"))
    get = lambda name: values.get(name, defaults.get(name))  # noqa: E731

    prompt = values.get("prompt", defaults.get("prompt"))
    if prompt is None:
        raise InvalidArgumentError("no prompt (give the field 'prompt')")
    if not isinstance(prompt, str):
        raise InvalidArgumentError(f"prompt must be text, got {type(prompt).__name__} {prompt!r}")
    if not check_prompt(prompt).strip():
        raise InvalidArgumentError("prompt is empty; give the text of the image to generate")
    negative = get("negative")
    if negative is not None:
        if not isinstance(negative, str):
            raise InvalidArgumentError(f"negative must be text, got {type(negative).__name__} {negative!r}")
        check_prompt(negative, "negative prompt")

    if "seed" in values:
        seed = check_seed(_csv_number("seed", values["seed"], int) if csv_row else values["seed"])
    else:
        seed = check_seed(defaults.get("seed", 0) + index, name="seed (--seed + row index)")

    width = height = None
    size = values.get("size")
    if size is not None and ("width" in values or "height" in values):
        raise InvalidArgumentError("give size or width/height, not both")
    if "width" in values or "height" in values:
        if "width" not in values or "height" not in values:
            raise InvalidArgumentError(f"{'height' if 'width' in values else 'width'} missing: give both width and height")
        width = require("width", _csv_number("width", values["width"], int) if csv_row else values["width"], kind="int", low=1)
        height = require("height", _csv_number("height", values["height"], int) if csv_row else values["height"], kind="int", low=1)
    else:
        size = size if size is not None else defaults.get("size")
        if size is not None:
            if not isinstance(size, str):
                raise InvalidArgumentError(f"size must be text WIDTHxHEIGHT (e.g. 1024x768), got {size!r}")
            width, height = parse_size(size)

    method = get("method") or "direct"
    if not isinstance(method, str):
        raise InvalidArgumentError(f"method must be a name, got {method!r}")
    check_choice("method", method, methods.names())
    options = dict(defaults.get("options") or {})
    raw = values.get("options")
    if raw is not None:
        if csv_row and isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise InvalidArgumentError(f"options must be a JSON object, e.g. {{\"tile\": 64}}: {e.msg}") from None
        if not isinstance(raw, dict):
            raise InvalidArgumentError(f"options must be an object of option names to values, e.g. {{\"tile\": 64}}, got {raw!r}")
        options.update(raw)
    loras = _job_loras(get("lora"), csv_row)
    options = methods.create(method, **options).describe()  # unknown options, out-of-range values; full and canonical
    regions = _regions(get("regions"), csv_row, methods.get(method))

    steps = get("steps")
    if steps is not None:
        steps = require("steps", _csv_number("steps", steps, int) if csv_row else steps, kind="int", low=1)
    guidance = get("guidance")
    if guidance is not None:
        guidance = require("guidance", _csv_number("guidance", guidance, float) if csv_row else guidance,
                           kind="float", low=0)
        if not math.isfinite(guidance):
            raise InvalidArgumentError(f"guidance must be a finite number >= 0, got {guidance}")
        guidance = float(guidance)
    scheduler = get("scheduler") or "default"
    if not isinstance(scheduler, str):
        raise InvalidArgumentError(f"scheduler must be a name, got {scheduler!r}")
    check_choice("scheduler", scheduler, ["default", *SCHEDULERS])

    job_id = values.get("id")
    if job_id is not None:
        if isinstance(job_id, bool) or not isinstance(job_id, (str, int)):
            raise InvalidArgumentError(f"id must be text, got {job_id!r}")
        job_id = str(job_id)
        if not ID_RE.match(job_id) or job_id.lower().endswith(".tmp"):
            raise InvalidArgumentError(
                f"id {job_id!r} is not a file name: 1-200 characters, no '/', '\\' or control characters, not "
                "starting with '.' (it names <id>.png and <id>.json)")
    control = parse_control(get("control"), csv_row)
    return Job(row.number, row.line, prompt, negative, seed, width, height, method, options, steps, guidance,
               scheduler, job_id, loras=loras, regions=regions, control=control)


#: the keys of one ControlNet in a job's ``control`` list, with their defaults (None: required)
CONTROL_KEYS = {"model": None, "image": None, "scale": 1.0, "start": 0.0, "end": 1.0, "mode": None}


def parse_control(raw: Any, csv_row: bool = False) -> list[dict[str, Any]] | None:
    """A job's ``control`` field: a list of {"model": PATH, "image": FILE, "scale", "start", "end"[, "mode"]}
    (in a CSV file, that list as JSON), checked and completed with the defaults and the image's
    SHA-256 (part of the job's id); None when absent."""
    if raw is None or raw == "" or raw == []:
        return None
    if csv_row and isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"control must be a JSON list of objects: {e.msg}") from None
    if isinstance(raw, dict):
        raw = [raw]
    example = '[{"model": "path/to/controlnet", "image": "edges.png", "scale": 1.0, "start": 0.0, "end": 1.0}]'
    if not isinstance(raw, list):
        raise InvalidArgumentError(f"control must be a list of objects like {example}, got {raw!r}")
    out = []
    for i, item in enumerate(raw):
        what = f"control {i + 1}"
        if not isinstance(item, dict):
            raise InvalidArgumentError(f"{what} must be an object like {example[1:-1]}, got {item!r}")
        unknown = sorted(set(item) - set(CONTROL_KEYS))
        if unknown:
            raise InvalidArgumentError(f"{what}: unknown key {unknown[0]!r}; the keys: {', '.join(CONTROL_KEYS)}")
        c = {k: item.get(k, d) for k, d in CONTROL_KEYS.items()}
        for key in ("model", "image"):
            if not isinstance(c[key], str) or not c[key]:
                raise InvalidArgumentError(f"{what}: {key} must be a path (text), got {c[key]!r}")
        for key, low, high in (("scale", 0.0, None), ("start", 0.0, 1.0), ("end", 0.0, 1.0)):
            v = c[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= low and (high is None or v <= high)):
                rng = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
                raise InvalidArgumentError(f"{what}: {key} must be a number {rng}, got {v!r}")
            c[key] = float(v)
        if c["start"] >= c["end"]:
            raise InvalidArgumentError(f"{what}: start {c['start']} must be below end {c['end']}")
        try:  # the image's content enters the job's id: a changed image is a new job
            c["image_sha256"] = hashlib.sha256(Path(c["image"]).read_bytes()).hexdigest()
        except OSError as e:
            raise InvalidArgumentError(f"{what}: cannot read the control image {c['image']}: {e.strerror or e}") from None
        if c["mode"] is None:
            del c["mode"]
        elif isinstance(c["mode"], bool) or not isinstance(c["mode"], (int, str)):
            raise InvalidArgumentError(f"{what}: mode must be an index or a name, got {c['mode']!r}")
        out.append(c)
    return out


def _regions(raw: Any, csv_row: bool, method) -> list[dict[str, Any]] | None:
    """A row's ``regions``: a list of region objects (a CSV cell: that list as JSON text; mask files
    relative to the working directory), checked and made canonical."""
    if raw is None:
        return None
    from ..regions import as_regions, check_method

    if csv_row and isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InvalidArgumentError(f"regions must be a JSON list of region objects: {e.msg}") from None
    if not isinstance(raw, list):
        raise InvalidArgumentError(
            f"regions must be a list of region objects, e.g. [{{\"box\": [0, 0, 128, 128], \"prompt\": \"a red circle\"}}], got {raw!r}")
    check_method(method)
    return [r.to_dict() for r in as_regions(raw)]


def parse(rows: Sequence[Row], defaults: Mapping[str, Any] | None = None) -> tuple[list[Job], list[JobError]]:
    """Pass 1 over every row, without the model: the jobs that passed and one error per row that did not."""
    defaults = dict(defaults or {})
    jobs, errors = [], []
    for row in rows:
        try:
            jobs.append(_one(row, defaults, row.number - 1))
        except AnysizeError as e:
            given = row.values.get("id") if isinstance(row.values.get("id"), str) else None
            errors.append(JobError(row.number, row.line, str(e), given))
    return jobs, errors


# ------------------------------------------------------------------------------------------ pass 2: the model


def model_identity(adapter) -> dict[str, Any]:
    """What of the model enters a job's spec: the same fields as the PNG metadata's."""
    return {
        "model": getattr(adapter, "source", None) or adapter.pipe.config.get("_name_or_path", ""),
        "family": adapter.family,
        "dtype": str(adapter.dtype).replace("torch.", ""),
    }


def _lora_misfit(adapter, record: Mapping[str, Any]) -> str | None:
    """Why a LoRA cannot go into the model (another family's, a pipeline without a loader), or None:
    it is loaded once and taken out again."""
    from ..lora import check_loras

    try:
        with adapter.loras(check_loras(record)):
            return None
    except AnysizeError as e:
        return str(e)


def resolve(jobs: Sequence[Job], adapter) -> tuple[list[Job], list[JobError]]:
    """Pass 2 over every job, with the loaded model: defaults filled in, sizes, method/model
    compatibility, scheduler kind, LoRAs (each loaded once) and memory checked, ids given (hashes)
    and unique."""
    from .. import methods
    from ..api import _check_fits
    from ..schedulers import make_scheduler

    identity = model_identity(adapter)
    nh, nw = adapter.native_size
    schedulers: dict[str, str | None] = {}
    lora_fit: dict[str, str | None] = {}  # each distinct LoRA loaded into the model once, before any work
    good, errors = [], []
    seen: dict[str, Job] = {}
    for job in jobs:
        j = dataclasses.replace(job)
        try:
            j.width = nw if j.width is None else j.width
            j.height = nh if j.height is None else j.height
            j.steps = adapter.default_steps if j.steps is None else j.steps
            j.guidance = float(adapter.default_guidance) if j.guidance is None else j.guidance
            j.model = identity
            adapter.check_size(j.height, j.width)
            if j.scheduler not in schedulers:
                try:
                    make_scheduler(adapter, j.scheduler)
                    schedulers[j.scheduler] = None
                except AnysizeError as e:
                    schedulers[j.scheduler] = str(e)
            if schedulers[j.scheduler]:
                raise InvalidArgumentError(schedulers[j.scheduler])
            for record in j.loras:
                key = canonical([record["path"], record["sha256"]])
                if key not in lora_fit:
                    lora_fit[key] = _lora_misfit(adapter, record)
                if lora_fit[key]:
                    raise InvalidArgumentError(lora_fit[key])
            methods.create(j.method, **j.options).check(adapter, j.height, j.width, j.steps)
            if j.regions is not None:
                from ..regions import check_regions

                check_regions(j.regions, j.width, j.height)
            _check_fits(adapter, j.height, j.width, 1)
            j.id = j.id if j.id is not None else spec_hash(j.spec())
            if j.id in seen:
                first = seen[j.id]
                if job.id is None:
                    raise InvalidArgumentError(
                        f"the same configuration as row {first.row} (id {j.id}); give each an id to run it twice")
                raise InvalidArgumentError(f"id {j.id!r} is also row {first.row}'s; ids name the output files and must be unique")
            seen[j.id] = j
            good.append(j)
        except AnysizeError as e:
            errors.append(JobError(job.row, job.line, str(e), job.id))
    return good, errors
