"""Batch jobs: many generations from one jobs file, resumable, split over processes or a Ray pool.

    import anysize
    model = anysize.load()
    result = anysize.batch(model, "jobs.jsonl", "out/", batch_size=4)
    result.done, result.failed            # counts over all jobs, from out/summary.jsonl

One module per concern: :mod:`.jobs` reads and checks the rows, :mod:`.plan` groups them into
network calls and splits them over ranks, :mod:`.store` writes and recognises a job's files,
:mod:`.summary` keeps ``summary.jsonl``, :mod:`.runner` runs a rank's share in this process and
:mod:`.ray_engine` runs the plan on a Ray actor pool. The command line is ``anysize batch``
(:mod:`anysize.cli.batch`).

The package is ``batching`` so that ``anysize.batch`` can be the function.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import InvalidArgumentError
from .jobs import FIELDS, InvalidJobsError, Job, JobError, parse, read_rows, resolve, rows_from_dicts
from .plan import World, world_from_env
from .runner import BatchResult, run_local

__all__ = ["BatchResult", "FIELDS", "InvalidJobsError", "Job", "JobError", "World", "batch", "check_jobs",
           "finish_checks", "read_jobs", "world_from_env"]


def read_jobs(jobs: str | os.PathLike | Iterable[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None
              ) -> tuple[list[Job], list[JobError]]:
    """Pass 1 (no model): the jobs of a file (JSONL, CSV or prompts, see :mod:`.jobs`) or of a list
    of dicts, with every bad row as an error."""
    if isinstance(jobs, (str, os.PathLike)):
        rows, errors = read_rows(jobs)
    elif isinstance(jobs, (bytes, Mapping)) or not isinstance(jobs, Iterable):
        raise InvalidArgumentError(f"jobs must be a jobs file path or a list of dicts, got {type(jobs).__name__}")
    else:
        rows, errors = rows_from_dicts(jobs)
        if not rows and not errors:
            raise InvalidArgumentError("no jobs given: the list is empty")
    parsed, bad = parse(rows, defaults)
    return parsed, sorted(errors + bad, key=lambda e: e.row)


def finish_checks(adapter, parsed: Sequence[Job], errors: Sequence[JobError], out: Path
                  ) -> tuple[list[Job], list[JobError]]:
    """Pass 2 (the model), and ids that name another job's files in ``out``: the runnable jobs and all errors."""
    from .store import conflicts

    jobs, bad = resolve(parsed, adapter)
    clash = conflicts(out, jobs)
    if clash:
        dropped = {j.id for j, _ in clash}
        jobs = [j for j in jobs if j.id not in dropped]
        bad += [JobError(j.row, j.line, msg, j.id) for j, msg in clash]
    return jobs, sorted(list(errors) + bad, key=lambda e: e.row)


def check_jobs(adapter, jobs, out: Path, defaults: Mapping[str, Any] | None = None):
    """Both passes: (runnable jobs, errors of every other row)."""
    parsed, errors = read_jobs(jobs, defaults)
    return finish_checks(adapter, parsed, errors, out)


def batch(
    model,
    jobs: str | os.PathLike | Iterable[Mapping[str, Any]],
    out: str | os.PathLike,
    *,
    batch_size: int = 1,
    defaults: Mapping[str, Any] | None = None,
    skip_invalid: bool = False,
    fail_fast: bool = False,
    world: World | None = None,
    tiled_vae: bool | str = "auto",
    progress: bool = True,
    note: Callable[[str], None] | None = None,
) -> BatchResult:
    """Run every job of ``jobs`` into directory ``out``: ``<id>.png`` and ``<id>.json`` per job,
    ``summary.jsonl`` over all of them.

    ``jobs`` is a JSONL/CSV/prompt file or a list of dicts with the fields of
    :data:`~anysize.batching.jobs.FIELDS`; ``defaults`` fills the fields a row leaves out (a
    missing ``seed`` is ``defaults["seed"] + i`` for job i). Every row is checked first; bad rows
    raise :class:`InvalidJobsError` listing all of them, unless ``skip_invalid`` (then they are
    recorded as failed). Jobs whose files are complete are skipped, so a rerun resumes. Up to
    ``batch_size`` jobs of one configuration share each network call. ``world`` (default: from the
    environment, see :func:`world_from_env`) makes this process one rank of several, running its
    share only. A job that fails at run time is recorded and the others run, unless ``fail_fast``.
    """
    from ..api import _adapter
    from .store import check_out_dir

    adapter = _adapter(model)
    if not isinstance(skip_invalid, bool) or not isinstance(fail_fast, bool) or not isinstance(progress, bool):
        raise InvalidArgumentError("skip_invalid, fail_fast and progress must be True or False")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer (jobs per network call), got {batch_size!r}")
    out = check_out_dir(out)
    runnable, errors = check_jobs(adapter, jobs, out, defaults)
    if errors and not skip_invalid:
        raise InvalidJobsError(errors, str(jobs) if isinstance(jobs, (str, os.PathLike)) else "the job list",
                               len(runnable) + len(errors))
    return run_local(adapter, runnable, errors, out, batch=batch_size, world=world or world_from_env(),
                     fail_fast=fail_fast, progress=progress, tiled_vae=tiled_vae, note=note)
