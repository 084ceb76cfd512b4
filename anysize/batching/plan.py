"""The plan of a batch run: which jobs share a network call, in what order, on which rank.

Batched network calls are equal to single ones only to a tolerance, so a job's bytes depend on
which jobs share its calls. The plan therefore fixes that first, from the jobs alone, and only
then splits the work:

1. jobs are grouped by configuration (:meth:`~anysize.batching.jobs.Job.config_key`: method,
   options, size, steps, guidance, scheduler, LoRAs, whether there is a negative prompt); groups are
   ordered by their first row, jobs inside a group by row;
2. each group is cut into chunks of at most ``batch`` consecutive jobs, numbered in that global
   order: one chunk is one :func:`anysize.generate` call;
3. rank ``r`` of ``w`` takes the chunks whose number is ``r`` modulo ``w`` (round-robin), so every
   rank runs the groups in the same order and switches configuration about once per group.

The chunks, and so every file's bytes, are the same for any world size, engine or restart; a
restart with the same world size gives each rank the same share. The split needs no coordinator:
every rank computes the whole plan and keeps its own part.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from ..errors import InvalidArgumentError
from .jobs import Job

__all__ = ["Chunk", "World", "make_chunks", "shard", "world_from_env"]


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Jobs of one configuration that run in one generate call; ``index`` is its place in the global order."""

    index: int
    jobs: tuple[Job, ...]


def make_chunks(jobs: Sequence[Job], batch: int) -> list[Chunk]:
    """The global, deterministic list of chunks (see the module doc)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidArgumentError(f"batch must be a positive integer (jobs per network call), got {batch!r}")
    groups: dict[str, list[Job]] = {}
    for job in sorted(jobs, key=lambda j: j.row):
        groups.setdefault(job.config_key(), []).append(job)
    chunks = []
    for members in groups.values():
        for start in range(0, len(members), batch):
            chunks.append(Chunk(len(chunks), tuple(members[start:start + batch])))
    return chunks


def shard(chunks: Sequence[Chunk], rank: int, world_size: int) -> list[Chunk]:
    """Rank ``rank``'s chunks: every ``world_size``-th, starting at its own number."""
    return [c for c in chunks if c.index % world_size == rank]


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the processes of one run: its rank, their number, its rank on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    source: str = "single process"


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise InvalidArgumentError(f"environment variable {name}={env[name]!r} is not an integer") from None


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """RANK/WORLD_SIZE/LOCAL_RANK (torchrun, accelerate launch), else SLURM_PROCID/SLURM_NTASKS/
    SLURM_LOCALID (srun), else one process."""
    env = os.environ if env is None else env
    for rank, size, local, source in (("RANK", "WORLD_SIZE", "LOCAL_RANK", "RANK/WORLD_SIZE"),
                                      ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_PROCID/SLURM_NTASKS")):
        if rank in env and size in env:
            world = World(_int(env, rank), _int(env, size), _int(env, local) if local in env else 0, source)
            if world.size < 1 or not 0 <= world.rank < world.size:
                raise InvalidArgumentError(f"{source} give rank {world.rank} of {world.size}: need 0 <= rank < size")
            return world
    return World()
