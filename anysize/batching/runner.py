"""Running a planned batch in this process (one rank of a torchrun/accelerate/srun launch, or alone).

A chunk (:mod:`anysize.batching.plan`) is one :func:`anysize.generate` call with one image per
job. A chunk whose jobs are all complete is skipped; one with some missing runs whole (the same
composition, so the same bytes) and only the missing files are written. A chunk that raises (out
of memory, a LoRA that does not load, ...) records its jobs as failed and the run goes on, or stops
with ``fail_fast``; Ctrl-C stops it, losing only that chunk.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import Cancelled
from ..progress import advance
from .jobs import Job, JobError
from .plan import Chunk, World, make_chunks, shard
from .store import is_complete, job_config, remove_job_temps, write_job
from .summary import RankLog, rebuild

__all__ = ["BatchResult", "run_chunk", "run_local"]


@dataclasses.dataclass
class BatchResult:
    """What a batch run did: per-status counts over all jobs (from ``summary.jsonl``) and this process's share."""

    out: Path
    records: list[dict[str, Any]]
    ran: int = 0
    skipped: int = 0
    failed_here: int = 0
    #: rows refused by the checks (run with skip_invalid), recorded as failed
    invalid: int = 0
    stopped: bool = False

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)

    @property
    def done(self) -> int:
        return self.count("done")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def pending(self) -> int:
        return self.count("pending")

    def record_chunk(self, records: list[dict[str, Any]], log: RankLog, bar, note: Callable[[str], None] | None,
                     fail_fast: bool) -> bool:
        """Log one finished chunk's records, count them, advance the bar; True when the run must stop."""
        for r in records:
            log.append(r)
        failed = [r for r in records if r["status"] == "failed"]
        self.ran += len(records) - len(failed)
        self.failed_here += len(failed)
        advance(bar, len(records))  # the last chunk's final line is drawn once, by the bar's close
        if failed and note is not None:
            note(f"chunk {records[0]['chunk']} ({len(failed)} job{'s' if len(failed) != 1 else ''}) failed: "
                 f"{failed[0]['error']}")
        self.stopped = bool(failed and fail_fast)
        return self.stopped


def run_chunk(adapter, chunk: Chunk, out: Path, *, tiled_vae="auto", who: dict[str, Any] | None = None,
              todo: Sequence[Job] | None = None) -> list[dict[str, Any]]:
    """Run one chunk whole and write the files of its jobs in ``todo`` (default: the incomplete ones);
    one record per written (or failed) job. Errors other than Ctrl-C become ``failed`` records."""
    from .. import api

    jobs = list(chunk.jobs)
    todo = [j for j in jobs if not is_complete(out, j)] if todo is None else list(todo)
    if not todo:
        return []
    first = jobs[0]
    # seconds and network calls are the job's share of its chunk's (network_calls: evaluations per
    # image, as anysize.generate counts them for one image); the chunk's own totals beside them
    base = {"chunk": chunk.index, "batch": len(jobs), **(who or {})}
    start = time.perf_counter()
    calls0 = adapter.calls
    try:
        result = api.generate(
            adapter, [j.prompt for j in jobs],
            negative_prompt=None if first.negative is None else [j.negative for j in jobs],
            width=first.width, height=first.height, method=first.method, method_options=first.options,
            steps=first.steps, guidance=first.guidance, seed=[j.seed for j in jobs], scheduler=first.scheduler,
            tiled_vae=tiled_vae, progress=False, lora=first.loras, regions=first.regions,
            control=_job_controls(adapter, first),
        )
        wanted = {j.id for j in todo}
        for i, job in enumerate(jobs):
            if job.id in wanted:
                write_job(out, job, result.images[i], job_config(result, i))
    except (KeyboardInterrupt, Cancelled):
        raise
    except Exception as e:  # noqa: BLE001  (a run-time failure of this chunk: recorded, the run goes on;
        # out of memory, anysize.generate has given the failed chunk's memory back already)
        seconds = time.perf_counter() - start
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        return [{"id": j.id, "row": j.row, "status": "failed", "error": msg, "stage": "run",
                 "seconds": round(seconds / len(jobs), 4), "chunk_seconds": round(seconds, 4),
                 "network_calls": (adapter.calls - calls0) // len(jobs), **base} for j in todo]
    seconds = time.perf_counter() - start
    return [{"id": j.id, "row": j.row, "status": "done", "error": None, "seconds": round(seconds / len(jobs), 4),
             "chunk_seconds": round(seconds, 4), "network_calls": result.network_calls // len(jobs),
             "chunk_network_calls": result.network_calls, **base} for j in todo]


#: ControlNets loaded for the batch jobs, by (model network, path): each loaded once per run
_CONTROLNETS: dict[tuple[int, str], Any] = {}


def _job_controls(adapter, job: Job) -> list | None:
    """The job's ``control`` rows as ``anysize.Control`` objects, each ControlNet loaded once."""
    if not job.control:
        return None
    from ..models import control

    out = []
    for c in job.control:
        key = (id(adapter.network), c["model"])
        if key not in _CONTROLNETS:
            _CONTROLNETS[key] = control.load_controlnet(c["model"], control.CLASSES.get(adapter.family, ()), adapter)
        out.append(control.Control(_CONTROLNETS[key], c["image"], c["scale"], c["start"], c["end"], c.get("mode")))
    return out


def progress_bar(total: int, initial: int, world: World, all_jobs: int, enabled: bool):
    """One bar over this rank's jobs with its ETA; rank 0's also says the run's total."""
    from tqdm.auto import tqdm

    desc = f"rank {world.rank}/{world.size}" if world.size > 1 else "batch"
    bar = tqdm(total=total, initial=initial, desc=desc, unit="job", disable=not enabled, file=sys.stderr,
               dynamic_ncols=True, leave=True)
    if enabled and world.rank == 0 and world.size > 1:
        bar.set_postfix_str(f"{all_jobs} jobs on {world.size} ranks", refresh=False)
    return bar


class KeptLoras:
    """The LoRAs of a run of consecutive chunks, attached once for all of them (each chunk's
    ``anysize.generate`` finds them active and loads nothing: :func:`anysize.models.lora.attached`),
    removed when the next chunk has other LoRAs or the run ends. A set that fails to load is not
    kept: the chunk's own run then fails with its message, recorded like any chunk failure."""

    def __init__(self, adapter):
        self.adapter = adapter
        self._key: tuple | None = None
        self._block = None

    def keep(self, records) -> None:
        from ..errors import AnysizeError
        from ..lora import check_loras
        from ..models.lora import lora_set_key

        try:
            loras = check_loras(records or None)
        except AnysizeError:
            loras = ()  # the chunk's run reports it
        key = lora_set_key(loras)
        if key == self._key:
            return
        self.close()
        if not loras:
            return
        block = self.adapter.loras(loras)
        try:
            block.__enter__()
        except AnysizeError:
            return  # not kept: the chunk's run fails with the same message, as a record
        self._key, self._block = key, block

    def close(self) -> None:
        block, self._block, self._key = self._block, None, None
        if block is not None:
            block.__exit__(None, None, None)


def run_local(adapter, jobs: Sequence[Job], invalid: Sequence[JobError], out: Path, *, batch: int = 1,
              world: World = World(), fail_fast: bool = False, progress: bool = True, tiled_vae="auto",
              note: Callable[[str], None] | None = None) -> BatchResult:
    """Run this rank's share of the plan into ``out``, then rebuild ``summary.jsonl``."""
    chunks = make_chunks(jobs, batch)
    mine = shard(chunks, world.rank, world.size)
    my_jobs = [j for c in mine for j in c.jobs]
    remove_job_temps(out, my_jobs)
    log = RankLog(out, world.rank)
    result = BatchResult(out, [], invalid=len(invalid))
    who = {"rank": world.rank, "world_size": world.size, "engine": "local"}
    complete = {j.id for j in my_jobs if is_complete(out, j)}
    result.skipped = len(complete)
    bar = progress_bar(len(my_jobs), len(complete), world, len(jobs), progress)
    kept = KeptLoras(adapter)
    try:
        for chunk in mine:
            todo = [j for j in chunk.jobs if j.id not in complete]
            if not todo:
                continue
            kept.keep(chunk.jobs[0].loras)
            records = run_chunk(adapter, chunk, out, tiled_vae=tiled_vae, who=who, todo=todo)
            if result.record_chunk(records, log, bar, note, fail_fast):
                break
    finally:
        kept.close()
        bar.close()
        log.close()
    result.records = rebuild(out, jobs, invalid)
    return result
