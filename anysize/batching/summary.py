"""``DIR/summary.jsonl``: one final record per job, whichever process ran it, after any restart.

Each process appends its records to its own log, ``DIR/summary.rank<k>.jsonl`` (one ``write`` of
one line per record, as it goes), and, when it ends, rebuilds ``summary.jsonl`` from every log
under an exclusive lock (``DIR/.summary.lock``, ``fcntl.flock``) and writes it atomically. Why not
one shared file: appends from several processes are only safe where ``O_APPEND`` is atomic, which
network filesystems (NFS, the usual multi-node case) do not promise; one writer per log needs no
such promise. The lock orders the rebuilds, and every process appends all its records before it
takes the lock, so the last rebuild reads every log complete.

The final record of a job is taken from the files and the logs together: ``done`` when its files
are complete (with the latest ``done`` record's seconds, network calls and rank), else its latest
``failed`` record, else ``pending`` (not run yet, or lost with a killed process). Invalid rows are
``failed`` with ``stage: validation``. A line cut short by a kill is skipped, and the next append
starts on a fresh line.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .jobs import Job, JobError
from .store import is_complete

__all__ = ["RankLog", "rebuild"]

SUMMARY = "summary.jsonl"
LOCK = ".summary.lock"


def log_path(out: Path, rank: int) -> Path:
    return out / f"summary.rank{rank}.jsonl"


class RankLog:
    """One process's append-only record log."""

    def __init__(self, out: Path, rank: int):
        self.path = log_path(out, rank)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        size = os.fstat(self.fd).st_size
        if size:  # a line cut short by a kill: start on a fresh one
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self.fd, b"\n")

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "time": round(time.time(), 3)}, ensure_ascii=False, default=str) + "\n"
        os.write(self.fd, line.encode("utf-8"))

    def close(self) -> None:
        os.close(self.fd)


def read_logs(out: Path) -> list[dict[str, Any]]:
    """Every readable record of every rank log, oldest first."""
    records = []
    for path in sorted(out.glob("summary.rank*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and "id" in r:
                records.append(r)
    records.sort(key=lambda r: r.get("time") or 0)
    return records


@contextlib.contextmanager
def _locked(out: Path):
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover  (Windows: one process per directory there)
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def final_records(out: Path, jobs: Sequence[Job], invalid: Iterable[JobError]) -> list[dict[str, Any]]:
    """One record per job (in row order), from the files and the logs (see the module doc)."""
    latest: dict[str, dict[str, Any]] = {}
    done: dict[str, dict[str, Any]] = {}
    for r in read_logs(out):
        latest[r["id"]] = r
        if r.get("status") == "done":
            done[r["id"]] = r
    rows: list[tuple[int, dict[str, Any]]] = []
    for job in jobs:
        base = {"id": job.id, "row": job.row}
        if is_complete(out, job):
            r = done.get(job.id) or {"seconds": None, "network_calls": None, "rank": None,
                                      "note": "files complete; the process that wrote them was stopped before recording it"}
            rec = {**r, **base, "status": "done", "error": None}
        elif latest.get(job.id, {}).get("status") == "failed":
            rec = {**latest[job.id], **base}
        else:
            rec = {**base, "status": "pending", "error": None}
        rows.append((job.row, rec))
    for e in invalid:
        rows.append((e.row, {"id": e.id, "row": e.row, "line": e.line, "status": "failed", "stage": "validation",
                             "error": e.message}))
    rows.sort(key=lambda x: x[0])
    return [r for _, r in rows]


def rebuild(out: Path, jobs: Sequence[Job], invalid: Iterable[JobError]) -> list[dict[str, Any]]:
    """Rewrite ``summary.jsonl`` from the files and every log, under the lock; returns its records."""
    from ..output import save_text

    with _locked(out):
        for stale in out.glob(f".{SUMMARY}.*.tmp"):  # only the lock holder writes it: any temp is a dead one's
            with contextlib.suppress(OSError):
                stale.unlink()
        records = final_records(out, jobs, invalid)
        text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        save_text(text, out / SUMMARY, force=True)
    return records
