"""``--engine ray``: the same plan on a Ray actor pool, one actor per GPU (or CPU worker) holding the model.

The driver (this process) reads the jobs, asks the first actor to run the model checks (it holds
the model; the driver never loads one), makes the same chunks as every other engine
(:mod:`anysize.batching.plan`), and hands the incomplete chunks to the pool as actors free up.
Each actor writes its jobs' files itself (the directory must be shared by the cluster's nodes),
through the same :func:`~anysize.batching.runner.run_chunk`; the driver alone appends the records
(``summary.rank0.jsonl``) and rebuilds ``summary.jsonl``. Same files, same resume as a local run.

Ray is optional: ``pip install anysize[ray]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InvalidArgumentError
from .jobs import Job, JobError
from .plan import World, make_chunks
from .store import is_complete, remove_job_temps
from .summary import RankLog, rebuild

__all__ = ["require_ray", "run_ray"]


def require_ray():
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InvalidArgumentError("--engine ray needs Ray: pip install 'anysize[ray]'") from None
    return ray


class _Worker:
    """One actor: loads the model once, then checks jobs and runs chunks; a LoRA set stays attached
    over the consecutive chunks it gets that share it, as in the local engine (:class:`KeptLoras`)."""

    def __init__(self, load: dict[str, Any], threads: int):
        import torch

        from .. import api

        torch.set_num_threads(threads)
        self.adapter = api.load(load.get("model"), family=load.get("family"), dtype=load.get("dtype", "fp32"),
                                device=load.get("device"), offload=load.get("offload", "none"),
                                compile=load.get("compile", False), sdpa=load.get("sdpa", "auto"))
        from .runner import KeptLoras

        self.kept = KeptLoras(self.adapter)

    def check(self, parsed, errors, out):
        from . import finish_checks

        return finish_checks(self.adapter, parsed, errors, Path(out))

    def run(self, chunk, out, tiled_vae, who):
        from .runner import run_chunk

        self.kept.keep(chunk.jobs[0].loras)
        return run_chunk(self.adapter, chunk, Path(out), tiled_vae=tiled_vae, who=who)


def _init(ray, address: str | None, cpus: float):
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # a cluster of this machine only: bound to the loopback interface
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False,
                 num_cpus=max(1, int(round(cpus))), configure_logging=False)


def run_ray(parsed: Sequence[Job], errors: Sequence[JobError], out: Path, *, load: dict[str, Any], batch: int = 1,
            workers: int | None = None, worker_gpus: float | None = None, worker_cpus: float = 1,
            address: str | None = None, threads: int = 1, fail_fast: bool = False, progress: bool = True,
            tiled_vae="auto", report: Callable[[list, list], None] | None = None,
            note: Callable[[str], None] | None = None):
    """Check and run every job on a Ray actor pool; returns a :class:`~anysize.batching.runner.BatchResult`."""
    from .runner import BatchResult, progress_bar

    ray = require_ray()
    from ray.util import ActorPool

    n_guess = workers or 1
    _init(ray, address, n_guess * (worker_cpus or 1))
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        worker_gpus = (1 if gpus else 0) if worker_gpus is None else worker_gpus
        workers = workers or (int(gpus // worker_gpus) if gpus and worker_gpus else 1) or 1
        if worker_gpus and load.get("device") is None:
            load = {**load, "device": "cuda"}
        elif not worker_gpus and load.get("device") is None:
            load = {**load, "device": "cpu"}
        Actor = ray.remote(num_cpus=worker_cpus, num_gpus=worker_gpus)(_Worker)
        actors = [Actor.remote(load, threads) for _ in range(workers)]
        jobs, errors = ray.get(actors[0].check.remote(list(parsed), list(errors), str(out)))
        if report is not None:
            report(jobs, errors)
        chunks = make_chunks(jobs, batch)
        remove_job_temps(out, jobs)
        complete = {j.id for j in jobs if is_complete(out, j)}
        todo = [c for c in chunks if any(j.id not in complete for j in c.jobs)]
        result = BatchResult(out, [], skipped=len(complete), invalid=len(errors))
        log = RankLog(out, 0)
        bar = progress_bar(len(jobs), len(complete), World(0, 1, 0, "ray"), len(jobs), progress)
        if note is not None:
            note(f"ray: {workers} worker{'s' if workers != 1 else ''} ({worker_gpus} GPU, {worker_cpus} CPU each), "
                 f"{len(todo)} of {len(chunks)} chunks to run")
        pool = ActorPool(actors)
        index = {id(a): i for i, a in enumerate(actors)}
        try:
            def submit(actor, chunk):
                who = {"rank": None, "world_size": None, "engine": "ray", "worker": index[id(actor)]}
                return actor.run.remote(chunk, str(out), tiled_vae, who)

            for records in pool.map_unordered(submit, todo):
                if result.record_chunk(records, log, bar, note, fail_fast):
                    break
        finally:
            bar.close()
            log.close()
        result.records = rebuild(out, jobs, errors)
        return result
    finally:
        if not address:
            ray.shutdown()
