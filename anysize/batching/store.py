"""A batch's output files: ``DIR/<id>.png`` and ``DIR/<id>.json``, and what counts as done.

Both are written atomically by :mod:`anysize.output` (a temporary file, fsync, then a move), the
PNG first and the JSON last, so a job is complete exactly when its JSON exists, holds its spec and
its PNG exists: a ``kill -9`` at any moment leaves either a complete file or none (plus at most a
temporary file, never read as output). Neither file holds anything that depends on the run (no
time, rank or duration: those go to the summary), so a rerun writes the same bytes.

Temporary files: a job's files are written by the one process its chunk belongs to, so before
running a chunk that process removes the temporaries a killed write left under its jobs' names
(``.<id>.png.<hex>.tmp``), whatever their age; :func:`anysize.output.remove_stale_temps` sweeps
the rest of the directory (old ones only, since another live process might own them).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import OutputError
from .jobs import Job

__all__ = ["check_out_dir", "conflicts", "is_complete", "remove_job_temps", "write_job"]

#: the JSON's format version, for later readers
JOB_FORMAT = 1


def png_path(out: Path, job_id: str) -> Path:
    return out / f"{job_id}.png"


def json_path(out: Path, job_id: str) -> Path:
    return out / f"{job_id}.json"


def check_out_dir(out: str | os.PathLike) -> Path:
    """``out`` as a directory that exists or can be made, created; OutputError otherwise."""
    path = Path(out)
    if not str(out).strip():
        raise OutputError("--out is empty; give the directory for the batch's files")
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} is a file; a batch writes a directory of files")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create directory {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"directory {path} is not writable")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stored_spec(out: Path, job_id: str) -> Any:
    """The spec recorded in ``<id>.json``, or None when there is no readable one."""
    data = _read_json(json_path(out, job_id))
    return data.get("job") if isinstance(data, dict) and data.get("id") == job_id else None


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def is_complete(out: Path, job: Job) -> bool:
    """Whether the job's files are both there and its JSON holds this job's spec."""
    spec = stored_spec(out, job.id)
    return spec is not None and _same(spec, job.spec()) and png_path(out, job.id).is_file()


def conflicts(out: Path, jobs: Iterable[Job]) -> list[tuple[Job, str]]:
    """Jobs whose id already names another job's files in ``out`` (an id reused for a changed row)."""
    bad = []
    for job in jobs:
        spec = stored_spec(out, job.id)
        if spec is not None and not _same(spec, job.spec()):
            changed = sorted(k for k in set(spec) | set(job.spec()) if not _same(spec.get(k), job.spec().get(k)))
            bad.append((job, f"id {job.id!r}: {json_path(out, job.id)} was made by a different job (changed: "
                             f"{', '.join(changed)}); give this row another id, or delete that file to redo it"))
    return bad


def remove_job_temps(out: Path, jobs: Iterable[Job]) -> list[Path]:
    """Remove the temporary files of these jobs' PNG and JSON (see the module doc); returns them."""
    names = {f"{j.id}.{ext}" for j in jobs for ext in ("png", "json")}
    pattern = re.compile(r"^\.(.+)\.[0-9a-f]{8}\.tmp$")
    removed = []
    try:
        entries = list(os.scandir(out))
    except OSError:
        return removed
    for e in entries:
        m = pattern.match(e.name)
        if m and m.group(1) in names:
            try:
                os.unlink(e.path)
                removed.append(Path(e.path))
            except OSError:
                pass
    return removed


def job_config(result, index: int) -> dict[str, Any]:
    """Image ``index`` of a batched result with the metadata a one-prompt :func:`anysize.generate`
    gives it (its own prompt, negative and seed lists, not the whole call's)."""
    cfg = result.config_for(index)
    cfg["prompts"] = [cfg["prompt"]]
    cfg["negative_prompts"] = [cfg["negative_prompt"]] if result.config["negative_prompts"] is not None else None
    cfg["seeds"] = [cfg["seed"]]
    return cfg


def write_job(out: Path, job: Job, image, config: dict[str, Any]) -> None:
    """The job's PNG (metadata as :func:`anysize.generate`'s), then its JSON (id, spec, config)."""
    from ..output import save_json, save_png

    save_png(image, png_path(out, job.id), config, force=True)
    save_json({"format": JOB_FORMAT, "id": job.id, "png": f"{job.id}.png", "job": job.spec(), "config": config},
              json_path(out, job.id), force=True)

